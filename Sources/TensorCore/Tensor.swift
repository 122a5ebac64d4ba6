#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif
import Synchronization

/// Bytes owned by a tensor, allocated once and freed with it.
///
/// Large buffers (a tensor, its 4-bit codes) are mapped from the kernel and unmapped when freed:
/// in the heap, a run of them freed and allocated again tensor after tensor, with smaller
/// allocations in between, fragments it, and a model's worth of freed buffers stays resident.
public final class OwnedBytes: @unchecked Sendable {
    public let buffer: UnsafeMutableRawBufferPointer
    /// What was allocated (at least `buffer`): a recycled buffer may be larger.
    private let allocation: UnsafeMutableRawBufferPointer
    private let isMapped: Bool
    static let mappedFrom = 16 << 20

    public init(count: Int) {
        if count >= Self.mappedFrom, let pointer = mmap(nil, count, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
            pointer != MAP_FAILED
        {
            allocation = UnsafeMutableRawBufferPointer(start: pointer, count: count)
            isMapped = true
        } else if let recycled = Recycler.take(count) {
            allocation = recycled
            isMapped = false
        } else {
            allocation = UnsafeMutableRawBufferPointer.allocate(byteCount: max(count, 1), alignment: 64)
            if count == 0 { allocation.storeBytes(of: 0, as: UInt8.self) }
            isMapped = false
        }
        // A recycled buffer is seen at the size asked for.
        buffer = allocation.count > max(count, 1) ? UnsafeMutableRawBufferPointer(rebasing: allocation[0..<count]) : allocation
        self.count = count
    }

    public convenience init(copying bytes: UnsafeRawBufferPointer) {
        self.init(count: bytes.count)
        if bytes.count > 0 { buffer.baseAddress!.copyMemory(from: bytes.baseAddress!, byteCount: bytes.count) }
    }

    public let count: Int

    deinit {
        if isMapped {
            munmap(allocation.baseAddress, allocation.count)
        } else if !Recycler.give(allocation) {
            allocation.deallocate()
        }
    }

    /// Buffers of 1 to 16 MB given back by finished tensors (a tensor's 4-bit codes), kept for the
    /// next tensor of about the same size: a stream of tensors then reuses a few buffers instead
    /// of faulting fresh pages in for each (and unmapping them again). At most 32 MB are kept.
    enum Recycler {
        static let sizes = (1 << 20)..<OwnedBytes.mappedFrom
        static let limit = 32 << 20
        /// Start addresses and sizes (pointers are not Sendable).
        private static let kept = Mutex<[(address: UInt, count: Int)]>([])

        /// A kept buffer of at least `count` bytes and at most twice that, the smallest there is.
        static func take(_ count: Int) -> UnsafeMutableRawBufferPointer? {
            guard sizes.contains(count) else { return nil }
            let found = kept.withLock { buffers -> (address: UInt, count: Int)? in
                let fits = buffers.indices.filter { buffers[$0].count >= count && buffers[$0].count <= 2 * count }
                guard let best = fits.min(by: { buffers[$0].count < buffers[$1].count }) else { return nil }
                return buffers.remove(at: best)
            }
            guard let found else { return nil }
            return UnsafeMutableRawBufferPointer(start: UnsafeMutableRawPointer(bitPattern: found.address), count: found.count)
        }

        /// Keeps `buffer` if there is room; false when the caller is to free it.
        static func give(_ buffer: UnsafeMutableRawBufferPointer) -> Bool {
            guard sizes.contains(buffer.count), let base = buffer.baseAddress else { return false }
            let entry = (address: UInt(bitPattern: base), count: buffer.count)
            return kept.withLock { buffers in
                guard buffers.reduce(entry.count, { $0 + $1.count }) <= limit else { return false }
                buffers.append(entry)
                return true
            }
        }
    }
}

/// Where a tensor's bytes live: in memory it owns, or in a range of a memory-mapped file.
public enum TensorStorage: Sendable {
    case owned(OwnedBytes)
    case mapped(MappedFile, Range<Int>)
}

/// Anything that can be streamed to a writer: a stored tensor, or one computed chunk by chunk.
public protocol TensorPayload: Sendable {
    var dtype: DType { get }
    var shape: Shape { get }
    /// Bytes the payload streams in all.
    var byteCount: Int { get }
    /// Calls `sink` with consecutive pieces of the payload's bytes, each at most about
    /// `chunkBytes` long (a piece of a stored tensor may be handed over whole).
    func stream(chunkBytes: Int, into sink: (UnsafeRawBufferPointer) throws -> Void) throws
}

extension TensorPayload {
    /// The payload's bytes in memory, as a tensor (a tensor is returned as it is).
    public func materialized() throws -> Tensor {
        if let tensor = self as? Tensor { return tensor }
        let bytes = OwnedBytes(count: byteCount)
        var offset = 0
        try stream(chunkBytes: 8 << 20) { piece in
            if piece.count > 0 {
                (bytes.buffer.baseAddress! + offset).copyMemory(from: piece.baseAddress!, byteCount: piece.count)
            }
            offset += piece.count
        }
        return Tensor(dtype: dtype, shape: shape, storage: .owned(bytes))
    }
}

/// A dense, row-major, little-endian tensor.
public struct Tensor: TensorPayload {
    public let dtype: DType
    public let shape: Shape
    public let storage: TensorStorage

