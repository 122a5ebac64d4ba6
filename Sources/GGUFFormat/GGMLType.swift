import TensorCore

/// The element types of ggml tensors (`enum ggml_type` in ggml.h), with their block layout.
///
/// A quantized type packs `blockSize` consecutive values of a row into `typeSize` bytes; a row's
/// length (ggml's first dimension) must be a multiple of the block size.
public enum GGMLType: UInt32, CaseIterable, Sendable, CustomStringConvertible {
    case f32 = 0
    case f16 = 1
    case q4_0 = 2
    case q4_1 = 3
    case q5_0 = 6
    case q5_1 = 7
    case q8_0 = 8
    case q8_1 = 9
    case q2_K = 10
    case q3_K = 11
    case q4_K = 12
    case q5_K = 13
    case q6_K = 14
    case q8_K = 15
    case iq2_XXS = 16
    case iq2_XS = 17
    case iq3_XXS = 18
    case iq1_S = 19
    case iq4_NL = 20
    case iq3_S = 21
    case iq2_S = 22
    case iq4_XS = 23
    case i8 = 24
    case i16 = 25
    case i32 = 26
    case i64 = 27
    case f64 = 28
    case iq1_M = 29
    case bf16 = 30
    case tq1_0 = 34
    case tq2_0 = 35
    case mxfp4 = 39

    /// ggml's name of the type (`F32`, `Q8_0`, `Q4_K`, …), as gguf-py and llama.cpp print it.
    public var description: String {
        switch self {
        case .f32: "F32"
        case .f16: "F16"
        case .q4_0: "Q4_0"
        case .q4_1: "Q4_1"
        case .q5_0: "Q5_0"
        case .q5_1: "Q5_1"
        case .q8_0: "Q8_0"
        case .q8_1: "Q8_1"
        case .q2_K: "Q2_K"
        case .q3_K: "Q3_K"
        case .q4_K: "Q4_K"
        case .q5_K: "Q5_K"
        case .q6_K: "Q6_K"
        case .q8_K: "Q8_K"
        case .iq2_XXS: "IQ2_XXS"
        case .iq2_XS: "IQ2_XS"
        case .iq3_XXS: "IQ3_XXS"
        case .iq1_S: "IQ1_S"
        case .iq4_NL: "IQ4_NL"
        case .iq3_S: "IQ3_S"
        case .iq2_S: "IQ2_S"
        case .iq4_XS: "IQ4_XS"
        case .i8: "I8"
        case .i16: "I16"
        case .i32: "I32"
        case .i64: "I64"
        case .f64: "F64"
        case .iq1_M: "IQ1_M"
        case .bf16: "BF16"
        case .tq1_0: "TQ1_0"
        case .tq2_0: "TQ2_0"
        case .mxfp4: "MXFP4"
        }
    }

    /// Values per block (1 for the plain types).
    public var blockSize: Int {
        switch self {
        case .f32, .f16, .bf16, .f64, .i8, .i16, .i32, .i64: 1
        case .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q8_1, .iq4_NL, .mxfp4: 32
        default: 256
        }
    }

    /// Bytes per block.
    public var typeSize: Int {
        switch self {
        case .f32: 4
        case .f16, .bf16: 2
        case .f64: 8
        case .i8: 1
        case .i16: 2
        case .i32: 4
        case .i64: 8
        case .q4_0: 18
        case .q4_1: 20
        case .q5_0: 22
        case .q5_1: 24
        case .q8_0: 34
        case .q8_1: 36
        case .q2_K: 84
        case .q3_K: 110
        case .q4_K: 144
        case .q5_K: 176
        case .q6_K: 210
        case .q8_K: 292
        case .iq2_XXS: 66
        case .iq2_XS: 74
        case .iq3_XXS: 98
        case .iq1_S: 50
        case .iq4_NL: 18
        case .iq3_S: 110
        case .iq2_S: 82
        case .iq4_XS: 136
        case .iq1_M: 56
        case .tq1_0: 54
        case .tq2_0: 66
        case .mxfp4: 17
        }
    }

    public var isQuantized: Bool { blockSize > 1 }

    /// The tensor type a plain ggml type holds as it is; nil for the quantized types.
    public var plainDType: DType? {
        switch self {
        case .f32: .f32
        case .f16: .f16
        case .bf16: .bf16
        case .f64: .f64
        case .i8: .i8
        case .i16: .i16
        case .i32: .i32
        case .i64: .i64
        default: nil
        }
    }

    /// The ggml type that stores a tensor type as it is.
    public init?(plain dtype: DType) {
        guard let type = GGMLType.allCases.first(where: { $0.plainDType == dtype }) else { return nil }
        self = type
    }

    /// Whether qtool turns this type's blocks back into floats (the types gguf-py dequantizes
    /// that people publish; the importance-matrix and ternary types are not among them).
    public var isDequantizable: Bool {
        switch self {
        case .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q2_K, .q3_K, .q4_K, .q5_K, .q6_K: true
        default: plainDType != nil
        }
    }

    /// Whether qtool writes this type.
    public var isWritable: Bool {
        switch self {
        case .f32, .f16, .bf16, .q8_0, .q4_0: true
        default: false
        }
    }

    /// Bytes of a tensor of `dimensions` (ggml order: the row first), or nil when a row is not a
    /// whole number of blocks or the size overflows.
    public func byteCount(dimensions: [Int]) -> Int? {
        guard let first = dimensions.first, dimensions.allSatisfy({ $0 >= 0 }), first % blockSize == 0 else { return nil }
        // The element count must fit in any order of multiplication, even where a 0 makes the size
        // 0: `elementCount` and `Shape` multiply every dimension.
        guard CheckedSize.product(dimensions.filter { $0 != 0 }) != nil else { return nil }
        guard let rows = CheckedSize.product(Array(dimensions.dropFirst())) else { return nil }
        guard let rowBytes = CheckedSize.multiply(first / blockSize, typeSize) else { return nil }
        return CheckedSize.multiply(rows, rowBytes)
    }
}

/// llama.cpp's `llama_ftype`: the type most of a model's tensors have (`general.file_type`).
public enum GGUFFileType: UInt32, Sendable {
    case allF32 = 0
    case mostlyF16 = 1
    case mostlyQ4_0 = 2
    case mostlyQ8_0 = 7
    case mostlyBF16 = 32

    public init?(_ type: GGMLType) {
        switch type {
        case .f32: self = .allF32
        case .f16: self = .mostlyF16
        case .q4_0: self = .mostlyQ4_0
        case .q8_0: self = .mostlyQ8_0
        case .bf16: self = .mostlyBF16
        default: return nil
        }
    }
}
