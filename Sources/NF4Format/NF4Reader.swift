import TensorCore

/// One tensor listed in a .nf4 header.
public struct NF4Entry: Sendable {
    public enum Kind: Sendable {
        case quantized(type: QuantType, blocksize: Int, doubleQuant: Bool, offset: Float, sections: [String: NF4Section])
        case plain(NF4Section)
    }
    public var name: String
    /// The original dtype (quantized) or the stored dtype (plain).
    public var dtype: DType
    public var shape: Shape
    public var kind: Kind

    public var isQuantized: Bool { if case .quantized = kind { true } else { false } }
}

/// A .nf4 file, memory-mapped, header validated on open; sections are checked (XXH64) when read.
public struct NF4File: Sendable {
    public let path: String
    let mapping: MappedFile
    public let metadata: [(key: String, value: String)]?
    public let entries: [NF4Entry]
    public let files: [(name: String, section: NF4Section)]
    /// Where the header's JSON lies.
    public let headerRange: Range<Int>

    public init(path: String) throws {
        self.path = path
        mapping = try MappedFile(path: path)
        let size = mapping.count
        guard size >= NF4Container.preludeSize + NF4Container.trailerSize else {
            if size >= 8, mapping.withBytes(in: 0..<8, { Array($0) }) != NF4Container.magic { throw NF4Error.notNF4(path: path) }
            throw NF4Error.truncated(path: path, detail: "\(size) bytes")
        }
        let (prelude, trailer) = mapping.withBytes(in: 0..<size) { bytes in
            (Array(bytes[0..<16]), Array(bytes[(size - 32)..<size]))
        }
        guard Array(prelude[0..<8]) == NF4Container.magic else { throw NF4Error.notNF4(path: path) }
        let version = prelude.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: 8, as: UInt32.self)) }
        let flags = prelude.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: 12, as: UInt32.self)) }
        guard version == NF4Container.version, flags == 0 else {
            throw NF4Error.unsupportedVersion(path: path, version: version, flags: flags)
        }
        guard Array(trailer[24..<32]) == NF4Container.magic else {
            throw NF4Error.truncated(path: path, detail: "no trailer at the end of the file")
        }
        let (headerOffset, headerLength, headerChecksum) = trailer.withUnsafeBytes { t in
            (
                UInt64(littleEndian: t.loadUnaligned(fromByteOffset: 0, as: UInt64.self)),
                UInt64(littleEndian: t.loadUnaligned(fromByteOffset: 8, as: UInt64.self)),
                UInt64(littleEndian: t.loadUnaligned(fromByteOffset: 16, as: UInt64.self))
            )
        }
        let dataEnd = size - NF4Container.trailerSize
        guard headerOffset >= UInt64(NF4Container.preludeSize), headerLength <= UInt64(dataEnd),
            headerOffset <= UInt64(dataEnd) - headerLength
        else { throw NF4Error.truncated(path: path, detail: "header at \(headerOffset)+\(headerLength) is outside the file") }
        guard headerLength <= UInt64(NF4Container.maximumHeaderLength) else {
            throw NF4Error.invalidHeader(path: path, detail: "\(headerLength) bytes, over the limit of \(NF4Container.maximumHeaderLength)")
        }
        let headerRange = Int(headerOffset)..<Int(headerOffset + headerLength)
        self.headerRange = headerRange
        let header: JSONValue = try mapping.withBytes(in: headerRange) { bytes in
            guard XXH64.hash(bytes) == headerChecksum else { throw NF4Error.headerChecksumMismatch(path: path) }
            do {
                return try JSONParser.parse(bytes)
            } catch let error as JSONParseError {
                throw NF4Error.invalidHeader(path: path, detail: error.description)
            }
        }
        let parsed = try HeaderParser(path: path, dataEnd: headerRange.lowerBound).parse(header)
        metadata = parsed.metadata
        entries = parsed.entries
        files = parsed.files
    }

    /// The tensor of `entry`, checking its sections' checksums and that its code tables are the
    /// standard ones (the container stores them; qtool restores with its own); uncompressed
    /// sections stay mapped.
    public func load(_ entry: NF4Entry) throws -> StoredTensor {
        switch entry.kind {
        case .plain(let section):
            return .plain(try load(section, owner: entry.name, dtype: entry.dtype, shape: entry.shape))
        case .quantized(let type, let blocksize, let doubleQuant, let offset, let sections):
            func part(_ key: String, _ dtype: DType) throws -> Tensor {
                let section = sections[key]!
                return try load(section, owner: entry.name, dtype: dtype, shape: [section.size * 8 / dtype.bitSize])
            }
            func checkTable(_ key: String, _ expected: [Float], _ what: String) throws {
                guard try part(key, .f32).values(as: Float.self).map(\.bitPattern) == expected.map(\.bitPattern) else {
                    throw NF4Error.invalidSection(path: path, owner: entry.name, detail: "\(key) is not \(what)")
                }
            }
            try checkTable("quant_map", type.code, "the standard \(type.rawValue) table")
            let absmax: QuantizedTensor.Absmax
            if doubleQuant {
                try checkTable("nested_quant_map", DynamicMap.values, "bitsandbytes' dynamic map")
                absmax = .double(
                    codes: try part("absmax", .u8), nestedAbsmax: try part("nested_absmax", .f32), offset: offset, nestedBlocksize: 256)
            } else {
                absmax = .plain(try part("absmax", .f32))
            }
            return .quantized(
                QuantizedTensor(
                    quantType: type, blocksize: blocksize, shape: entry.shape, originalDType: entry.dtype, packed: try part("codes", .u8),
                    absmax: absmax))
        }
    }

    /// The bytes of a model file carried in the container.
    public func fileBytes(_ name: String) throws -> [UInt8] {
        guard let section = files.first(where: { $0.name == name })?.section else { return [] }
        return try load(section, owner: name, dtype: .u8, shape: [section.size]).withBytes { Array($0) }
    }

    /// Every section of the file: each tensor's and each carried file's.
    public var sections: [(owner: String, section: NF4Section)] {
        var out: [(owner: String, section: NF4Section)] = []
        for entry in entries {
            switch entry.kind {
            case .plain(let section): out.append((entry.name, section))
            case .quantized(_, _, _, _, let sections):
                for key in sections.keys.sorted() { out.append((entry.name + " (" + key + ")", sections[key]!)) }
            }
        }
        for file in files { out.append((file.name, file.section)) }
        return out
    }

    /// The offset of the first byte that no section, the header, the prelude or the trailer
    /// covers and that is not zero (the format pads with zeros), or nil when every such byte is.
    /// The checksums cover the rest, so with this every byte of the file is accounted for.
    public func firstStrayByte() -> Int? {
        var covered = sections.map { $0.section.offset..<($0.section.offset + $0.section.length) } + [headerRange]
        covered.sort { $0.lowerBound < $1.lowerBound }
        let end = mapping.count - NF4Container.trailerSize
        var position = NF4Container.preludeSize
        func check(_ gap: Range<Int>) -> Int? {
            guard !gap.isEmpty else { return nil }
            return mapping.withBytes(in: gap) { bytes in
                bytes.firstIndex { $0 != 0 }.map { gap.lowerBound + $0 }
            }
        }
        for range in covered {
            if range.lowerBound > position, let stray = check(position..<min(range.lowerBound, end)) { return stray }
            position = max(position, range.upperBound)
        }
        return position < end ? check(position..<end) : nil
    }

    /// Reads every section once, checking every checksum.
    public func verifyAll() throws {
        for entry in entries { _ = try load(entry) }
        for file in files { _ = try fileBytes(file.name) }
    }

    func load(_ section: NF4Section, owner: String, dtype: DType, shape: Shape) throws -> Tensor {
        let range = section.offset..<(section.offset + section.length)
        let sum = mapping.withBytes(in: range) { XXH64.hash($0) }
        mapping.releasePages(range)
        guard sum == section.checksum else { throw NF4Error.checksumMismatch(path: path, owner: owner) }
        if section.compressed {
            guard let bytes = mapping.withBytes(in: range, { ZstdCodec.decompress($0, size: section.size) }) else {
                throw NF4Error.corruptCompressedData(path: path, owner: owner)
            }
            return Tensor(dtype: dtype, shape: shape, storage: .owned(bytes))
        }
        return Tensor(dtype: dtype, shape: shape, storage: .mapped(mapping, range))
    }
}

