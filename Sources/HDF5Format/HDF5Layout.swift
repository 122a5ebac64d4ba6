import TensorCore

/// An attribute of a group or dataset: numbers or strings, scalar or an array.
public struct HDF5Attribute: Sendable, Equatable {
    public enum Values: Sendable, Equatable {
        /// Numbers of `DType`, as JSON number texts (exact for every integer and float).
        case numbers(DType, [String])
        /// Strings: variable-length (`fixedSize` nil, as h5py writes `str`) or fixed-size (numpy `S`).
        case strings([String], fixedSize: Int?, utf8: Bool)
    }

    public let name: String
    /// `[]` for a scalar.
    public let shape: [Int]
    public let values: Values
}

/// What a tensor checkpoint needs to be written back as the same HDF5 file: every group (empty
/// ones too) with its attributes, and each dataset's path and attributes. It travels as JSON in
/// safetensors' `__metadata__` under `hdf5_layout`.
public struct HDF5Layout: Sendable, Equatable {
    public struct Group: Sendable, Equatable {
        public let path: String
        public let attributes: [HDF5Attribute]
    }

    public struct DatasetEntry: Sendable, Equatable {
        public let tensor: String
        public let path: String
        public let attributes: [HDF5Attribute]
    }

    public static let metadataKey = "hdf5_layout"

    public var groups: [Group]
    public var datasets: [DatasetEntry]

    public init(groups: [Group], datasets: [DatasetEntry]) {
        self.groups = groups
        self.datasets = datasets
    }

    // MARK: JSON

    public var json: JSONValue {
        .object([
            JSONMember(key: "version", value: .integer(1)),
            JSONMember(
                key: "groups",
                value: .array(
                    groups.map { group in
                        .object([
                            JSONMember(key: "path", value: .string(group.path)),
                            JSONMember(key: "attrs", value: .array(group.attributes.map(Self.json))),
                        ])
                    })),
            JSONMember(
                key: "datasets",
                value: .array(
                    datasets.map { entry in
                        .object([
                            JSONMember(key: "tensor", value: .string(entry.tensor)),
                            JSONMember(key: "path", value: .string(entry.path)),
                            JSONMember(key: "attrs", value: .array(entry.attributes.map(Self.json))),
                        ])
                    })),
        ])
    }

    static func json(_ attribute: HDF5Attribute) -> JSONValue {
        var members = [
            JSONMember(key: "name", value: .string(attribute.name)),
            JSONMember(key: "shape", value: .array(attribute.shape.map(JSONValue.integer))),
        ]
        switch attribute.values {
        case .numbers(let dtype, let texts):
            members.append(JSONMember(key: "type", value: .string(dtype.rawValue)))
            members.append(
                JSONMember(key: "values", value: .array(texts.map { Double($0)?.isFinite == false ? .string($0) : .number($0) })))
        case .strings(let strings, let fixedSize, let utf8):
            members.append(JSONMember(key: "type", value: .string(fixedSize.map { "S\($0)" } ?? "str")))
            members.append(JSONMember(key: "utf8", value: .bool(utf8)))
            members.append(JSONMember(key: "values", value: .array(strings.map(JSONValue.string))))
        }
        return .object(members)
    }

    public init(json: JSONValue, path: String) throws(HDF5Error) {
        func fail(_ problem: String) -> HDF5Error { .invalidLayout(path: path, problem: problem) }
        guard json["version"]?.integerValue == 1 else { throw fail("unknown version") }
        guard let groupValues = json["groups"]?.arrayValues, let datasetValues = json["datasets"]?.arrayValues else {
            throw fail("groups and datasets must be arrays")
        }
        groups = []
        for value in groupValues {
            guard let groupPath = value["path"]?.stringValue, groupPath.hasPrefix("/") else { throw fail("a group without a path") }
            groups.append(Group(path: groupPath, attributes: try Self.attributes(value["attrs"], fail)))
        }
        datasets = []
        for value in datasetValues {
            guard let tensor = value["tensor"]?.stringValue, let datasetPath = value["path"]?.stringValue, datasetPath.hasPrefix("/") else {
                throw fail("a dataset without a tensor name or path")
            }
            datasets.append(DatasetEntry(tensor: tensor, path: datasetPath, attributes: try Self.attributes(value["attrs"], fail)))
        }
    }

