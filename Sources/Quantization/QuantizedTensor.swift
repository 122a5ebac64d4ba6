import TensorCore

extension QuantizedTensor {
    /// Quantizes `source` (f32, f16, bf16 or f64), optionally with double quantization. The
    /// source streams through the quantizer a few megabytes at a time (a mapped tensor's pages
    /// are given back as it goes, a computed one is never held whole), so memory is the 4-bit
    /// result plus a chunk.
    public static func quantize(
        _ source: any TensorPayload, type: QuantType, blocksize: Int, doubleQuantization: Bool,
        threads: Int = ParallelismSettings.threadCount
    ) throws -> QuantizedTensor {
        var quantizer = try StreamingQuantizer(dtype: source.dtype, shape: source.shape, type: type, blocksize: blocksize, threads: threads)
        try source.stream(chunkBytes: StreamingQuantizer.chunkBytes) { piece throws(QuantizationError) in try quantizer.consume(piece) }
        return try quantizer.finish(originalDType: source.dtype, doubleQuantization: doubleQuantization)
    }

    /// Refuses block scales that would dequantize to NaN or infinity (a file that was damaged or
    /// made to mislead: bitsandbytes would restore such weights without a word).
    public func checkScales(name: String) throws(QuantizationError) {
        if case .double(_, _, let offset, _) = absmax, !offset.isFinite {
            throw .invalidLayout(tensor: name, problem: "the double-quantization offset is \(offset)")
        }
        guard let bad = blockScales().firstIndex(where: { !$0.isFinite }) else { return }
        throw .invalidLayout(tensor: name, problem: "block \(bad) has a scale that is not a finite number")
    }

    /// The float32 block scales (undoing double quantization). Scales mapped from a file are
    /// copied out and their pages given back.
    public func blockScales() -> [Float] {
        switch absmax {
        case .plain(let scales):
            defer { scales.releaseResidentPages() }
            return scales.values(as: Float.self)
        case .double(let codes, let nested, let offset, _):
            defer {
                codes.releaseResidentPages()
                nested.releaseResidentPages()
            }
            return DoubleQuantizedAbsmax(codes: codes.values(as: UInt8.self), nestedAbsmax: nested.values(as: Float.self), offset: offset)
                .dequantize()
        }
    }

    /// The tensor back in `dtype`, produced a few megabytes at a time as it streams.
    public func dequantizedPayload(to dtype: DType, threads: Int = ParallelismSettings.threadCount) -> DequantizedTensor {
        DequantizedTensor(source: self, dtype: dtype, threads: threads)
    }

    /// The tensor back in `dtype` (f32, f16 or bf16), as bitsandbytes' dequantize_4bit.
    public func dequantized(to dtype: DType, threads: Int = ParallelismSettings.threadCount) -> Tensor {
        let output = OwnedBytes(count: elementCount * dtype.bitSize / 8)
        let dequantizer = Dequantizer(self)
        packed.withBytes { codes in
            dequantizer.decodeInParallel(
                0..<elementCount, packed: codes.baseAddress ?? UnsafeRawPointer(bitPattern: 8)!, into: output.buffer.baseAddress!,
                dtype: dtype, threads: threads)
        }
        // Codes mapped from a file have been read: their pages need not stay resident.
        packed.releaseResidentPages()
        return Tensor(dtype: dtype, shape: shape, storage: .owned(output))
    }
}

/// Which tensors of a checkpoint are quantized.
///
/// By default, as transformers with bitsandbytes: 2-D floating-point `*.weight` tensors (the
/// weights of linear layers), except embeddings and the output head (`lm_head`), which it keeps in
/// full precision. `--include` and `--skip` globs (`*` any run of characters, `?` one) adjust it;
/// a skip wins over an include.
public struct TensorSelection: Sendable {
    public var include: [String]
    public var skip: [String]

    public init(include: [String] = [], skip: [String] = []) {
        self.include = include
        self.skip = skip
    }

    public func shouldQuantize(name: String, dtype: DType, shape: Shape) -> Bool {
        guard [.f32, .f16, .bf16, .f64].contains(dtype), shape.elementCount > 0 else { return false }
        if skip.contains(where: { Glob.matches($0, name) }) { return false }
        if include.contains(where: { Glob.matches($0, name) }) { return true }
        return Self.isDefaultTarget(name: name, shape: shape)
    }

    public static func isDefaultTarget(name: String, shape: Shape) -> Bool {
        guard shape.rank == 2, name.hasSuffix(".weight") else { return false }
        let lower = name.lowercased()
        return !lower.contains("embed") && !lower.hasPrefix("lm_head.") && !lower.contains(".lm_head.")
    }
}