/// Validates the header's JSON into entries (every size and offset checked before use).
struct HeaderParser {
    let path: String
    /// Sections must end at or before the header.
    let dataEnd: Int

    func fail(_ detail: String) -> NF4Error { .invalidHeader(path: path, detail: detail) }

    func parse(_ header: JSONValue) throws -> (
        metadata: [(key: String, value: String)]?, entries: [NF4Entry], files: [(name: String, section: NF4Section)]
    ) {
        guard header["format"]?.stringValue == "qtool-nf4" else { throw fail("\"format\" is not \"qtool-nf4\"") }
        guard header["version"]?.integerValue == 1 else { throw fail("\"version\" is not 1") }
        var metadata: [(key: String, value: String)]? = nil
        if let members = header["metadata"]?.objectMembers {
            metadata = try members.map { member in
                guard let value = member.value.stringValue else { throw fail("metadata \"\(member.key)\" is not a string") }
                return (member.key, value)
            }
        } else if header["metadata"] != .null {
            throw fail("\"metadata\" is not an object or null")
        }
        guard let tensorValues = header["tensors"]?.arrayValues else { throw fail("no \"tensors\" array") }
        guard let fileValues = header["files"]?.arrayValues else { throw fail("no \"files\" array") }
        var sections: [(owner: String, section: NF4Section)] = []
        var names = Set<String>()
        var entries: [NF4Entry] = []
        for value in tensorValues {
            let entry = try parseEntry(value, sections: &sections)
            guard names.insert(entry.name).inserted else { throw fail("tensor '\(entry.name)' is listed twice") }
            entries.append(entry)
        }
        var files: [(name: String, section: NF4Section)] = []
        var fileNames = Set<String>()
        for value in fileValues {
            guard let name = value["name"]?.stringValue, !name.isEmpty, !name.contains("/"), name != "..", name != "." else {
                throw fail("a file entry has no plain \"name\"")
            }
            guard fileNames.insert(name).inserted else { throw fail("file '\(name)' is listed twice") }
            let section = try parseSection(value["data"], owner: name)
            sections.append((name, section))
            files.append((name, section))
        }
        // Sections tile nothing twice.
        let sorted = sections.sorted { $0.section.offset < $1.section.offset }
        for (previous, next) in zip(sorted, sorted.dropFirst())
        where previous.section.offset + previous.section.length > next.section.offset {
            throw NF4Error.invalidSection(path: path, owner: next.owner, detail: "overlaps the section of '\(previous.owner)'")
        }
        return (metadata, entries, files)
    }

