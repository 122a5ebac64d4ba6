import TensorCore

/// What is wrong with a GGUF file, or with what was asked of one.
public enum GGUFError: FileError, Equatable {
    case notGGUF(path: String)
    case unsupportedVersion(path: String, version: UInt32)
    case truncated(path: String, detail: String)
    case invalidHeader(path: String, detail: String)
    case invalidMetadata(path: String, key: String, detail: String)
    case invalidTensor(path: String, tensor: String, detail: String)
    case unsupportedType(path: String, tensor: String, type: String)
    case cannotWrite(path: String, detail: String)

    public var path: String {
        switch self {
        case .notGGUF(let p), .unsupportedVersion(let p, _), .truncated(let p, _), .invalidHeader(let p, _),
            .invalidMetadata(let p, _, _), .invalidTensor(let p, _, _), .unsupportedType(let p, _, _), .cannotWrite(let p, _):
            p
        }
    }

    public var problem: String {
        switch self {
        case .notGGUF: "not a GGUF file (bad magic)"
        case .unsupportedVersion(_, let version): "unsupported GGUF version \(version); qtool reads versions 2 and 3"
        case .truncated(_, let detail): "truncated GGUF file: \(detail)"
        case .invalidHeader(_, let detail): "invalid GGUF header: \(detail)"
        case .invalidMetadata(_, let key, let detail): "metadata '\(key)': \(detail)"
        case .invalidTensor(_, let tensor, let detail): "tensor '\(tensor)': \(detail)"
        case .unsupportedType(_, let tensor, let type):
            "tensor '\(tensor)': ggml type \(type) is not supported (qtool reads F32, F16, BF16, F64, integer types, "
                + "Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K and Q6_K)"
        case .cannotWrite(_, let detail): "cannot write: \(detail)"
        }
    }
}
