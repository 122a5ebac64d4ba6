import TensorCore

/// One tensor of a GGUF file, as its tensor info describes it.
public struct GGUFTensorInfo: Sendable {
    public let name: String
    /// ggml order: the row (fastest-varying dimension) first, the reverse of torch's shape.
    public let dimensions: [Int]
    public let type: GGMLType
    /// Offset of the data from the start of the data section.
    public let offset: Int
    public let byteCount: Int

    /// The shape in torch order.
    public var shape: Shape { Shape(dimensions.reversed()) }
    public var elementCount: Int { dimensions.reduce(1, *) }
}

/// A GGUF file (ggml's `docs/gguf.md`, versions 2 and 3, little-endian), memory-mapped; the
/// header, metadata and tensor infos are read and checked before any tensor is touched.
public struct GGUFFile: Sendable {
    public static let magic: [UInt8] = Array("GGUF".utf8)
    public static let defaultAlignment = 32
    /// `general.alignment` is a power of two up to this (1 MiB; files use 32).
    public static let largestAlignment = 1 << 20
    /// Tensor names are at most this many bytes (llama.cpp's GGML_MAX_NAME, less its NUL).
    public static let longestName = 63
    /// Nested arrays deeper than this are refused (no real file nests at all).
    static let deepestArray = 8
    /// Metadata array elements in the whole file at most (each is held as a value: a hostile
    /// 100 M-element array would need gigabytes). Real files hold about a million (tokens,
    /// scores, types, merges of a 256 K vocabulary).
    public static let mostArrayElements = 1 << 24

    public let path: String
    public let version: UInt32
    public let metadata: GGUFMetadata
    public let tensors: [GGUFTensorInfo]
    public let alignment: Int
    /// Where the data section starts in the file.
    public let dataStart: Int
    public let mapping: MappedFile

    public init(path: String) throws {
        let mapping = try MappedFile(path: path)
        self.mapping = mapping
        self.path = path
        let parsed = try mapping.withBytes(in: 0..<mapping.count) { bytes throws(GGUFError) in
            var parser = Parser(reader: ByteReader(bytes), path: path)
            return try parser.parseHeader()
        }
        version = parsed.version
        metadata = parsed.metadata
        tensors = parsed.tensors
        alignment = parsed.alignment
        dataStart = parsed.dataStart
        mapping.releasePages(0..<min(dataStart, mapping.count))
    }

    /// The tensor info named `name`.
    public func info(_ name: String) -> GGUFTensorInfo? { tensors.first { $0.name == name } }

    /// The byte range of a tensor's data in the file.
    public func fileRange(_ info: GGUFTensorInfo) -> Range<Int> { (dataStart + info.offset)..<(dataStart + info.offset + info.byteCount) }

    /// A tensor's stored bytes as they are (for a quantized type: its blocks), backed by the mapping.
    public func rawTensor(_ info: GGUFTensorInfo) -> Tensor {
        Tensor(dtype: .u8, shape: [info.byteCount], storage: .mapped(mapping, fileRange(info)))
    }

    /// A tensor in torch order: a plain type backed by the mapping, a quantized type dequantized
    /// to float32 (as gguf-py's `dequantize`).
    public func tensor(_ info: GGUFTensorInfo, threads: Int = ParallelismSettings.threadCount) throws -> Tensor {
        if let dtype = info.type.plainDType {
            return Tensor(dtype: dtype, shape: info.shape, storage: .mapped(mapping, fileRange(info)))
        }
        // The streamed decoding, gathered: one dequantization path for both.
        guard let payload = GGUFDequantizedPayload(self, info, threads: threads) else {
            throw GGUFError.unsupportedType(path: path, tensor: info.name, type: info.type.description)
        }
        return try payload.materialized()
    }

    /// Reads the header, metadata and tensor infos from untrusted bytes.
    struct Parser {
        var reader: ByteReader
        let path: String
        var arrayElements = 0

        struct Header {
            let version: UInt32
            let metadata: GGUFMetadata
            let tensors: [GGUFTensorInfo]
            let alignment: Int
            let dataStart: Int
        }

