import TensorCore

/// Streams a .nf4 file: sections as tensors come, then the header and trailer; atomic.
public final class NF4Writer {
    public let path: String
    private let output: AtomicFileOutput
    private let compressionLevel: Int32?
    private let metadata: [(key: String, value: String)]?
    private var tensors: [JSONValue] = []
    private var files: [JSONValue] = []
    private var names = Set<String>()
    private var fileNames = Set<String>()

    /// `compressionLevel` nil stores sections as they are; a zstd level compresses each section
    /// that gets smaller.
    public init(path: String, compressionLevel: Int32?, metadata: [(key: String, value: String)]?) throws {
        self.path = path
        self.compressionLevel = compressionLevel
        self.metadata = metadata
        output = try AtomicFileOutput(destination: path)
        var prelude = NF4Container.magic
        prelude += withUnsafeBytes(of: NF4Container.version.littleEndian) { Array($0) }
        prelude += [0, 0, 0, 0]
        try output.write(prelude)
    }

    deinit { output.abort() }

    public func abort() { output.abort() }

    private func claim(_ name: String) throws {
        guard names.insert(name).inserted else { throw NF4Error.cannotWrite(path: path, detail: "tensor '\(name)' added twice") }
    }

    public func addQuantized(name: String, _ tensor: QuantizedTensor) throws {
        try claim(name)
        let nested: (offset: Float, blocksize: Int)? =
            if case .double(_, _, let offset, let blocksize) = tensor.absmax { (offset, blocksize) } else { nil }
        var members: [JSONMember] = [
            JSONMember(key: "name", value: .string(name)),
            JSONMember(key: "quantized", value: .bool(true)),
            JSONMember(key: "quant_type", value: .string(tensor.quantType.rawValue)),
            JSONMember(key: "blocksize", value: .integer(tensor.blocksize)),
            JSONMember(key: "dtype", value: .string(tensor.originalDType.rawValue)),
            JSONMember(key: "shape", value: .array(tensor.shape.dimensions.map(JSONValue.integer))),
            JSONMember(key: "double_quant", value: .bool(nested != nil)),
        ]
        if let nested {
            members.append(JSONMember(key: "nested_blocksize", value: .integer(nested.blocksize)))
            members.append(JSONMember(key: "offset_bits", value: .string(nested.offset.bitPattern.paddedHexDigits)))
        }
        members.append(JSONMember(key: "codes", value: try writeSection(tensor.packed).json))
        switch tensor.absmax {
        case .plain(let scales):
            members.append(JSONMember(key: "absmax", value: try writeSection(scales).json))
        case .double(let codes, let nestedAbsmax, _, _):
            members.append(JSONMember(key: "absmax", value: try writeSection(codes).json))
            members.append(JSONMember(key: "nested_absmax", value: try writeSection(nestedAbsmax).json))
        }
        members.append(
            JSONMember(key: "quant_map", value: try writeSection(Tensor(dtype: .f32, shape: [16], values: tensor.quantType.code)).json))
        if nested != nil {
            let map = Tensor(dtype: .f32, shape: [256], values: DynamicMap.values)
            members.append(JSONMember(key: "nested_quant_map", value: try writeSection(map).json))
        }
        tensors.append(.object(members))
    }

    /// A tensor stored as it is; it streams to the file unless its section is to be compressed.
    public func addPlain(name: String, _ tensor: any TensorPayload) throws {
        try claim(name)
        tensors.append(
            .object([
                JSONMember(key: "name", value: .string(name)),
                JSONMember(key: "quantized", value: .bool(false)),
                JSONMember(key: "dtype", value: .string(tensor.dtype.rawValue)),
                JSONMember(key: "shape", value: .array(tensor.shape.dimensions.map(JSONValue.integer))),
                JSONMember(key: "data", value: try writeSection(tensor).json),
            ]))
    }

    /// A model file (config.json, tokenizer files) carried along.
    public func addFile(name: String, bytes: [UInt8]) throws {
        guard !name.contains("/"), fileNames.insert(name).inserted else {
            throw NF4Error.cannotWrite(path: path, detail: "file name '\(name)' is not a plain, unique name")
        }
        let section = try writeSection(Tensor(dtype: .u8, shape: [bytes.count], values: bytes))
        files.append(.object([JSONMember(key: "name", value: .string(name)), JSONMember(key: "data", value: section.json)]))
    }

    private func padToAlignment() throws {
        let gap = (NF4Container.alignment - output.bytesWritten % NF4Container.alignment) % NF4Container.alignment
        if gap > 0 { try output.write([UInt8](repeating: 0, count: gap)) }
    }

    private func writeSection(_ payload: any TensorPayload) throws -> NF4Section {
        try padToAlignment()
        let offset = output.bytesWritten
        // A section that would expand past the readers' ratio limit is stored as it is.
        if let level = compressionLevel, payload.byteCount >= 256,
            let frame = try payload.materialized().withBytes({ ZstdCodec.compress($0, level: level) }), frame.count < payload.byteCount,
            payload.byteCount / NF4Container.maximumCompressionRatio <= frame.count
        {
            try output.write(frame)
            return NF4Section(offset: offset, length: frame.count, size: payload.byteCount, compressed: true, checksum: XXH64.hash(frame))
        }
        var hasher = XXH64()
        try payload.stream(chunkBytes: 8 << 20) { piece in
            hasher.update(piece)
            try output.write(piece)
        }
        return NF4Section(
            offset: offset, length: payload.byteCount, size: payload.byteCount, compressed: false, checksum: hasher.finalize())
    }

    /// Writes the header and trailer and moves the file into place.
    public func commit() throws {
        try padToAlignment()
        let header: JSONValue = .object([
            JSONMember(key: "format", value: .string("qtool-nf4")),
            JSONMember(key: "version", value: .integer(Int(NF4Container.version))),
            JSONMember(
                key: "metadata", value: metadata.map { .object($0.map { JSONMember(key: $0.key, value: .string($0.value)) }) } ?? .null),
            JSONMember(key: "tensors", value: .array(tensors)),
            JSONMember(key: "files", value: .array(files)),
        ])
        let bytes = Array(header.serialized().utf8)
        let offset = output.bytesWritten
        try output.write(bytes)
        var trailer: [UInt8] = []
        for value in [UInt64(offset), UInt64(bytes.count), XXH64.hash(bytes)] {
            trailer += withUnsafeBytes(of: value.littleEndian) { Array($0) }
        }
        trailer += NF4Container.magic
        try output.write(trailer)
        try output.commit()
    }
}
