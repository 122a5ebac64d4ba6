import TensorCore

/// One tensor as the header describes it: offsets are relative to the start of the data section.
public struct SafeTensorsEntry: Equatable, Sendable {
    public var name: String
    public var dtype: DType
    public var shape: Shape
    public var dataRange: Range<Int>

    public init(name: String, dtype: DType, shape: Shape, dataRange: Range<Int>) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.dataRange = dataRange
    }
}

/// The parsed, fully validated header of a safetensors file.
///
/// Validation follows the reference reader (`safetensors/src/tensor.rs`) and is stricter where the
/// reference is lenient: duplicate tensor names and unknown fields are errors. See
/// formats/safetensors.md.
public struct SafeTensorsHeader: Sendable {
    /// The reference reader's limit (`MAX_HEADER_SIZE`).
    public static let maximumHeaderLength = 100_000_000

    /// Tensors in the order of their data offsets.
    public var entries: [SafeTensorsEntry]
    /// `__metadata__` in file order, or nil when the header has none.
    public var metadata: [(key: String, value: String)]?
    /// Length of the JSON text, padding included.
    public var headerLength: Int
    /// Where the data section starts in the file: 8 + `headerLength`.
    public var dataStart: Int { 8 + headerLength }

    /// Parses and validates the header of a whole file's bytes; `path` names it in errors.
    public static func parse(fileBytes: UnsafeRawBufferPointer, path: String) throws(SafeTensorsError) -> SafeTensorsHeader {
        var reader = ByteReader(fileBytes)
        guard let declared = reader.read(UInt64.self) else {
            throw .fileTooSmall(path: path, size: fileBytes.count)
        }
        guard declared <= UInt64(maximumHeaderLength) else { throw .headerTooLarge(path: path, length: declared) }
        let length = Int(declared)
        guard let json = reader.readBytes(length) else {
            throw .headerPastEnd(path: path, length: declared, fileSize: fileBytes.count)
        }
        // Checked without a copy (a header may be 100 MB).
        guard !transcode(json.makeIterator(), from: UTF8.self, to: UTF32.self, stoppingOnError: true, into: { _ in }) else {
            throw .headerNotUTF8(path: path)
        }
        let root: JSONValue
        do {
            root = try JSONParser.parse(json)
        } catch {
            if let key = error.duplicateKey { throw .duplicateTensor(path: path, name: key) }
            throw .headerNotJSON(path: path, detail: error.description)
        }
        guard let members = root.objectMembers else { throw .headerNotObject(path: path) }

        var metadata: [(key: String, value: String)]? = nil
        var entries: [SafeTensorsEntry] = []
        for member in members {
            if member.key == "__metadata__" {
                metadata = try parseMetadata(member.value, path: path)
            } else {
                entries.append(try parseEntry(member, path: path))
            }
        }
        let dataSize = fileBytes.count - 8 - length
        try validateLayout(&entries, dataSize: dataSize, path: path)
        return SafeTensorsHeader(entries: entries, metadata: metadata, headerLength: length)
    }

    private static func parseMetadata(_ value: JSONValue, path: String) throws(SafeTensorsError) -> [(key: String, value: String)]? {
        // The reference reads `__metadata__` as Option<HashMap<String, String>>: null means none.
        if value == .null { return nil }
        guard let members = value.objectMembers else {
            throw .invalidMetadata(path: path, detail: "is \(value.kindName), not an object of strings")
        }
        var pairs: [(key: String, value: String)] = []
        for member in members {
            guard let text = member.value.stringValue else {
                throw .invalidMetadata(path: path, detail: "value of \"\(member.key)\" is \(member.value.kindName), not a string")
            }
            pairs.append((member.key, text))
        }
        return pairs
    }

    private static func parseEntry(_ member: JSONMember, path: String) throws(SafeTensorsError) -> SafeTensorsEntry {
        let name = member.key
        guard let fields = member.value.objectMembers else {
            throw .invalidEntry(path: path, tensor: name, detail: "is \(member.value.kindName), not an object")
        }
        for field in fields where !["dtype", "shape", "data_offsets"].contains(field.key) {
            throw .invalidEntry(path: path, tensor: name, detail: "unknown field \"\(field.key)\"")
        }
        guard let dtypeValue = member.value["dtype"] else {
            throw .invalidEntry(path: path, tensor: name, detail: "missing \"dtype\"")
        }
        guard let dtypeName = dtypeValue.stringValue else {
            throw .invalidEntry(path: path, tensor: name, detail: "\"dtype\" is \(dtypeValue.kindName), not a string")
        }
        guard let dtype = DType(rawValue: dtypeName) else {
            throw .unknownDType(path: path, tensor: name, dtype: dtypeName)
        }
        guard let shapeValues = member.value["shape"]?.arrayValues else {
            throw .invalidEntry(path: path, tensor: name, detail: "\"shape\" is missing or not an array")
        }
        var dimensions: [Int] = []
        for value in shapeValues {
            guard let dimension = value.integerValue, dimension >= 0 else {
                throw .invalidEntry(path: path, tensor: name, detail: "\"shape\" holds something other than non-negative integers")
            }
            dimensions.append(dimension)
        }
        guard let offsets = member.value["data_offsets"]?.arrayValues, offsets.count == 2,
            let begin = offsets[0].integerValue, let end = offsets[1].integerValue, begin >= 0, end >= 0
        else {
            throw .invalidEntry(path: path, tensor: name, detail: "\"data_offsets\" must be two non-negative integers")
        }
        guard end >= begin else {
            throw .invalidEntry(path: path, tensor: name, detail: "\"data_offsets\" end \(end) is before its start \(begin)")
        }
        let shape = Shape(dimensions)
        guard let bytes = shape.checkedByteCount(of: dtype) else {
            throw .shapeOverflow(path: path, tensor: name, shape: shape, dtype: dtype)
        }
        guard bytes == end - begin else {
            throw .sizeMismatch(path: path, tensor: name, shape: shape, dtype: dtype, expected: bytes, found: end - begin)
        }
        return SafeTensorsEntry(name: name, dtype: dtype, shape: shape, dataRange: begin..<end)
    }

    /// Sorts by offsets and checks that the tensors tile the data section exactly, as the
    /// reference does (files may list tensors in any order).
    private static func validateLayout(_ entries: inout [SafeTensorsEntry], dataSize: Int, path: String) throws(SafeTensorsError) {
        entries.sort { ($0.dataRange.lowerBound, $0.dataRange.upperBound) < ($1.dataRange.lowerBound, $1.dataRange.upperBound) }
        var position = 0
        for entry in entries {
            let range = entry.dataRange
            if range.lowerBound < position {
                throw .overlappingOffsets(path: path, tensor: entry.name, begin: range.lowerBound, previousEnd: position)
            }
            if range.lowerBound > position {
                throw .gapBeforeTensor(path: path, tensor: entry.name, begin: range.lowerBound, previousEnd: position)
            }
            if range.upperBound > dataSize {
                throw .dataPastEnd(path: path, tensor: entry.name, end: range.upperBound, dataSize: dataSize)
            }
            position = range.upperBound
        }
        guard position == dataSize else { throw .trailingData(path: path, covered: position, dataSize: dataSize) }
    }
}
