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

    /// Header bytes (length prefix, JSON, padding) for items already in reference order.
    public static func headerBytes(orderedItems: [Item], metadata: [(key: String, value: String)]?) -> [UInt8] {
        var json = "{"
        var first = true
        if let metadata {
            json += "\"__metadata__\":{"
            json += metadata.map { JSONStyle.serde.quoted($0.key) + ":" + JSONStyle.serde.quoted($0.value) }.joined(separator: ",")
            json += "}"
            first = false
        }
        var offset = 0
        for item in orderedItems {
            if !first { json += "," }
            first = false
            let size = item.payload.byteCount
            json += JSONStyle.serde.quoted(item.name)
            json += ":{\"dtype\":\"\(item.payload.dtype.rawValue)\",\"shape\":["
            json += item.payload.shape.dimensions.map(String.init).joined(separator: ",")
            json += "],\"data_offsets\":[\(offset),\(offset + size)]}"
            offset += size
        }
        json += "}"
        var bytes = Array(json.utf8)
        bytes.append(contentsOf: repeatElement(UInt8(ascii: " "), count: (8 - bytes.count % 8) % 8))
        var length = UInt64(bytes.count).littleEndian
        return withUnsafeBytes(of: &length) { Array($0) } + bytes
    }

    /// Streams `items` into `output` (which the caller commits).
    public static func write(_ items: [Item], metadata: [(key: String, value: String)]?, to output: AtomicFileOutput) throws {
        var seen = Set<String>()
        for item in items where !seen.insert(item.name).inserted {
            throw SafeTensorsError.duplicateTensor(path: output.reportedPath, name: item.name)
        }
        let ordered = referenceOrder(items)
        let header = headerBytes(orderedItems: ordered, metadata: metadata)
        guard header.count - 8 <= SafeTensorsHeader.maximumHeaderLength else {
            throw SafeTensorsError.cannotWrite(path: output.reportedPath, detail: "header would exceed \(SafeTensorsHeader.maximumHeaderLength) bytes")
        }
        try output.write(header)
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
