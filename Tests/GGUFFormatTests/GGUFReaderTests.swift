import GGUFFormat
import TensorCore
import Testing
import TestSupport

/// GGUFFile against what gguf-py's GGUFReader reads in the same files (fixtures/gguf/metadata.json).
struct GGUFReaderTests {
    static let files = ["metadata.gguf", "metadata-align64.gguf", "metadata-arrays.gguf"]

    @Test func metadataJSONDescribesTheThreeFiles() {
        #expect(GGUFGoldens.metadataJSON["files"]?.objectMembers?.map(\.key) == Self.files)
        #expect(GGUFGoldens.metadataJSON["versions"]?["gguf"]?.stringValue == "0.17.1")
    }

    @Test(arguments: files)
    func headerIsGGUFReaders(_ name: String) throws {
        let file = try GGUFFile(path: GGUFGoldens.path(name))
        let expected = GGUFGoldens.expected(name)
        #expect(file.version == UInt32(expected["version"]!.integerValue!))
        #expect(file.tensors.count == expected["tensor_count"]!.integerValue!)
        // metadata.json's kv_count is the file's own count (GGUFReader's GGUF.version,
        // GGUF.tensor_count and GGUF.kv_count pseudo-fields are left out of `kv`).
        #expect(file.metadata.count == expected["kv_count"]!.integerValue!)
        #expect(file.metadata.count == expected["kv"]!.arrayValues!.count)
        #expect(file.alignment == expected["alignment"]!.integerValue!)
        #expect(file.dataStart == expected["data_offset"]!.integerValue!)
        #expect(file.mapping.count == expected["file_size"]!.integerValue!)
    }

    @Test(arguments: files)
    func metadataIsGGUFReaders(_ name: String) throws {
        let file = try GGUFFile(path: GGUFGoldens.path(name))
        let expected = GGUFGoldens.expected(name)["kv"]!.arrayValues!
        #expect(file.metadata.entries.map(\.key) == expected.map { $0["key"]!.stringValue! })
        for (entry, want) in zip(file.metadata.entries, expected) {
            let key = entry.key
            #expect(file.metadata[key] == entry.value)
            #expect(entry.value.type.description.uppercased() == want["type"]!.stringValue!, "\(key)")
            if case .array(let elementType, let elements) = entry.value {
                #expect(elementType.description.uppercased() == want["element_type"]!.stringValue!, "\(key)")
                #expect(elements.count == want["count"]!.integerValue!, "\(key)")
                if let inner = want["inner_element_type"]?.stringValue {
                    guard case .array(let innerType, _)? = elements.first else {
                        Issue.record("\(key): the first element is not an array")
                        continue
                    }
                    #expect(innerType.description.uppercased() == inner, "\(key)")
                }
                if let contents = want["reader_contents"] {
                    // GGUFReader.contents() flattens nested arrays.
                    #expect(Self.matches(.array(.array, Self.leaves(entry.value)), contents), "\(key): reader_contents")
                }
            } else {
                #expect(want["element_type"] == nil, "\(key)")
            }
            #expect(Self.matches(entry.value, want["value"]!, text: want["value_text"]), "\(key): \(entry.value) vs \(want["value"]!)")
        }
    }

    /// The scalars of a value, nested arrays flattened.
    static func leaves(_ value: GGUFValue) -> [GGUFValue] {
        if case .array(_, let elements) = value { return elements.flatMap(leaves) }
        return [value]
    }

    /// A metadata value equals gguf-py's: integers exactly (64-bit ones by their decimal text),
    /// float32 and float64 bit for bit, strings and bools as they are, arrays element by element.
    static func matches(_ value: GGUFValue, _ json: JSONValue, text: JSONValue? = nil) -> Bool {
        switch value {
        case .array(_, let elements):
            guard let items = json.arrayValues, items.count == elements.count else { return false }
            let texts = text?.arrayValues
            if text != nil && texts?.count != elements.count { return false }
            return elements.indices.allSatisfy { matches(elements[$0], items[$0], text: texts?[$0]) }
        case .string(let s): return json.stringValue == s
        case .bool(let b): return json.boolValue == b
        case .float32(let v):
            guard let d = json.doubleValue, let f = Float(exactly: d) else { return false }
            return f.bitPattern == v.bitPattern
        case .float64(let v): return json.doubleValue?.bitPattern == v.bitPattern
        case .uint64(let v): return text?.stringValue == String(v) && numberText(json) == String(v)
        case .int64(let v): return text?.stringValue == String(v) && numberText(json) == String(v)
        case .uint8, .int8, .uint16, .int16, .uint32, .int32:
            return text == nil && json.integerValue != nil && json.integerValue == value.integer
        }
    }

    static func numberText(_ json: JSONValue) -> String? { if case .number(let text) = json { text } else { nil } }

