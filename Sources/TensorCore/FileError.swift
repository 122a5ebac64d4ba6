/// An error a user can act on: which file, and what is wrong with it.
///
/// Every module's error enum conforms, so the CLI prints any of them as `error: <file>: <problem>`.
public protocol FileError: Error, CustomStringConvertible {
    /// The file or folder the problem is in.
    var path: String { get }
    /// What is wrong, in words a user understands.
    var problem: String { get }
}

extension FileError {
    public var description: String { "\(path): \(problem)" }
}

/// Errors of TensorCore: file access and size arithmetic.
public enum TensorCoreError: FileError, Equatable {
    case cannotOpen(path: String, reason: String)
    case cannotMap(path: String, reason: String)
    case cannotWrite(path: String, reason: String)
    case notAFile(path: String)
    case sizeOverflow(path: String, tensor: String, shape: Shape, dtype: DType)
    case unsupportedConversion(path: String, tensor: String, from: DType, to: DType)

    public var path: String {
        switch self {
        case .cannotOpen(let path, _), .cannotMap(let path, _), .cannotWrite(let path, _),
            .notAFile(let path), .sizeOverflow(let path, _, _, _),
            .unsupportedConversion(let path, _, _, _):
            path
        }
    }

    public var problem: String {
        switch self {
        case .cannotOpen(_, let reason): "cannot open: \(reason)"
        case .cannotMap(_, let reason): "cannot map into memory: \(reason)"
        case .cannotWrite(_, let reason): "cannot write: \(reason)"
        case .notAFile(_): "not a regular file"
        case .sizeOverflow(_, let tensor, let shape, let dtype):
            "tensor '\(tensor)': shape \(shape) of \(dtype.rawValue) overflows the addressable size"
        case .unsupportedConversion(_, let tensor, let from, let to):
            "tensor '\(tensor)': cannot convert \(from.rawValue) to \(to.rawValue)"
        }
    }
}
