import TensorCore

/// A tensor as it will be stored: its name, ggml dimensions (the row first) and type.
public struct GGUFTensorPlan: Sendable {
    public let name: String
    public let dimensions: [Int]
    public let type: GGMLType

    public init(name: String, dimensions: [Int], type: GGMLType) {
        self.name = name
        self.dimensions = dimensions
        self.type = type
    }

    /// A tensor of torch shape `shape` stored as `type`.
    public init(name: String, shape: Shape, type: GGMLType) {
        self.init(name: name, dimensions: shape.dimensions.reversed(), type: type)
    }

    public var byteCount: Int { type.byteCount(dimensions: dimensions) ?? 0 }
}

/// Writes a GGUF file (version 3): the header, metadata and tensor infos at once (every size is
/// known from the plans), then each tensor's data as it comes, in plan order, each padded to the
/// alignment. The file appears at `path` only on `commit`.
public final class GGUFWriter {
    public let path: String
    public let alignment: Int
    private let plans: [GGUFTensorPlan]
    private let output: AtomicFileOutput
    private var next = 0

    /// `metadata` is written in its order; a non-default `alignment` is recorded as
    /// `general.alignment`.
    public init(path: String, metadata: GGUFMetadata, tensors: [GGUFTensorPlan], alignment: Int = GGUFFile.defaultAlignment) throws {
        self.path = path
        self.alignment = alignment
        plans = tensors
        // The reader's limit: an alignment from 2³² on would also trap in the UInt32 below.
        guard alignment > 0, alignment & (alignment - 1) == 0, alignment <= GGUFFile.largestAlignment else {
            throw GGUFError.cannotWrite(path: path, detail: "alignment \(alignment) is not a power of two up to 1 MiB")
        }
        var metadata = metadata
        if alignment != GGUFFile.defaultAlignment || metadata.contains("general.alignment") {
            metadata["general.alignment"] = .uint32(UInt32(alignment))
        }
        var header = GGUFFile.magic
        header.append(littleEndian: UInt32(3))
        header.append(littleEndian: UInt64(tensors.count))
        header.append(littleEndian: UInt64(metadata.count))
        for (key, value) in metadata.entries {
            header.append(string: key)
            header.append(littleEndian: value.type.rawValue)
            try Self.append(value, to: &header, key: key, path: path)
        }
        var names = Set<String>()
        var offset = 0
        for plan in tensors {
            guard plan.name.utf8.count <= GGUFFile.longestName, !plan.name.isEmpty else {
                throw GGUFError.cannotWrite(
                    path: path, detail: "tensor name '\(plan.name)' is empty or longer than \(GGUFFile.longestName) bytes")
            }
            guard names.insert(plan.name).inserted else {
                throw GGUFError.cannotWrite(path: path, detail: "tensor '\(plan.name)' added twice")
            }
            guard (1...4).contains(plan.dimensions.count), plan.type.byteCount(dimensions: plan.dimensions) != nil else {
                throw GGUFError.cannotWrite(
                    path: path, detail: "tensor '\(plan.name)': dimensions \(plan.dimensions) cannot be stored as \(plan.type)")
            }
            header.append(string: plan.name)
            header.append(littleEndian: UInt32(plan.dimensions.count))
            for dimension in plan.dimensions { header.append(littleEndian: UInt64(dimension)) }
            header.append(littleEndian: plan.type.rawValue)
            header.append(littleEndian: UInt64(offset))
            offset += Self.padded(plan.byteCount, alignment)
        }
        header += [UInt8](repeating: 0, count: Self.padded(header.count, alignment) - header.count)
        output = try AtomicFileOutput(destination: path)
        do {
            try output.write(header)
        } catch {
            output.abort()
            throw error
        }
    }

    deinit { output.abort() }

    static func padded(_ count: Int, _ alignment: Int) -> Int { (count + alignment - 1) / alignment * alignment }

    private static func append(_ value: GGUFValue, to bytes: inout [UInt8], key: String, path: String) throws {
        switch value {
        case .uint8(let v): bytes.append(v)
        case .int8(let v): bytes.append(UInt8(bitPattern: v))
        case .uint16(let v): bytes.append(littleEndian: v)
        case .int16(let v): bytes.append(littleEndian: v)
        case .uint32(let v): bytes.append(littleEndian: v)
        case .int32(let v): bytes.append(littleEndian: v)
        case .float32(let v): bytes.append(littleEndian: v.bitPattern)
        case .bool(let v): bytes.append(v ? 1 : 0)
        case .string(let s): bytes.append(string: s)
        case .uint64(let v): bytes.append(littleEndian: v)
        case .int64(let v): bytes.append(littleEndian: v)
        case .float64(let v): bytes.append(littleEndian: v.bitPattern)
        case .array(let type, let elements):
            bytes.append(littleEndian: type.rawValue)
            bytes.append(littleEndian: UInt64(elements.count))
            for element in elements {
                guard element.type == type else {
                    throw GGUFError.cannotWrite(path: path, detail: "metadata '\(key)': a \(element.type) in an array of \(type)")
                }
                try append(element, to: &bytes, key: key, path: path)
            }
        }
    }

