import TensorCore

/// What is wrong with a .nf4 file.
public enum NF4Error: FileError, Equatable {
    case truncated(path: String, detail: String)
    case notNF4(path: String)
    /// The file ends like a .nf4 file but its first bytes are not the magic.
    case damagedStart(path: String)
    case unsupportedVersion(path: String, version: UInt32, flags: UInt32)
    case headerChecksumMismatch(path: String)
    case invalidHeader(path: String, detail: String)
    case invalidSection(path: String, owner: String, detail: String)
    case checksumMismatch(path: String, owner: String)
    case corruptCompressedData(path: String, owner: String)
    case cannotWrite(path: String, detail: String)

    public var path: String {
        switch self {
        case .truncated(let p, _), .notNF4(let p), .damagedStart(let p), .unsupportedVersion(let p, _, _), .headerChecksumMismatch(let p),
            .invalidHeader(let p, _), .invalidSection(let p, _, _), .checksumMismatch(let p, _),
            .corruptCompressedData(let p, _), .cannotWrite(let p, _):
            p
        }
    }

    public var problem: String {
        switch self {
        case .truncated(_, let detail): "truncated .nf4 file: \(detail)"
        case .notNF4: "not a .nf4 file (bad magic)"
        case .damagedStart: "a damaged .nf4 file: its trailer is intact but its first bytes are not the magic"
        case .unsupportedVersion(_, let version, let flags):
            "unsupported .nf4 version \(version) (flags \(flags)); this qtool reads version 1"
        case .headerChecksumMismatch: "header checksum mismatch: the file is corrupt"
        case .invalidHeader(_, let detail): "invalid .nf4 header: \(detail)"
        case .invalidSection(_, let owner, let detail): "\(owner): invalid section: \(detail)"
        case .checksumMismatch(_, let owner): "\(owner): checksum mismatch: the file is corrupt"
        case .corruptCompressedData(_, let owner): "\(owner): corrupt zstd data"
        case .cannotWrite(_, let detail): "cannot write: \(detail)"
        }
    }
}
