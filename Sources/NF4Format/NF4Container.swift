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

extension NF4Container {
    /// The version of libzstd that compresses `.nf4` sections, for `qtool info`.
    public static var zstdVersion: String { ZstdCodec.libraryVersion }
}