    /// A tensor over `storage`, whose size the caller has checked against `shape` and `dtype`.
    public init(dtype: DType, shape: Shape, storage: TensorStorage) {
        self.dtype = dtype
        self.shape = shape
        self.storage = storage
    }

    /// A tensor that owns a copy of `bytes`.
    public init(dtype: DType, shape: Shape, copying bytes: UnsafeRawBufferPointer) {
        self.init(dtype: dtype, shape: shape, storage: .owned(OwnedBytes(copying: bytes)))
    }

    /// A tensor that owns the bytes of `values`.
    public init<T>(dtype: DType, shape: Shape, values: [T]) {
        precondition(values.count * MemoryLayout<T>.stride * 8 == shape.elementCount * dtype.bitSize)
        self = values.withUnsafeBytes { Tensor(dtype: dtype, shape: shape, copying: $0) }
    }

    public var byteCount: Int {
        switch storage {
        case .owned(let bytes): bytes.count
        case .mapped(_, let range): range.count
        }
    }

    public var elementCount: Int { shape.elementCount }

    /// Calls `body` with all the tensor's bytes.
    public func withBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        switch storage {
        case .owned(let bytes):
            return try body(UnsafeRawBufferPointer(start: bytes.buffer.baseAddress, count: bytes.count))
        case .mapped(let file, let range):
            return try file.withBytes(in: range, body)
        }
    }

    /// The elements as an array of `T` (which must match the dtype's width).
    public func values<T>(as type: T.Type) -> [T] {
        precondition(MemoryLayout<T>.stride * 8 == dtype.bitSize)
        return withBytes { Array($0.bindMemory(to: T.self)) }
    }

    /// Streams the bytes in pieces of at most `chunkBytes`; for a mapped tensor each piece's pages
    /// are released once consumed, so a tensor larger than memory streams with a resident set of
    /// about one chunk.
    public func stream(chunkBytes: Int, into sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        let step = max(chunkBytes, 1)
        switch storage {
        case .owned(let bytes):
            var start = 0
            repeat {
                let end = min(bytes.count, start + step)
                try sink(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(bytes.buffer)[start..<end]))
                start = end
            } while start < bytes.count
        case .mapped(let file, let range):
            var start = range.lowerBound
            repeat {
                let end = min(range.upperBound, start + step)
                file.prefetch(end..<min(range.upperBound, end + step))
                file.populate(start..<end)
                try file.withBytes(in: start..<end, sink)
                file.releasePages(start..<end)
                start = end
            } while start < range.upperBound
        }
    }

    /// Gives back the resident pages of a mapped tensor once it has been read (a no-op for owned
    /// bytes); the data stays readable.
    public func releaseResidentPages() {
        if case .mapped(let file, let range) = storage { file.releasePages(range) }
    }

    /// Bytes that are equal in both tensors, with the same dtype and shape.
    public func isIdentical(to other: Tensor) -> Bool {
        guard dtype == other.dtype, shape == other.shape, byteCount == other.byteCount else { return false }
        return withBytes { a in other.withBytes { b in a.elementsEqual(b) } }
    }
}

