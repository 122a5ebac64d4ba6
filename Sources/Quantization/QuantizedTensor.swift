import TensorCore

/// A tensor stored in 4 bits: packed codes, their block scales, and what is needed to restore it.
public struct QuantizedTensor: Sendable {
    /// How the block scales are stored.
    public enum Absmax: Sendable {
        /// One float32 per block.
        case plain(Tensor)
        /// Double quantization: one 8-bit code per block, a float32 scale per `nestedBlocksize`
        /// codes, and the offset added back.
        case double(codes: Tensor, nestedAbsmax: Tensor, offset: Float, nestedBlocksize: Int)
    }

    public var quantType: QuantType
    public var blocksize: Int
    /// The original tensor's shape and type (restored by dequantization).
    public var shape: Shape
    public var originalDType: DType
    /// U8, `ceil(n / 2)` bytes, two codes a byte, high nibble first.
    public var packed: Tensor
    public var absmax: Absmax

    public init(quantType: QuantType, blocksize: Int, shape: Shape, originalDType: DType, packed: Tensor, absmax: Absmax) {
        self.quantType = quantType
        self.blocksize = blocksize
        self.shape = shape
        self.originalDType = originalDType
        self.packed = packed
        self.absmax = absmax
    }

    public var elementCount: Int { shape.elementCount }
    public var blockCount: Int { (elementCount + blocksize - 1) / blocksize }
    public var isDoubleQuantized: Bool { if case .double = absmax { true } else { false } }

    /// Bytes the quantized form takes (codes and scales).
    public var storedBytes: Int {
        switch absmax {
        case .plain(let scales): packed.byteCount + scales.byteCount
        case .double(let codes, let nested, _, _): packed.byteCount + codes.byteCount + nested.byteCount + 4
        }
    }

    /// Quantizes `source` (f32, f16, bf16 or f64), optionally with double quantization.
    public static func quantize(
        _ source: Tensor, type: QuantType, blocksize: Int, doubleQuantization: Bool
    ) throws(QuantizationError) -> QuantizedTensor {
        let outcome = source.withBytes { raw in
            Result { () throws(QuantizationError) in
                try BlockwiseQuantizer.quantizeToBuffer(
                    raw.baseAddress ?? UnsafeRawPointer(bitPattern: 8)!, dtype: source.dtype, count: source.elementCount,
                    blocksize: blocksize, type: type)
            }
        }
        let first = try outcome.get()
        let packed = Tensor(dtype: .u8, shape: [first.packed.count], storage: .owned(first.packed))
        let absmax: Absmax
        if doubleQuantization {
            let nested = DoubleQuantizedAbsmax.quantize(first.absmax)
            absmax = .double(
                codes: Tensor(dtype: .u8, shape: [nested.codes.count], values: nested.codes),
                nestedAbsmax: Tensor(dtype: .f32, shape: [nested.nestedAbsmax.count], values: nested.nestedAbsmax),
                offset: nested.offset, nestedBlocksize: DoubleQuantizedAbsmax.nestedBlocksize)
        } else {
            absmax = .plain(Tensor(dtype: .f32, shape: [first.absmax.count], values: first.absmax))
        }
        return QuantizedTensor(
            quantType: type, blocksize: blocksize, shape: source.shape, originalDType: source.dtype, packed: packed, absmax: absmax)
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

    /// The float32 block scales (undoing double quantization).
    public func blockScales() -> [Float] {
        switch absmax {
        case .plain(let scales): return scales.values(as: Float.self)
        case .double(let codes, let nested, let offset, _):
            return DoubleQuantizedAbsmax(codes: codes.values(as: UInt8.self), nestedAbsmax: nested.values(as: Float.self), offset: offset)
                .dequantize()
        }
    }

    /// The tensor back in `dtype`, produced a few megabytes at a time as it streams.
    public func dequantizedPayload(to dtype: DType) -> DequantizedTensor {
        DequantizedTensor(source: self, dtype: dtype, scales: blockScales())
    }

    /// The tensor back in `dtype` (f32, f16 or bf16), as bitsandbytes' dequantize_4bit.
    public func dequantized(to dtype: DType) -> Tensor {
        let output = OwnedBytes(count: elementCount * dtype.bitSize / 8)
        let scales = blockScales()
        packed.withBytes { codes in
            Dequantizer.dequantize(
                packed: codes.baseAddress ?? UnsafeRawPointer(bitPattern: 8)!, absmax: scales, shape: shape, blocksize: blocksize,
                type: quantType, into: output.buffer.baseAddress!, dtype: dtype)
        }
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
    let scales: [Float]

    public var shape: Shape { source.shape }
    public var byteCount: Int { source.elementCount * dtype.bitSize / 8 }

    public func stream(chunkBytes: Int, into sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        let n = source.elementCount
        let width = dtype.bitSize / 8
        let blocksPerChunk = max(1, chunkBytes / (source.blocksize * width))
        let output = OwnedBytes(count: min(n, blocksPerChunk * source.blocksize) * width)
        let negativeZero = (source.shape.dimensions.last ?? 1) % 2 == 0
        try source.packed.withBytes { packed in
            var block = 0
            while block < source.blockCount {
                let lastBlock = min(source.blockCount, block + blocksPerChunk)
                let start = block * source.blocksize
                let count = min(n, lastBlock * source.blocksize) - start
                Dequantizer.dequantize(
                    packed: packed.baseAddress! + start / 2, absmax: scales[block..<lastBlock], count: count,
                    blocksize: source.blocksize, type: source.quantType, fp4NegativeZero: negativeZero,
                    into: output.buffer.baseAddress!, dtype: dtype)
                try sink(UnsafeRawBufferPointer(start: output.buffer.baseAddress, count: count * width))
                block = lastBlock
            }
            if n == 0 { try sink(UnsafeRawBufferPointer(start: output.buffer.baseAddress, count: 0)) }
        }
        source.packed.releaseResidentPages()
    }
}
