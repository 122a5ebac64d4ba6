import TensorCore

/// What can be wrong with a tokenizer file. Every case names the file; `field` is where in the
/// JSON the problem is (`model.merges[12]`, `added_tokens[3].content`).
public enum TokenizerError: FileError, Equatable {
    case missingFile(path: String, problem: String)
    /// The bytes are not JSON (or not UTF-8, or nested too deeply).
    case notJSON(path: String, problem: String)
    /// A field is missing, of the wrong type, or holds a value that cannot be.
    case invalidField(path: String, field: String, problem: String)
    /// A component qtool does not implement (a WordPiece model, a Precompiled normalizer, an
    /// unknown split pattern, …), named by its field and type.
    case unsupported(path: String, field: String, problem: String)

    public var path: String {
        switch self {
        case .missingFile(let path, _), .notJSON(let path, _), .invalidField(let path, _, _), .unsupported(let path, _, _): path
        }
    }

    public var problem: String {
        switch self {
        case .missingFile(_, let problem): problem
        case .notJSON(_, let problem): "not a valid tokenizer file: \(problem)"
        case .invalidField(_, let field, let problem): "\(field): \(problem)"
        case .unsupported(_, let field, let problem): "\(field): \(problem)"
        }
    }
}