        mutating func parseHeader() throws(GGUFError) -> Header {
            guard let magic = reader.readBytes(4), magic.elementsEqual(GGUFFile.magic) else {
                if reader.bytes.count >= 4 && reader.bytes[0..<4].elementsEqual(Array("FUGG".utf8)) {
                    throw .invalidHeader(path: path, detail: "a big-endian GGUF file; qtool reads little-endian files")
                }
                throw .notGGUF(path: path)
            }
            let version = try integer(UInt32.self, "the version")
            guard version == 2 || version == 3 else {
                // A big-endian file's version reads byte-swapped.
                if version.byteSwapped == 2 || version.byteSwapped == 3 {
                    throw .invalidHeader(path: path, detail: "a big-endian GGUF file; qtool reads little-endian files")
                }
                throw .unsupportedVersion(path: path, version: version)
            }
            let tensorCount = try count("the tensor count", smallest: 8 + 1 + 4 + 8 + 4 + 8)
            let keyCount = try count("the metadata count", smallest: 8 + 1 + 4 + 1)
            var metadata = GGUFMetadata()
            for index in 0..<keyCount {
                let key = try string("metadata key \(index)")
                guard !key.isEmpty else { throw .invalidMetadata(path: path, key: key, detail: "empty key") }
                guard !metadata.contains(key) else { throw .invalidMetadata(path: path, key: key, detail: "the key appears twice") }
                let rawType = try integer(UInt32.self, "the type of metadata '\(key)'")
                guard let type = GGUFValueType(rawValue: rawType) else {
                    throw .invalidMetadata(path: path, key: key, detail: "unknown value type \(rawType)")
                }
                metadata[key] = try value(type, key: key, depth: 0)
            }
            var alignment = GGUFFile.defaultAlignment
            if let value = metadata["general.alignment"] {
                guard case .uint32(let written) = value else {
                    throw .invalidMetadata(path: path, key: "general.alignment", detail: "must be a uint32, found \(value.type)")
                }
                guard written > 0, written & (written - 1) == 0, Int(written) <= GGUFFile.largestAlignment else {
                    throw .invalidMetadata(path: path, key: "general.alignment", detail: "\(written) is not a power of two up to 1 MiB")
                }
                alignment = Int(written)
            }

            var tensors: [GGUFTensorInfo] = []
            tensors.reserveCapacity(tensorCount)
            var names = Set<String>()
            for index in 0..<tensorCount {
                let name = try string("the name of tensor \(index)")
                guard name.utf8.count <= GGUFFile.longestName else {
                    throw .invalidTensor(path: path, tensor: name, detail: "name longer than \(GGUFFile.longestName) bytes")
                }
                guard names.insert(name).inserted else { throw .invalidTensor(path: path, tensor: name, detail: "the name appears twice") }
                let rank = try integer(UInt32.self, "the dimension count of tensor '\(name)'")
                guard (1...4).contains(rank) else {
                    throw .invalidTensor(path: path, tensor: name, detail: "\(rank) dimensions (ggml tensors have 1 to 4)")
                }
                var dimensions: [Int] = []
                for _ in 0..<rank {
                    let dimension = try integer(UInt64.self, "the dimensions of tensor '\(name)'")
                    guard let value = Int(exactly: dimension) else {
                        throw .invalidTensor(path: path, tensor: name, detail: "dimension \(dimension) is out of range")
                    }
                    dimensions.append(value)
                }
                let rawType = try integer(UInt32.self, "the type of tensor '\(name)'")
                guard let type = GGMLType(rawValue: rawType) else {
                    throw .invalidTensor(path: path, tensor: name, detail: "unknown ggml type \(rawType)")
                }
                guard dimensions[0] % type.blockSize == 0 else {
                    throw .invalidTensor(
                        path: path, tensor: name,
                        detail: "row length \(dimensions[0]) is not a multiple of \(type)'s block size \(type.blockSize)")
                }
                guard let byteCount = type.byteCount(dimensions: dimensions) else {
                    throw .invalidTensor(path: path, tensor: name, detail: "size of \(dimensions) \(type) overflows")
                }
                let rawOffset = try integer(UInt64.self, "the offset of tensor '\(name)'")
                guard let offset = Int(exactly: rawOffset) else {
                    throw .invalidTensor(path: path, tensor: name, detail: "offset \(rawOffset) is out of range")
                }
                guard offset % alignment == 0 else {
                    throw .invalidTensor(
                        path: path, tensor: name, detail: "offset \(offset) is not a multiple of the alignment \(alignment)")
                }
                tensors.append(GGUFTensorInfo(name: name, dimensions: dimensions, type: type, offset: offset, byteCount: byteCount))
            }
            let headerEnd = reader.offset
            let dataStart = (headerEnd + alignment - 1) / alignment * alignment
            let dataSize = max(0, reader.bytes.count - dataStart)
            if !tensors.isEmpty && reader.bytes.count < dataStart {
                throw .truncated(path: path, detail: "the file ends at byte \(reader.bytes.count), before its data section at \(dataStart)")
            }
            // Every tensor inside the data section, none overlapping another.
            var previousEnd = 0
            var previousName = ""
            for info in tensors.sorted(by: { ($0.offset, $0.byteCount) < ($1.offset, $1.byteCount) }) {
                guard let end = CheckedSize.add(info.offset, info.byteCount), end <= dataSize else {
                    throw .truncated(
                        path: path,
                        detail: "tensor '\(info.name)' (\(info.byteCount) bytes at data offset \(info.offset)) ends past the "
                            + "file's \(dataSize) bytes of data")
                }
                guard info.offset >= previousEnd || info.byteCount == 0 else {
                    throw .invalidTensor(path: path, tensor: info.name, detail: "its data overlaps tensor '\(previousName)'")
                }
                if info.byteCount > 0 {
                    previousEnd = end
                    previousName = info.name
                }
            }
            return Header(version: version, metadata: metadata, tensors: tensors, alignment: alignment, dataStart: dataStart)
        }