    func parseEntry(_ value: JSONValue, sections: inout [(owner: String, section: NF4Section)]) throws -> NF4Entry {
        guard let name = value["name"]?.stringValue else { throw fail("a tensor entry has no \"name\"") }
        guard let dtypeName = value["dtype"]?.stringValue, let dtype = DType(rawValue: dtypeName) else {
            throw fail("tensor '\(name)': missing or unknown \"dtype\"")
        }
        guard let dims = value["shape"]?.arrayValues?.map(\.integerValue), dims.allSatisfy({ ($0 ?? -1) >= 0 }) else {
            throw fail("tensor '\(name)': \"shape\" must be non-negative integers")
        }
        let shape = Shape(dims.map { $0! })
        guard let count = shape.checkedElementCount, count < Int.max / 2 else { throw fail("tensor '\(name)': shape \(shape) overflows") }
        guard let quantized = value["quantized"]?.boolValue else { throw fail("tensor '\(name)': no \"quantized\" flag") }
        func section(_ key: String, size: Int) throws -> NF4Section {
            let s = try parseSection(value[key], owner: name)
            guard s.size == size else {
                throw NF4Error.invalidSection(path: path, owner: name, detail: "\(key) holds \(s.size) bytes, expected \(size)")
            }
            sections.append((name, s))
            return s
        }
        guard quantized else {
            guard let bytes = shape.checkedByteCount(of: dtype) else { throw fail("tensor '\(name)': shape \(shape) overflows") }
            return NF4Entry(name: name, dtype: dtype, shape: shape, kind: .plain(try section("data", size: bytes)))
        }
        guard [.f32, .f16, .bf16, .f64].contains(dtype) else {
            throw fail("tensor '\(name)': a quantized tensor's dtype must be a float type")
        }
        guard let type = value["quant_type"]?.stringValue.flatMap(QuantType.init(rawValue:)) else {
            throw fail("tensor '\(name)': missing or unknown \"quant_type\"")
        }
        guard let blocksize = value["blocksize"]?.integerValue, blocksize >= 32, blocksize <= 4096, blocksize & (blocksize - 1) == 0 else {
            throw fail("tensor '\(name)': \"blocksize\" must be a power of two from 32 to 4096")
        }
        guard let doubleQuant = value["double_quant"]?.boolValue else { throw fail("tensor '\(name)': no \"double_quant\" flag") }
        let blocks = count / blocksize + (count % blocksize == 0 ? 0 : 1)
        var map: [String: NF4Section] = [:]
        map["codes"] = try section("codes", size: (count + 1) / 2)
        map["quant_map"] = try section("quant_map", size: 64)
        var offset: Float = 0
        if doubleQuant {
            guard value["nested_blocksize"]?.integerValue == 256 else {
                throw fail("tensor '\(name)': \"nested_blocksize\" must be 256")
            }
            guard let bitsText = value["offset_bits"]?.stringValue, bitsText.count == 8, let bits = UInt32(bitsText, radix: 16) else {
                throw fail("tensor '\(name)': \"offset_bits\" must be 8 hex digits")
            }
            offset = Float(bitPattern: bits)
            guard offset.isFinite else { throw fail("tensor '\(name)': the double-quantization offset is \(offset), not a finite number") }
            map["absmax"] = try section("absmax", size: blocks)
            map["nested_absmax"] = try section("nested_absmax", size: 4 * ((blocks + 255) / 256))
            map["nested_quant_map"] = try section("nested_quant_map", size: 1024)
        } else {
            map["absmax"] = try section("absmax", size: 4 * blocks)
        }
        return NF4Entry(
            name: name, dtype: dtype, shape: shape,
            kind: .quantized(type: type, blocksize: blocksize, doubleQuant: doubleQuant, offset: offset, sections: map))
    }

