/// Element types of tensors, named as safetensors names them.
///
/// The declaration order is safetensors' own (`Dtype` in `safetensors/src/tensor.rs`): its writer
/// sorts tensors by this order, descending, so `safetensorsRank` must follow it exactly.
public enum DType: String, CaseIterable, Sendable, Hashable {
    case bool = "BOOL"
    case f4 = "F4"
    case f6E2M3 = "F6_E2M3"
    case f6E3M2 = "F6_E3M2"
    case u8 = "U8"
    case i8 = "I8"
    case f8E5M2 = "F8_E5M2"
    case f8E4M3 = "F8_E4M3"
    case f8E8M0 = "F8_E8M0"
    case f8E4M3FNUZ = "F8_E4M3FNUZ"
    case f8E5M2FNUZ = "F8_E5M2FNUZ"
    case i16 = "I16"
    case u16 = "U16"
    case f16 = "F16"
    case bf16 = "BF16"
    case i32 = "I32"
    case u32 = "U32"
    case f32 = "F32"
    case c64 = "C64"
    case f64 = "F64"
    case i64 = "I64"
    case u64 = "U64"

    /// Position in safetensors' declaration order (higher sorts first in its writer).
    public var safetensorsRank: Int { DType.allCases.firstIndex(of: self)! }

    /// Size of one element in bits (4 and 6 for the sub-byte MX formats).
    public var bitSize: Int {
        switch self {
        case .f4: 4
        case .f6E2M3, .f6E3M2: 6
        case .bool, .u8, .i8, .f8E5M2, .f8E4M3, .f8E8M0, .f8E4M3FNUZ, .f8E5M2FNUZ: 8
        case .i16, .u16, .f16, .bf16: 16
        case .i32, .u32, .f32: 32
        case .c64, .f64, .i64, .u64: 64
        }
    }

    /// Real floating-point types (torch's `is_floating_point()`); complex is not among them.
    public var isFloatingPoint: Bool {
        switch self {
        case .f4, .f6E2M3, .f6E3M2, .f8E5M2, .f8E4M3, .f8E8M0, .f8E4M3FNUZ, .f8E5M2FNUZ, .f16, .bf16,
            .f32, .f64:
            true
        default: false
        }
    }

    /// The torch name of the type, as transformers writes it in config.json (`torch_dtype`).
    public var torchName: String {
        switch self {
        case .bool: "bool"
        case .f4: "float4_e2m1fn_x2"
        case .f6E2M3: "float6_e2m3"
        case .f6E3M2: "float6_e3m2"
        case .u8: "uint8"
        case .i8: "int8"
        case .f8E5M2: "float8_e5m2"
        case .f8E4M3: "float8_e4m3fn"
        case .f8E8M0: "float8_e8m0fnu"
        case .f8E4M3FNUZ: "float8_e4m3fnuz"
        case .f8E5M2FNUZ: "float8_e5m2fnuz"
        case .i16: "int16"
        case .u16: "uint16"
        case .f16: "float16"
        case .bf16: "bfloat16"
        case .i32: "int32"
        case .u32: "uint32"
        case .f32: "float32"
        case .c64: "complex64"
        case .f64: "float64"
        case .i64: "int64"
        case .u64: "uint64"
        }
    }

    /// Parses the short names users type on the command line (`f32`, `bf16`, `float16`, `F16`, …).
    public init?(userName: String) {
        switch userName.lowercased() {
        case "f32", "float32", "fp32", "float": self = .f32
        case "f16", "float16", "fp16", "half": self = .f16
        case "bf16", "bfloat16": self = .bf16
        case "f64", "float64", "fp64", "double": self = .f64
        default:
            guard let dtype = DType(rawValue: userName.uppercased()) else { return nil }
            self = dtype
        }
    }
}