    static func attributes(_ value: JSONValue?, _ fail: (String) -> HDF5Error) throws(HDF5Error) -> [HDF5Attribute] {
        guard let items = value?.arrayValues else { throw fail("attrs must be an array") }
        var out: [HDF5Attribute] = []
        for item in items {
            guard let name = item["name"]?.stringValue, let type = item["type"]?.stringValue,
                let shape = item["shape"]?.arrayValues?.compactMap(\.integerValue), let values = item["values"]?.arrayValues
            else { throw fail("a malformed attribute") }
            guard values.count == shape.reduce(1, *) else { throw fail("attribute '\(name)': \(values.count) values for shape \(shape)") }
            if type == "str" || type.hasPrefix("S") {
                let strings = values.compactMap(\.stringValue)
                guard strings.count == values.count else { throw fail("attribute '\(name)': values must be strings") }
                let fixed = type == "str" ? nil : Int(type.dropFirst())
                guard type == "str" || (fixed ?? 0) > 0 else { throw fail("attribute '\(name)': bad string size") }
                out.append(
                    HDF5Attribute(
                        name: name, shape: shape, values: .strings(strings, fixedSize: fixed, utf8: item["utf8"]?.boolValue ?? true)))
            } else {
                guard let dtype = DType(rawValue: type), HDF5ElementType.writable.contains(dtype) else {
                    throw fail("attribute '\(name)': unknown type \(type)")
                }
                let texts = values.compactMap { value -> String? in
                    if case .number(let text) = value { return text }
                    return value.stringValue
                }
                guard texts.count == values.count else { throw fail("attribute '\(name)': values must be numbers") }
                out.append(HDF5Attribute(name: name, shape: shape, values: .numbers(dtype, texts)))
            }
        }
        return out
    }
}

/// Reading and writing attributes through the wrappers of `HDF5`.
enum HDF5Attributes {
    /// The attributes of `object`. One libhdf5 cannot read is an error (nothing is dropped
    /// silently); one of a type qtool does not carry (compound, reference, …) is skipped and
    /// listed in `skipped`. Every size is checked before anything is allocated for it.
    static func read(_ object: HDF5Handle, objectPath: String, file: String, skipped: inout [HDF5Skipped]) throws(HDF5Error)
        -> [HDF5Attribute]
    {
        let count = try HDF5.mapped({ .cannotRead(path: file, object: objectPath, reason: $0) }) { () throws(HDF5CallError) in
            try HDF5.attributeCount(object)
        }
        var out: [HDF5Attribute] = []
        for index in 0..<count {
            let attribute = try HDF5.mapped({ .cannotRead(path: file, object: "\(objectPath) attribute #\(index)", reason: $0) }) {
                () throws(HDF5CallError) in try HDF5.openAttribute(object, index)
            }
            guard let name = try? HDF5.attributeName(attribute) else {
                throw .cannotRead(path: file, object: "\(objectPath) attribute #\(index)", reason: "its name cannot be read")
            }
            let where_ = "\(objectPath) attribute '\(name)'"
            func fail(_ reason: String) -> HDF5Error { .cannotRead(path: file, object: where_, reason: reason) }
            let (type, space, extent) = try HDF5.mapped(fail) { () throws(HDF5CallError) in
                let (type, space) = (try HDF5.attributeType(attribute), try HDF5.space(ofAttribute: attribute))
                return (type, space, try HDF5.extent(space))
            }
            var shape: [Int] = []
            switch extent {
            case .simple(let dims):
                for dim in dims {
                    guard let value = Int(exactly: dim) else { throw fail("a dimension of \(dim)") }
                    shape.append(value)
                }
            case .scalar: break
            case .null:
                skipped.append(HDF5Skipped(kind: .attribute, path: objectPath, name: name, reason: "has no value (a null dataspace)"))
                continue
            }
            let (elementSize, elementType) = try HDF5.mapped(fail) { () throws(HDF5CallError) in
                (try HDF5.typeSize(type), try HDF5ElementType.of(type))
            }
            guard let count = CheckedSize.product(shape), let bytes = CheckedSize.multiply(count, max(elementSize, 1)),
                bytes <= HDF5Limits.maximumAttributeBytes
            else {
                throw fail(
                    "declares shape \(shape) of \(elementSize)-byte values, over the limit of \(HDF5Limits.maximumAttributeBytes) bytes")
            }
            switch elementType {
            case .numeric(let dtype):
                var values = [UInt8](repeating: 0, count: max(1, count * dtype.bitSize / 8))
                try HDF5.mapped(fail) { () throws(HDF5CallError) in
                    try HDF5.read(attribute: attribute, as: try HDF5ElementType.memoryType(for: type, dtype: dtype), into: &values)
                }
                out.append(
                    HDF5Attribute(name: name, shape: shape, values: .numbers(dtype, numberTexts(values, dtype: dtype, count: count))))
            case .string:
                let (utf8, variable) = try HDF5.mapped(fail) { () throws(HDF5CallError) in
                    (try HDF5.isUTF8(type), try HDF5.isVariableString(type))
                }
                if variable {
                    let strings = try HDF5.mapped(fail) { () throws(HDF5CallError) in
                        try HDF5.readStrings(attribute: attribute, space: space, count: count, utf8: utf8)
                    }
                    guard strings.reduce(0, { $0 + $1.utf8.count }) <= HDF5Limits.maximumAttributeBytes else {
                        throw fail("its strings take more than \(HDF5Limits.maximumAttributeBytes) bytes")
                    }
                    out.append(HDF5Attribute(name: name, shape: shape, values: .strings(strings, fixedSize: nil, utf8: utf8)))
                } else {
                    var values = [UInt8](repeating: 0, count: max(1, bytes))
                    try HDF5.mapped(fail) { () throws(HDF5CallError) in try HDF5.read(attribute: attribute, as: type, into: &values) }
                    let strings = (0..<count).map { i in
                        String(decoding: values[(i * elementSize)..<((i + 1) * elementSize)].prefix { $0 != 0 }, as: UTF8.self)
                    }
                    out.append(HDF5Attribute(name: name, shape: shape, values: .strings(strings, fixedSize: elementSize, utf8: utf8)))
                }
            case .other(let what):
                skipped.append(
                    HDF5Skipped(kind: .attribute, path: objectPath, name: name, reason: "holds \(what), which qtool does not carry"))
            }
        }
        return out
    }