        mutating func integer<T: FixedWidthInteger>(_ type: T.Type, _ what: String) throws(GGUFError) -> T {
            guard let value = reader.read(type) else {
                throw .truncated(path: path, detail: "the file ends at byte \(reader.bytes.count), inside \(what)")
            }
            return value
        }

        /// A u64 count of items that take at least `smallest` bytes each.
        mutating func count(_ what: String, smallest: Int) throws(GGUFError) -> Int {
            let value = try integer(UInt64.self, what)
            guard value <= UInt64(reader.remaining / smallest) else {
                throw .invalidHeader(path: path, detail: "\(what) \(value) is more than the \(reader.remaining) bytes left could hold")
            }
            return Int(value)
        }

        mutating func string(_ what: String) throws(GGUFError) -> String {
            let length = try integer(UInt64.self, "the length of \(what)")
            guard length <= UInt64(reader.remaining), let bytes = reader.readBytes(Int(length)) else {
                throw .truncated(path: path, detail: "\(what): a string of \(length) bytes runs past the end of the file")
            }
            guard let text = String(validating: bytes, as: UTF8.self) else {
                throw .invalidHeader(path: path, detail: "\(what) is not valid UTF-8")
            }
            return text
        }

        mutating func value(_ type: GGUFValueType, key: String, depth: Int) throws(GGUFError) -> GGUFValue {
            let what = "metadata '\(key)'"
            switch type {
            case .uint8: return .uint8(try integer(UInt8.self, what))
            case .int8: return .int8(try integer(Int8.self, what))
            case .uint16: return .uint16(try integer(UInt16.self, what))
            case .int16: return .int16(try integer(Int16.self, what))
            case .uint32: return .uint32(try integer(UInt32.self, what))
            case .int32: return .int32(try integer(Int32.self, what))
            case .float32: return .float32(Float(bitPattern: try integer(UInt32.self, what)))
            case .uint64: return .uint64(try integer(UInt64.self, what))
            case .int64: return .int64(try integer(Int64.self, what))
            case .float64: return .float64(Double(bitPattern: try integer(UInt64.self, what)))
            case .bool:
                let byte = try integer(UInt8.self, what)
                guard byte <= 1 else { throw .invalidMetadata(path: path, key: key, detail: "bool byte \(byte) is neither 0 nor 1") }
                return .bool(byte == 1)
            case .string:
                return .string(try string(what))
            case .array:
                guard depth < GGUFFile.deepestArray else {
                    throw .invalidMetadata(path: path, key: key, detail: "arrays nested more than \(GGUFFile.deepestArray) deep")
                }
                let rawType = try integer(UInt32.self, what)
                guard let elementType = GGUFValueType(rawValue: rawType) else {
                    throw .invalidMetadata(path: path, key: key, detail: "unknown array element type \(rawType)")
                }
                let length = try integer(UInt64.self, what)
                guard length <= UInt64(reader.remaining / elementType.smallestSize) else {
                    throw .truncated(
                        path: path, detail: "\(what): an array of \(length) \(elementType) values runs past the end of the file")
                }
                arrayElements += Int(length)
                guard arrayElements <= GGUFFile.mostArrayElements else {
                    throw .invalidMetadata(
                        path: path, key: key,
                        detail: "more than qtool's limit of \(GGUFFile.mostArrayElements) metadata array elements in a file")
                }
                var elements: [GGUFValue] = []
                elements.reserveCapacity(Int(length))
                for _ in 0..<Int(length) { elements.append(try value(elementType, key: key, depth: depth + 1)) }
                return .array(elementType, elements)
            }
        }
    }
}

