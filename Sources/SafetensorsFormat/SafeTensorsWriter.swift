import TensorCore

/// Writes safetensors files byte for byte as the reference library's `save_file` does.
///
/// The reference sorts tensors by dtype (its declaration order, descending) and then by name
/// (bytewise), lays the data out in that order, serializes the header with serde_json (compact,
/// `__metadata__` first) and pads it with spaces to a multiple of 8. Metadata keeps the order it
/// is given in (the reference's own order is its hash map's, which varies from run to run).
public enum SafeTensorsWriter {
    /// Bytes streamed to the file per write; bounds the memory a cast needs.
    public static let chunkBytes = 8 << 20

    public struct Item: Sendable {
        public var name: String
        public var payload: any TensorPayload
        public init(name: String, payload: any TensorPayload) {
            self.name = name
            self.payload = payload
        }
    }

    /// The items in the reference's order.
    public static func referenceOrder(_ items: [Item]) -> [Item] {
        items.sorted { a, b in
            let ra = a.payload.dtype.safetensorsRank
            let rb = b.payload.dtype.safetensorsRank
            if ra != rb { return ra > rb }
            return a.name.utf8.lexicographicallyPrecedes(b.name.utf8)
        }
    }

    /// The header's JSON in pieces, for items already in reference order: names and metadata
    /// that need no escape are kept as they are (not copied), so a header carrying 100 MB of
    /// metadata streams out without being built twice.
    static func headerParts(orderedItems: [Item], metadata: [(key: String, value: String)]?) -> [String] {
        var parts: [String] = ["{"]
        func quoted(_ text: String) {
            if JSONStyle.serde.needsNoEscape(text) {
                parts += ["\"", text, "\""]
            } else {
                parts.append(JSONStyle.serde.quoted(text))
            }
        }
        var first = true
        if let metadata {
            parts.append("\"__metadata__\":{")
            for (index, item) in metadata.enumerated() {
                if index > 0 { parts.append(",") }
                quoted(item.key)
                parts.append(":")
                quoted(item.value)
            }
            parts.append("}")
            first = false
        }
        var offset = 0
        for item in orderedItems {
            if !first { parts.append(",") }
            first = false
            let size = item.payload.byteCount
            quoted(item.name)
            parts.append(
                ":{\"dtype\":\"\(item.payload.dtype.rawValue)\",\"shape\":["
                    + item.payload.shape.dimensions.map(String.init).joined(separator: ",")
                    + "],\"data_offsets\":[\(offset),\(offset + size)]}")
            offset += size
        }
        parts.append("}")
        let length = parts.reduce(0) { $0 + $1.utf8.count }
        parts.append(String(repeating: " ", count: (8 - length % 8) % 8))
        return parts
    }

    /// Header bytes (length prefix, JSON, padding) for items already in reference order.
    public static func headerBytes(orderedItems: [Item], metadata: [(key: String, value: String)]?) -> [UInt8] {
        let parts = headerParts(orderedItems: orderedItems, metadata: metadata)
        var bytes: [UInt8] = []
        withUnsafeBytes(of: UInt64(parts.reduce(0) { $0 + $1.utf8.count }).littleEndian) { bytes += $0 }
        for part in parts { bytes += part.utf8 }
        return bytes
    }

    /// Streams `items` into `output` (which the caller commits).
    public static func write(_ items: [Item], metadata: [(key: String, value: String)]?, to output: AtomicFileOutput) throws {
        var seen = Set<String>()
        for item in items where !seen.insert(item.name).inserted {
            throw SafeTensorsError.duplicateTensor(path: output.reportedPath, name: item.name)
        }
        let ordered = referenceOrder(items)
        let parts = headerParts(orderedItems: ordered, metadata: metadata)
        let length = parts.reduce(0) { $0 + $1.utf8.count }
        guard length <= SafeTensorsHeader.maximumHeaderLength else {
            throw SafeTensorsError.cannotWrite(
                path: output.reportedPath, detail: "header would exceed \(SafeTensorsHeader.maximumHeaderLength) bytes")
        }
        try withUnsafeBytes(of: UInt64(length).littleEndian) { try output.write($0) }
        for var part in parts { try part.withUTF8 { try output.write(UnsafeRawBufferPointer($0)) } }
        for item in ordered {
            let before = output.bytesWritten
            try item.payload.stream(chunkBytes: chunkBytes) { try output.write($0) }
            precondition(output.bytesWritten - before == item.payload.byteCount, "payload streamed a wrong size")
        }
    }

    /// Writes one file atomically.
    public static func write(_ items: [Item], metadata: [(key: String, value: String)]?, toFile path: String) throws {
        let output = try AtomicFileOutput(destination: path)
        do {
            try write(items, metadata: metadata, to: output)
            try output.commit()
        } catch {
            output.abort()
            throw error
        }
    }
}