    /// The data of the next tensor: exactly its planned byte count, streamed.
    public func writeTensor(_ payload: any TensorPayload) throws {
        guard next < plans.count else { throw GGUFError.cannotWrite(path: path, detail: "more tensors than planned") }
        let plan = plans[next]
        guard payload.byteCount == plan.byteCount else {
            throw GGUFError.cannotWrite(
                path: path, detail: "tensor '\(plan.name)': \(payload.byteCount) bytes for a planned \(plan.byteCount)")
        }
        let before = output.bytesWritten
        try payload.stream(chunkBytes: 1 << 22) { try output.write($0) }
        guard output.bytesWritten - before == plan.byteCount else {
            throw GGUFError.cannotWrite(path: path, detail: "tensor '\(plan.name)': the data came to a different size than planned")
        }
        let padding = Self.padded(plan.byteCount, alignment) - plan.byteCount
        if padding > 0 { try output.write([UInt8](repeating: 0, count: padding)) }
        next += 1
    }

    public func commit() throws {
        guard next == plans.count else {
            throw GGUFError.cannotWrite(path: path, detail: "\(plans.count - next) planned tensors were not written")
        }
        try output.commit()
    }

    public func abort() { output.abort() }
}

extension Array where Element == UInt8 {
    mutating func append<T: FixedWidthInteger>(littleEndian value: T) {
        Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) }
    }

    mutating func append(string: String) {
        append(littleEndian: UInt64(string.utf8.count))
        append(contentsOf: string.utf8)
    }
}

/// A float tensor encoded as a ggml type on its way out, a few rows at a time; `rowOrder`
/// (optional) gives, for each output row, the source row to take (llama.cpp's q/k permutation).
public struct GGMLEncodedPayload: TensorPayload {
    public let source: Tensor
    public let type: GGMLType
    public let rowOrder: [Int]?
    public let threads: Int

    public init(_ source: Tensor, as type: GGMLType, rowOrder: [Int]? = nil, threads: Int = ParallelismSettings.threadCount) {
        self.source = source
        self.type = type
        self.rowOrder = rowOrder
        self.threads = threads
    }

    public var dtype: DType { .u8 }
    public var rowLength: Int { source.shape.dimensions.last ?? 1 }
    public var rows: Int { rowLength == 0 ? 0 : source.elementCount / rowLength }
    public var shape: Shape { [byteCount] }
    public var byteCount: Int { type.byteCount(dimensions: [rowLength, rows]) ?? 0 }

    public func stream(chunkBytes: Int, into sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        let rowLength = rowLength
        let rows = rows
        guard rows > 0, rowLength > 0 else { return }
        let type = type
        let rowBytes = rowLength / type.blockSize * type.typeSize
        let sourceType = source.dtype
        // A plain copy when nothing changes.
        if rowOrder == nil && GGMLType(plain: sourceType) == type {
            try source.stream(chunkBytes: chunkBytes, into: sink)
            return
        }
        if let rowOrder, rowOrder.count != rows || rowOrder.contains(where: { $0 < 0 || $0 >= rows }) {
            throw GGUFError.cannotWrite(path: "(tensor data)", detail: "a row order that is not a permutation of the \(rows) rows")
        }
        let elementBytes = sourceType.bitSize / 8
        let order = rowOrder
        // Each task widens its rows to float32 in its own buffer, then encodes them.
        try source.withBytes { bytes in
            guard let base = bytes.baseAddress else { return }
            let sourceBase = SendableRawPointer(base)
            try RowStream.stream(
                rows: rows, rowBytes: rowBytes, rowsPerChunk: chunkBytes / Swift.max(rowBytes, 1), rowsPerTask: (1 << 18) / rowLength,
                threads: threads,
                fill: { rows, destination in
                    let floats = UnsafeMutableBufferPointer<Float>.allocate(capacity: rowLength)
                    defer { floats.deallocate() }
                    for (k, r) in rows.enumerated() {
                        let row = order?[r] ?? r
                        let target = destination + k * rowBytes
                        if sourceType == .bf16 && type == .bf16 {
                            // bf16 stays bit for bit (NaN payloads included).
                            target.copyMemory(from: sourceBase.raw + row * rowLength * elementBytes, byteCount: rowBytes)
                            continue
                        }
                        FloatConversion.decodeToFloat32(
                            sourceBase.raw, sourceType, from: row * rowLength, count: rowLength, into: floats.baseAddress!)
                        GGMLBlocks.quantize(
                            type, UnsafeBufferPointer(floats), into: UnsafeMutableRawBufferPointer(start: target, count: rowBytes))
                    }
                }, sink: sink)
        }
    }
}