/// A GGUF tensor in torch order as float32, float16 or bfloat16, produced a few megabytes at a
/// time as it streams (blocks dequantized as gguf-py does, then rounded to `dtype`); `rowOrder`
/// (optional) gives, for each output row, the stored row to take.
public struct GGUFDequantizedPayload: TensorPayload {
    public let file: GGUFFile
    public let info: GGUFTensorInfo
    public let dtype: DType
    public let rowOrder: [Int]?
    public let threads: Int

    /// nil when the tensor's type is not one qtool turns into floats, or `dtype` is not f32,
    /// f16 or bf16, or `rowOrder` is not a permutation of its rows.
    public init?(
        _ file: GGUFFile, _ info: GGUFTensorInfo, dtype: DType = .f32, rowOrder: [Int]? = nil,
        threads: Int = ParallelismSettings.threadCount
    ) {
        let floats = info.type.plainDType.map { FloatConversion.decodable.contains($0) } ?? info.type.isDequantizable
        guard floats, [.f32, .f16, .bf16].contains(dtype) else { return nil }
        let rows = info.dimensions.first.map { $0 == 0 ? 0 : info.elementCount / $0 } ?? 0
        if let rowOrder, rowOrder.count != rows || rowOrder.contains(where: { $0 < 0 || $0 >= rows }) { return nil }
        self.file = file
        self.info = info
        self.dtype = dtype
        self.rowOrder = rowOrder
        self.threads = threads
    }

    public var shape: Shape { info.shape }
    public var byteCount: Int { info.elementCount * dtype.bitSize / 8 }

    public func stream(chunkBytes: Int, into sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        let rowLength = info.dimensions[0]
        guard rowLength > 0, info.elementCount > 0 else { return }
        let rows = info.elementCount / rowLength
        let type = info.type
        let rowBytes = rowLength / type.blockSize * type.typeSize
        let outputRowBytes = rowLength * dtype.bitSize / 8
        let rowsPerChunk = Swift.max(1, chunkBytes / (rowLength * 4))
        let order = rowOrder
        let dtype = dtype
        let range = file.fileRange(info)
        try file.mapping.withBytes(in: range) { bytes in
            guard let base = bytes.baseAddress else { return }
            let source = SendableRawPointer(base)
            try RowStream.stream(
                rows: rows, rowBytes: outputRowBytes, rowsPerChunk: rowsPerChunk, rowsPerTask: (1 << 16) / rowLength, threads: threads,
                fill: { rows, destination in
                    let floats = UnsafeMutableBufferPointer<Float>.allocate(capacity: rowLength)
                    defer { floats.deallocate() }
                    for (k, r) in rows.enumerated() {
                        let row = order?[r] ?? r
                        GGMLBlocks.dequantize(
                            type, UnsafeRawBufferPointer(start: source.raw + row * rowBytes, count: rowBytes), into: floats)
                        FloatConversion.encodeFromFloat32(
                            floats.baseAddress!, count: rowLength, into: destination + k * outputRowBytes, dtype, at: 0)
                    }
                }, sink: sink,
                done: { rows in
                    // The stored rows read (in order; with a row order, pages come back if needed).
                    file.mapping.releasePages(
                        (range.lowerBound + rows.lowerBound * rowBytes)..<(range.lowerBound + rows.upperBound * rowBytes))
                })
        }
    }
}