    @Test(arguments: files)
    func tensorInfosAreGGUFReaders(_ name: String) throws {
        let file = try GGUFFile(path: GGUFGoldens.path(name))
        let expected = GGUFGoldens.expected(name)["tensors"]!.arrayValues!
        #expect(file.tensors.map(\.name) == expected.map { $0["name"]!.stringValue! })
        for (info, want) in zip(file.tensors, expected) {
            #expect(info.type.description == want["ggml_type"]!.stringValue!, "\(info.name)")
            #expect(info.type.rawValue == UInt32(want["ggml_type_id"]!.integerValue!), "\(info.name)")
            #expect(info.dimensions == want["ggml_dims"]!.arrayValues!.map { $0.integerValue! }, "\(info.name)")
            #expect(info.shape == Shape(want["shape"]!.arrayValues!.map { $0.integerValue! }), "\(info.name)")
            #expect(info.elementCount == want["n_elements"]!.integerValue!, "\(info.name)")
            #expect(info.offset == want["offset"]!.integerValue!, "\(info.name)")
            #expect(info.byteCount == want["n_bytes"]!.integerValue!, "\(info.name)")
            #expect(file.fileRange(info).lowerBound == want["absolute_offset"]!.integerValue!, "\(info.name)")
            #expect(file.info(info.name)?.offset == info.offset)
        }
        #expect(file.info("no such tensor") == nil)
    }

    @Test(arguments: files)
    func tensorValuesAreGGUFPysDequantization(_ name: String) throws {
        let file = try GGUFFile(path: GGUFGoldens.path(name))
        let expected = GGUFGoldens.expected(name)["tensors"]!.arrayValues!
        for (info, want) in zip(file.tensors, expected) {
            let tensor = try file.tensor(info)
            #expect(tensor.shape == info.shape, "\(info.name)")
            #expect(tensor.dtype == (info.type.plainDType ?? .f32), "\(info.name)")
            let values = want["values"]!.arrayValues!.map { Float(exactly: $0.doubleValue!)! }
            #expect(firstFloatDifference(floats(tensor), values) == nil, "\(info.name)")
            // Dequantizing is the same on one thread as on several.
            #expect(floats(try file.tensor(info, threads: 1)).map(\.bitPattern) == floats(tensor).map(\.bitPattern))
            #expect(file.rawTensor(info).byteCount == info.byteCount)
        }
    }

    /// A file whose tensor has a known type qtool does not dequantize: it opens, and asking for
    /// the tensor says which type.
    @Test func anUnsupportedTypeIsRefusedWhenTheTensorIsRead() throws {
        var builder = GGUFBuilder()
        builder.addTensor("iq", dimensions: [256], type: GGMLType.iq2_XXS.rawValue, offset: 0)
        builder.data = [UInt8](repeating: 0, count: 66)
        guard case .opened(let file) = openGGUF(builder.bytes) else {
            Issue.record("refused")
            return
        }
        #expect(file.tensors.first?.type == .iq2_XXS && file.tensors.first?.byteCount == 66)
        #expect(throws: GGUFError.unsupportedType(path: file.path, tensor: "iq", type: "IQ2_XXS")) { try file.tensor(file.tensors[0]) }
    }

    /// Tensors of zero elements, and a file with no tensors at all, read.
    @Test func emptyTensorsAndFilesRead() throws {
        var builder = GGUFBuilder()
        builder.add(key: "general.architecture", type: .string, ggufString("llama"))
        builder.addTensor("empty_q8", dimensions: [32, 0], type: GGMLType.q8_0.rawValue, offset: 0)
        builder.addTensor("empty_f32", dimensions: [0], type: GGMLType.f32.rawValue, offset: 0)
        guard case .opened(let file) = openGGUF(builder.bytes) else {
            Issue.record("refused")
            return
        }
        #expect(file.tensors.map(\.byteCount) == [0, 0])
        #expect(try file.tensor(file.tensors[0]).shape == [0, 32])
        #expect(try file.tensor(file.tensors[1]).elementCount == 0)

        var none = GGUFBuilder()
        none.add(key: "general.architecture", type: .string, ggufString("llama"))
        guard case .opened(let bare) = openGGUF(none.bytes) else {
            Issue.record("refused")
            return
        }
        #expect(bare.tensors.isEmpty && bare.metadata["general.architecture"] == .string("llama"))
    }

    /// Arrays nested as deep as the limit read; one level more is refused (the malformed tests).
    @Test func arraysNestedToTheLimitRead() throws {
        var builder = GGUFBuilder()
        builder.add(key: "nested", type: .array, GGUFMalformedTests.nestedArray(depth: 8))
        guard case .opened(let file) = openGGUF(builder.bytes) else {
            Issue.record("refused")
            return
        }
        var value = file.metadata["nested"]
        var depth = 0
        while case .array(_, let elements)? = value {
            depth += 1
            value = elements.first
        }
        #expect(depth == 8)
    }

    /// Version 2 files read as version 3 ones do (the layout is the same).
    @Test func version2Reads() throws {
        var bytes = Fixtures.bytes(GGUFGoldens.path("metadata.gguf"))
        bytes.put(UInt32(2), at: 4)
        guard case .opened(let file) = openGGUF(bytes) else {
            Issue.record("refused")
            return
        }
        #expect(file.version == 2 && file.tensors.count == 7)
    }
}