/// Tensors in a stable order, each with its name, and the file's string metadata.
public struct NamedTensors: Sendable {
    public private(set) var names: [String] = []
    private var tensorsByName: [String: Tensor] = [:]
    /// Free-form string metadata (safetensors `__metadata__`) in file order; nil when there is none.
    public var metadata: [(key: String, value: String)]? = nil

    public init() {}

    public var count: Int { names.count }

    public subscript(name: String) -> Tensor? { tensorsByName[name] }

    /// Adds a tensor; returns false (and changes nothing) when the name is taken.
    @discardableResult
    public mutating func append(_ name: String, _ tensor: Tensor) -> Bool {
        guard tensorsByName[name] == nil else { return false }
        names.append(name)
        tensorsByName[name] = tensor
        return true
    }

    /// Name and tensor pairs in order.
    public var entries: [(name: String, tensor: Tensor)] { names.map { ($0, tensorsByName[$0]!) } }
}

/// A float tensor whose rows can be widened to float32 a range at a time: a stored tensor, or a
/// 4-bit one dequantized just for those rows. Stages that go through a tensor a block of rows
/// at a time (the merge) take any of them, so a 4-bit base is never restored whole.
public protocol FloatRowSource: Sendable {
    /// The type of its values (a 4-bit tensor's original type: its values are rounded to it).
    var dtype: DType { get }
    var shape: Shape { get }
    /// Rows `rows` (each `columns` elements) as float32, into `values`.
    func widenRows(_ rows: Range<Int>, columns: Int, into values: UnsafeMutablePointer<Float>)
    /// Gives back the memory of rows already read, where there is any to give.
    func releaseRows(_ rows: Range<Int>, columns: Int)
}

extension Tensor {
    /// Whether every value of a float tensor (any type FloatConversion decodes) is finite, read a
    /// megabyte at a time; other types have no non-finite values.
    public var isAllFinite: Bool {
        guard FloatConversion.decodable.contains(dtype) else { return true }
        var finite = true
        try? stream(chunkBytes: 1 << 20) { piece in
            let count = piece.count * 8 / dtype.bitSize
            guard finite, count > 0, let source = piece.baseAddress else { return }
            var values = [Float](repeating: 0, count: count)
            values.withUnsafeMutableBufferPointer { buffer in
                FloatConversion.decodeToFloat32(source, dtype, from: 0, count: count, into: buffer.baseAddress!)
            }
            if values.contains(where: { !$0.isFinite }) { finite = false }
        }
        return finite
    }
}

extension Tensor: FloatRowSource {
    public func widenRows(_ rows: Range<Int>, columns: Int, into values: UnsafeMutablePointer<Float>) {
        let width = dtype.bitSize / 8
        withBytes { raw in
            FloatConversion.decodeToFloat32(
                raw.baseAddress! + rows.lowerBound * columns * width, dtype, from: 0, count: rows.count * columns, into: values)
        }
    }

    public func releaseRows(_ rows: Range<Int>, columns: Int) {
        guard case .mapped(let file, let range) = storage else { return }
        let width = dtype.bitSize / 8
        file.releasePages((range.lowerBound + rows.lowerBound * columns * width)..<(range.lowerBound + rows.upperBound * columns * width))
    }
}
