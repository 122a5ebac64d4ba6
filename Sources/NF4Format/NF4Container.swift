import TensorCore

/// Constants of the container (formats/nf4-container.md).
public enum NF4Container {
    public static let magic: [UInt8] = Array("QTOOLNF4".utf8)
    public static let version: UInt32 = 1
    public static let preludeSize = 16
    public static let trailerSize = 32
    public static let alignment = 64
    /// The longest header a reader parses (a header lists tensors and short metadata; a few MB
    /// for the largest models). Parsing costs a few times its size in memory.
    public static let maximumHeaderLength = 64 << 20
    /// A compressed section may expand to at most this many times its stored length: the
    /// decompressed size a file declares is checked against it before anything is allocated.
    /// The writer stores a section uncompressed rather than exceed it.
    public static let maximumCompressionRatio = 1024

    /// Whether `bytes` start like a .nf4 file.
    public static func hasMagic(_ bytes: [UInt8]) -> Bool { bytes.count >= 8 && Array(bytes[0..<8]) == magic }
}

/// Where a payload lives in the file.
public struct NF4Section: Sendable, Equatable {
    public var offset: Int
    public var length: Int
    public var size: Int
    public var compressed: Bool
    public var checksum: UInt64

    var json: JSONValue {
        .object([
            JSONMember(key: "offset", value: .integer(offset)),
            JSONMember(key: "length", value: .integer(length)),
            JSONMember(key: "size", value: .integer(size)),
            JSONMember(key: "compression", value: .string(compressed ? "zstd" : "none")),
            JSONMember(key: "xxh64", value: .string(checksum.hexDigits)),
        ])
    }
}

/// A 4-bit tensor as the container stores it: the format's view, independent of the quantizer
/// (the commands convert to and from `Quantization.QuantizedTensor`).
public struct NF4QuantizedTensor: Sendable {
    public var quantType: String
    public var blocksize: Int
    /// The original type and shape.
    public var dtype: DType
    public var shape: Shape
    /// U8 packed codes.
    public var codes: Tensor
    /// F32 block scales, or U8 codes with double quantization.
    public var absmax: Tensor
    /// With double quantization: F32 nested scales, the offset, the nested block size.
    public var nested: (absmax: Tensor, offset: Float, blocksize: Int)?
    /// The 16 values of the 4-bit codes, and with double quantization the 256 of the 8-bit map.
    public var quantMap: Tensor
    public var nestedQuantMap: Tensor?

    public init(
        quantType: String, blocksize: Int, dtype: DType, shape: Shape, codes: Tensor, absmax: Tensor,
        nested: (absmax: Tensor, offset: Float, blocksize: Int)?, quantMap: Tensor, nestedQuantMap: Tensor?
    ) {
        self.quantType = quantType
        self.blocksize = blocksize
        self.dtype = dtype
        self.shape = shape
        self.codes = codes
        self.absmax = absmax
        self.nested = nested
        self.quantMap = quantMap
        self.nestedQuantMap = nestedQuantMap
    }
}

/// What a .nf4 entry holds.
public enum NF4Payload: Sendable {
    case quantized(NF4QuantizedTensor)
    case plain(Tensor)
}

extension NF4Container {
    /// The version of libzstd that compresses `.nf4` sections, for `qtool info`.
    public static var zstdVersion: String { ZstdCodec.libraryVersion }
}