    static func numberTexts(_ bytes: [UInt8], dtype: DType, count: Int) -> [String] {
        bytes.withUnsafeBytes { raw in
            (0..<count).map { i -> String in
                let at = i * dtype.bitSize / 8
                switch dtype {
                case .f64: return "\(raw.loadUnaligned(fromByteOffset: at, as: Double.self))"
                case .f32: return "\(raw.loadUnaligned(fromByteOffset: at, as: Float.self))"
                case .f16, .bf16:
                    var value: Float = 0
                    withUnsafeMutablePointer(to: &value) {
                        FloatConversion.decodeToFloat32(raw.baseAddress! + at, dtype, from: 0, count: 1, into: $0)
                    }
                    return "\(value)"
                case .i8: return "\(raw.loadUnaligned(fromByteOffset: at, as: Int8.self))"
                case .i16: return "\(raw.loadUnaligned(fromByteOffset: at, as: Int16.self))"
                case .i32: return "\(raw.loadUnaligned(fromByteOffset: at, as: Int32.self))"
                case .i64: return "\(raw.loadUnaligned(fromByteOffset: at, as: Int64.self))"
                case .u8, .bool: return "\(raw.loadUnaligned(fromByteOffset: at, as: UInt8.self))"
                case .u16: return "\(raw.loadUnaligned(fromByteOffset: at, as: UInt16.self))"
                case .u32: return "\(raw.loadUnaligned(fromByteOffset: at, as: UInt32.self))"
                case .u64: return "\(raw.loadUnaligned(fromByteOffset: at, as: UInt64.self))"
                default: return "0"
                }
            }
        }
    }

    /// Writes `attributes` on `object`.
    static func write(_ attributes: [HDF5Attribute], on object: HDF5Handle) throws(HDF5CallError) {
        for attribute in attributes {
            switch attribute.values {
            case .numbers(let dtype, let texts):
                try HDF5.createAttribute(
                    attribute.name, on: object, type: try HDF5ElementType.fileType(for: dtype), shape: attribute.shape,
                    values: numberBytes(texts, dtype: dtype))
            case .strings(let strings, let fixedSize?, let utf8):
                var bytes = [UInt8](repeating: 0, count: max(1, attribute.shape.reduce(1, *) * fixedSize))
                for (i, string) in strings.enumerated() {
                    for (j, byte) in string.utf8.prefix(fixedSize).enumerated() { bytes[i * fixedSize + j] = byte }
                }
                try HDF5.createAttribute(
                    attribute.name, on: object, type: try HDF5.stringType(size: fixedSize, utf8: utf8), shape: attribute.shape,
                    values: bytes)
            case .strings(let strings, nil, let utf8):
                try HDF5.createAttribute(attribute.name, on: object, shape: attribute.shape, strings: strings, utf8: utf8)
            }
        }
    }

    static func numberBytes(_ texts: [String], dtype: DType) -> [UInt8] {
        var out: [UInt8] = []
        func append<T>(_ value: T) { withUnsafeBytes(of: value) { out.append(contentsOf: $0) } }
        for text in texts {
            let number = Double(text) ?? 0
            switch dtype {
            case .f64: append(number)
            case .f32: append(Float(text) ?? Float(number))
            case .f16, .bf16:
                var value = Float(text) ?? Float(number)
                var bits: UInt16 = 0
                withUnsafeMutableBytes(of: &bits) {
                    FloatConversion.encodeFromFloat32(&value, count: 1, into: $0.baseAddress!, dtype, at: 0)
                }
                append(bits)
            case .i8: append(Int8(text) ?? 0)
            case .i16: append(Int16(text) ?? 0)
            case .i32: append(Int32(text) ?? 0)
            case .i64: append(Int64(text) ?? 0)
            case .u8, .bool: append(UInt8(text) ?? 0)
            case .u16: append(UInt16(text) ?? 0)
            case .u32: append(UInt32(text) ?? 0)
            case .u64: append(UInt64(text) ?? 0)
            default: break
            }
        }
        return out.isEmpty ? [0] : out
    }
}