/// Shell-style wildcard matching over whole names.
public enum Glob {
    public static func matches(_ pattern: String, _ text: String) -> Bool {
        let p = Array(pattern.unicodeScalars)
        let t = Array(text.unicodeScalars)
        var pi = 0, ti = 0
        var star = -1, mark = 0
        while ti < t.count {
            if pi < p.count && (p[pi] == "?" || p[pi] == t[ti]) {
                pi += 1
                ti += 1
            } else if pi < p.count && p[pi] == "*" {
                star = pi
                mark = ti
                pi += 1
            } else if star >= 0 {
                pi = star + 1
                mark += 1
                ti = mark
            } else {
                return false
            }
        }
        while pi < p.count && p[pi] == "*" { pi += 1 }
        return pi == p.count
    }
}

/// A quantized tensor dequantized while it streams (whole blocks per chunk), so writing it never
/// holds more than a chunk of output.
public struct DequantizedTensor: TensorPayload {
    public let source: QuantizedTensor
    public let dtype: DType
    public let threads: Int

    public var shape: Shape { source.shape }
    public var byteCount: Int { source.elementCount * dtype.bitSize / 8 }

    public func stream(chunkBytes: Int, into sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        let n = source.elementCount
        let width = dtype.bitSize / 8
        let chunkElements = max(1, chunkBytes / (source.blocksize * width)) * source.blocksize
        let output = OwnedBytes(count: min(n, chunkElements) * width)
        // Made here, not when the payload is made: a checkpoint's payloads are all made before
        // the first is written.
        let dequantizer = Dequantizer(source)
        try source.packed.withBytes { packed in
            var start = 0
            repeat {
                let end = min(n, start + chunkElements)
                dequantizer.decodeInParallel(
                    start..<end, packed: packed.baseAddress ?? UnsafeRawPointer(bitPattern: 8)!, into: output.buffer.baseAddress!,
                    dtype: dtype, threads: threads)
                try sink(UnsafeRawBufferPointer(start: output.buffer.baseAddress, count: (end - start) * width))
                start = end
            } while start < n
        }
        source.packed.releaseResidentPages()
    }
}

/// Block-wise quantization of a tensor that arrives in pieces of any length: whole blocks are
/// quantized as they complete (the same kernel, so the same codes as quantizing it at once), and
/// the codes and scales are collected in place.
public struct StreamingQuantizer {
    /// Bytes of source handed to the kernel at a time.
    public static let chunkBytes = 8 << 20

    let dtype: DType
    let shape: Shape
    let type: QuantType
    let blocksize: Int
    let count: Int
    /// Elements quantized so far.
    private var done = 0
    private let packed: OwnedBytes
    private var absmax: [Float] = []
    /// Bytes of a block not yet complete (kept until the next piece completes it).
    private var carry: [UInt8] = []

    /// Threads for the kernel (a fixed split: the result is the same for any count).
    let threads: Int

    public init(dtype: DType, shape: Shape, type: QuantType, blocksize: Int, threads: Int = ParallelismSettings.threadCount)
        throws(QuantizationError)
    {
        try BlockwiseQuantizer.checkBlocksize(blocksize)
        guard [.f32, .f16, .bf16, .f64].contains(dtype) else { throw .unsupportedDType(dtype) }
        self.dtype = dtype
        self.shape = shape
        self.type = type
        self.blocksize = blocksize
        self.threads = threads
        count = shape.elementCount
        packed = OwnedBytes(count: (count + 1) / 2)
        absmax = [Float](repeating: 0, count: (count + blocksize - 1) / blocksize)
    }

    private var width: Int { dtype.bitSize / 8 }

    /// Takes the next bytes of the source (a whole number of elements overall).
    public mutating func consume(_ bytes: UnsafeRawBufferPointer) throws(QuantizationError) {
        guard bytes.count > 0 else { return }
        var input = bytes
        let blockBytes = blocksize * width
        if !carry.isEmpty {
            let take = min(blockBytes - carry.count, input.count)
            carry += input[0..<take]
            input = UnsafeRawBufferPointer(rebasing: input[take...])
            guard carry.count == blockBytes else { return }
            let block = carry
            carry = []
            try quantize(copying: block)
        }
        let whole = input.count / blockBytes * blockBytes
        if whole > 0 { try quantize(UnsafeRawBufferPointer(rebasing: input[0..<whole])) }
        carry += input[whole...]
    }