    func parseSection(_ value: JSONValue?, owner: String) throws -> NF4Section {
        guard let value, let offset = value["offset"]?.integerValue, let length = value["length"]?.integerValue,
            let size = value["size"]?.integerValue, let compression = value["compression"]?.stringValue,
            let sumText = value["xxh64"]?.stringValue, sumText.count == 16, let sum = UInt64(sumText, radix: 16)
        else { throw NF4Error.invalidSection(path: path, owner: owner, detail: "missing or malformed fields") }
        guard compression == "none" || compression == "zstd" else {
            throw NF4Error.invalidSection(path: path, owner: owner, detail: "unknown compression \"\(compression)\"")
        }
        guard offset >= NF4Container.alignment, offset % NF4Container.alignment == 0, length >= 0, size >= 0,
            length <= dataEnd, offset <= dataEnd - length
        else {
            throw NF4Error.invalidSection(
                path: path, owner: owner, detail: "offset \(offset) and length \(length) are misaligned or outside the data")
        }
        guard compression == "zstd" || length == size else {
            throw NF4Error.invalidSection(
                path: path, owner: owner, detail: "length \(length) differs from size \(size) without compression")
        }
        guard size / NF4Container.maximumCompressionRatio <= length else {
            throw NF4Error.invalidSection(
                path: path, owner: owner,
                detail:
                    "declares \(size) bytes from \(length) compressed, more than \(NF4Container.maximumCompressionRatio) times its length")
        }
        return NF4Section(offset: offset, length: length, size: size, compressed: compression == "zstd", checksum: sum)
    }
}
