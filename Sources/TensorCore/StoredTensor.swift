/// A tensor as a checkpoint stores it: plain (any dtype) or 4-bit. Every format reads and writes
/// this type and every stage takes it; the 4-bit arithmetic lives in the Quantization stage.
public enum StoredTensor: Sendable {
    case plain(Tensor)
    case quantized(QuantizedTensor)

    /// The tensor's shape (for a 4-bit tensor, the shape it restores to).
    public var shape: Shape {
        switch self {
        case .plain(let tensor): tensor.shape
        case .quantized(let q): q.shape
        }
    }

    /// The tensor's type (for a 4-bit tensor, the type it was quantized from).
    public var dtype: DType {
        switch self {
        case .plain(let tensor): tensor.dtype
        case .quantized(let q): q.originalDType
        }
    }

    /// Bytes the checkpoint spends on it.
    public var storedBytes: Int {
        switch self {
        case .plain(let tensor): tensor.byteCount
        case .quantized(let q): q.storedBytes
        }
    }
}

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
}