    private mutating func quantize(copying bytes: [UInt8]) throws(QuantizationError) {
        let outcome = bytes.withUnsafeBytes { raw in Result { () throws(QuantizationError) in try quantize(raw) } }
        try outcome.get()
    }

    /// Quantizes whole blocks (or the tensor's last, partial one) straight into the result.
    private mutating func quantize(_ bytes: UnsafeRawBufferPointer) throws(QuantizationError) {
        let elements = bytes.count / width
        guard done + elements <= count else { throw .invalidLayout(tensor: "", problem: "more elements than the shape holds") }
        let firstBlock = done / blocksize
        let (doneSoFar, codes) = (done, packed.buffer.baseAddress! + done / 2)
        let outcome = absmax.withUnsafeMutableBufferPointer { scales in
            Result { () throws(QuantizationError) in
                // Pieces start on a block boundary, and blocks hold an even number of elements.
                try BlockwiseQuantizer.quantize(
                    bytes.baseAddress!, dtype: dtype, count: elements, blocksize: blocksize, type: type,
                    codes: codes, scales: scales.baseAddress! + firstBlock, threads: threads)
            }
        }
        do {
            try outcome.get()
        } catch .nonFinite(let index) {
            throw .nonFinite(elementIndex: doneSoFar + index)
        }
        done += elements
    }

    /// The quantized tensor, once every element has arrived.
    public mutating func finish(originalDType: DType, doubleQuantization: Bool) throws(QuantizationError) -> QuantizedTensor {
        if !carry.isEmpty {
            let last = carry
            carry = []
            try quantize(copying: last)
        }
        guard done == count else { throw .invalidLayout(tensor: "", problem: "\(done) of \(count) elements arrived") }
        let codes = Tensor(dtype: .u8, shape: [packed.count], storage: .owned(packed))
        let scales: QuantizedTensor.Absmax
        if doubleQuantization {
            let nested = DoubleQuantizedAbsmax.quantize(absmax)
            scales = .double(
                codes: Tensor(dtype: .u8, shape: [nested.codes.count], values: nested.codes),
                nestedAbsmax: Tensor(dtype: .f32, shape: [nested.nestedAbsmax.count], values: nested.nestedAbsmax),
                offset: nested.offset, nestedBlocksize: DoubleQuantizedAbsmax.nestedBlocksize)
        } else {
            scales = .plain(Tensor(dtype: .f32, shape: [absmax.count], values: absmax))
        }
        return QuantizedTensor(
            quantType: type, blocksize: blocksize, shape: shape, originalDType: originalDType, packed: codes, absmax: scales)
    }
}

/// A 4-bit tensor read a range of rows at a time, each value dequantized as bitsandbytes'
/// `dequantize_4bit` to the original type (so rounded to it, as a restored weight is) and then
/// widened to float32: what a merge starts from, without restoring the whole tensor.
public struct QuantizedRows: FloatRowSource {
    public let source: QuantizedTensor
    private let dequantizer: Dequantizer

    public init(_ source: QuantizedTensor) {
        self.source = source
        dequantizer = Dequantizer(source)
    }

    /// The type the values are rounded to: the original one (float32 for an f64 original).
    public var dtype: DType { source.originalDType == .f64 ? .f32 : source.originalDType }
    public var shape: Shape { source.shape }

    /// One thread: callers already run in parallel over rows.
    public func widenRows(_ rows: Range<Int>, columns: Int, into values: UnsafeMutablePointer<Float>) {
        let elements = (rows.lowerBound * columns)..<(rows.upperBound * columns)
        guard !elements.isEmpty else { return }
        source.packed.withBytes { packed in
            if dtype == .f32 {
                dequantizer.decode(elements, packed: packed.baseAddress!, into: values, dtype: .f32)
                return
            }
            let width = dtype.bitSize / 8
            let restored = UnsafeMutableRawPointer.allocate(byteCount: elements.count * width, alignment: 64)
            defer { restored.deallocate() }
            dequantizer.decode(elements, packed: packed.baseAddress!, into: restored, dtype: dtype)
            FloatConversion.decodeToFloat32(restored, dtype, from: 0, count: elements.count, into: values)
        }
    }

    public func releaseRows(_ rows: Range<Int>, columns: Int) {
        guard case .mapped(let file, let range) = source.packed.storage else { return }
        let from = rows.lowerBound * columns / 2, to = min(range.count, (rows.upperBound * columns + 1) / 2)
        file.releasePages((range.lowerBound + from)..<(range.lowerBound + to))
    }
}
