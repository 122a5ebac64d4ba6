import GGUFFormat
import TensorCore
import Testing
import TestSupport

/// Every rule of the reader with a broken file: metadata.gguf (gguf-py's) with one field changed,
/// or a header built by hand. Each must be refused with a GGUFError that names the file, never a
/// crash.
struct GGUFMalformedTests {
    static let original = Fixtures.bytes(GGUFGoldens.path("metadata.gguf"))
    static let layout = GGUFLayout(original)
    static let aligned64 = Fixtures.bytes(GGUFGoldens.path("metadata-align64.gguf"))
    static let layout64 = GGUFLayout(aligned64)
    static let dataStart = GGUFGoldens.expected("metadata.gguf")["data_offset"]!.integerValue!

    /// metadata.gguf with `edit` applied.
    static func edited(_ edit: (inout [UInt8], GGUFLayout) -> Void) -> [UInt8] {
        var bytes = original
        edit(&bytes, layout)
        return bytes
    }

    /// metadata-align64.gguf with its general.alignment (a u32) set to `value`.
    static func alignment(_ value: UInt32) -> [UInt8] {
        var bytes = aligned64
        bytes.put(value, at: layout64.entries["general.alignment"]!.value)
        return bytes
    }

    /// A file of one F32 tensor "t" of `dimensions` at `offset`, with `data` bytes of data.
    static func oneTensor(dimensions: [UInt64], type: GGMLType = .f32, offset: UInt64 = 0, data: Int = 64) -> [UInt8] {
        var builder = GGUFBuilder()
        builder.add(key: "general.architecture", type: .string, ggufString("llama"))
        builder.addTensor("t", dimensions: dimensions, type: type.rawValue, offset: offset)
        builder.data = [UInt8](repeating: 0, count: data)
        return builder.bytes
    }

    /// An array value nested `depth` arrays deep (the innermost an empty array of int32).
    static func nestedArray(depth: Int) -> [UInt8] {
        var bytes: [UInt8] = []
        for level in 0..<depth {
            let innermost = level == depth - 1
            bytes += le(innermost ? GGUFValueType.int32.rawValue : GGUFValueType.array.rawValue) + le(UInt64(innermost ? 0 : 1))
        }
        return bytes
    }

    /// One key of type `type` and value bytes `value` in a file of its own.
    static func oneKey(_ key: [UInt8] = Array("k".utf8), type: UInt32, _ value: [UInt8]) -> [UInt8] {
        var builder = GGUFBuilder()
        builder.entries.append(ggufString(key) + le(type) + value)
        return builder.bytes
    }

    /// (what is wrong, "the GGUFError case: words its problem says", the file's bytes)
    static let cases: [(String, String, @Sendable () -> [UInt8])] = [
        ("empty file", "notGGUF: bad magic", { [] }),
        ("bad magic", "notGGUF: bad magic", { edited { bytes, _ in bytes[0] = UInt8(ascii: "X") } }),
        ("a safetensors header", "notGGUF: bad magic", { Array(#"{"__metadata__":{}}"#.utf8) }),
        (
            "big-endian magic and version", "invalidHeader: big-endian",
            {
                edited { bytes, _ in
                    bytes.replaceSubrange(0..<4, with: Array("FUGG".utf8))
                    bytes.replaceSubrange(4..<8, with: [0, 0, 0, 3])
                }
            }
        ),
        ("big-endian version", "invalidHeader: big-endian", { edited { bytes, _ in bytes.replaceSubrange(4..<8, with: [0, 0, 0, 3]) } }),
        ("version 1", "unsupportedVersion: version 1;", { edited { bytes, _ in bytes.put(UInt32(1), at: 4) } }),
        ("version 4", "unsupportedVersion: version 4;", { edited { bytes, _ in bytes.put(UInt32(4), at: 4) } }),
        ("version 0", "unsupportedVersion: version 0;", { edited { bytes, _ in bytes.put(UInt32(0), at: 4) } }),
        (
            "tensor count the file cannot hold", "invalidHeader: could hold",
            { edited { bytes, layout in bytes.put(UInt64(original.count), at: layout.tensorCount) } }
        ),
        (
            "tensor count 2^64 - 1", "invalidHeader: could hold",
            { edited { bytes, layout in bytes.put(UInt64.max, at: layout.tensorCount) } }
        ),
        (
            "kv count the file cannot hold", "invalidHeader: could hold",
            { edited { bytes, layout in bytes.put(UInt64(original.count), at: layout.keyCount) } }
        ),
        ("kv count 2^64 - 1", "invalidHeader: could hold", { edited { bytes, layout in bytes.put(UInt64.max, at: layout.keyCount) } }),
        (
            "kv count one more than there are", "truncated|invalidHeader|invalidMetadata|invalidTensor",
            // The first tensor info then reads as a key ("f32_1d" of type 1, its rank: an int8),
            // and the tensor infos from the wrong place.
            { edited { bytes, layout in bytes.put(UInt64(32), at: layout.keyCount) } }
        ),
        ("cut in the tensor data", "truncated: ends past the file's 444 bytes", { Array(original.dropLast(100)) }),
        ("cut one byte short", "truncated: ends past the file's 543 bytes", { Array(original.dropLast(1)) }),
        (
            "a key's length past the end", "truncated: runs past the end",
            { edited { bytes, layout in bytes.put(UInt64(original.count), at: layout.entries["test.string"]!.key) } }
        ),
        (
            "a key's length 2^64 - 1", "truncated: runs past the end",
            { edited { bytes, layout in bytes.put(UInt64.max, at: layout.entries["general.name"]!.key) } }
        ),
        (
            "a string value's length past the end", "truncated: runs past the end",
            { edited { bytes, layout in bytes.put(UInt64(original.count), at: layout.entries["test.string"]!.value) } }
        ),
        (
            "a tensor name's length past the end", "truncated: runs past the end",
            { edited { bytes, layout in bytes.put(UInt64(1 << 40), at: layout.tensors["f32_3d"]!.name) } }
        ),
        (
            "invalid UTF-8 in a key", "invalidHeader: not valid UTF-8",
            { edited { bytes, layout in bytes[layout.entries["test.uint8"]!.key + 8 + 2] = 0xFF } }
        ),
        (
            "a lone continuation byte in a key", "invalidHeader: not valid UTF-8",
            { edited { bytes, layout in bytes[layout.entries["test.uint8"]!.key + 8] = 0x80 } }
        ),
        (
            "an overlong encoding in a string value", "invalidHeader: not valid UTF-8",
            {
                edited { bytes, layout in
                    bytes.replaceSubrange(
                        (layout.entries["test.string"]!.value + 8)..<(layout.entries["test.string"]!.value + 10), with: [0xC0, 0xAF])
                }
            }
        ),
        (
            "a surrogate in a string array", "invalidHeader: not valid UTF-8",
            {
                // "ünïcödé" is the third element: after "a" (9 bytes) and "" (8 bytes).
                edited { bytes, layout in
                    let element = layout.entries["test.array_string"]!.value + 12 + 9 + 8 + 8
                    bytes.replaceSubrange(element..<(element + 3), with: [0xED, 0xA0, 0x80])
                }
            }
        ),
        (
            "invalid UTF-8 in a tensor name", "invalidHeader: not valid UTF-8",
            { edited { bytes, layout in bytes[layout.tensors["q8_0_2d"]!.name + 8] = 0xFE } }
        ),
        ("an empty key", "invalidMetadata: empty key", { oneKey([], type: GGUFValueType.uint8.rawValue, [1]) }),
        (
            "a duplicate key", "invalidMetadata: appears twice",
            {
                edited { bytes, layout in
                    // test.uint16 renamed test.uint32, which comes later.
                    bytes.replaceSubrange(
                        (layout.entries["test.uint16"]!.key + 8)..<(layout.entries["test.uint16"]!.key + 19),
                        with: Array("test.uint32".utf8))
                }
            }
        ),
        (
            "a duplicate tensor name", "invalidTensor: appears twice",
            {
                edited { bytes, layout in
                    bytes.replaceSubrange(
                        (layout.tensors["f32_2d"]!.name + 8)..<(layout.tensors["f32_2d"]!.name + 14), with: Array("f32_1d".utf8))
                }
            }
        ),
        (
            "a tensor name of 64 bytes", "invalidTensor: longer than 63 bytes",
            {
                var builder = GGUFBuilder()
                builder.addTensor(String(repeating: "x", count: 64), dimensions: [4], type: 0, offset: 0)
                builder.data = [UInt8](repeating: 0, count: 16)
                return builder.bytes
            }
        ),
        (
            "unknown value type 13", "invalidMetadata: unknown value type",
            { edited { bytes, layout in bytes.put(UInt32(13), at: layout.entries["test.uint32"]!.type) } }
        ),
        ("unknown value type 2^32 - 1", "invalidMetadata: unknown value type", { oneKey(type: UInt32.max, [0, 0, 0, 0]) }),
        (
            "unknown array element type", "invalidMetadata: unknown array element type",
            { edited { bytes, layout in bytes.put(UInt32(13), at: layout.entries["test.array_int32"]!.value) } }
        ),
        (
            "an array count past the end", "truncated: runs past the end",
            { edited { bytes, layout in bytes.put(UInt64(1 << 40), at: layout.entries["test.array_int64"]!.value + 4) } }
        ),
        (
            "an array of strings whose count the file cannot hold", "truncated: runs past the end",
            { edited { bytes, layout in bytes.put(UInt64(original.count), at: layout.entries["test.array_string"]!.value + 4) } }
        ),
        (
            "bool byte 2", "invalidMetadata: neither 0 nor 1",
            { edited { bytes, layout in bytes[layout.entries["test.bool_true"]!.value] = 2 } }
        ),
        (
            "bool byte 255 in an array", "invalidMetadata: neither 0 nor 1",
            { edited { bytes, layout in bytes[layout.entries["test.array_bool"]!.value + 12] = 255 } }
        ),
        (
            "arrays nested 9 deep", "invalidMetadata: nested more than 8 deep",
            { oneKey(type: GGUFValueType.array.rawValue, nestedArray(depth: 9)) }
        ),
        (
            "arrays nested 10000 deep", "invalidMetadata: nested more than 8 deep",
            { oneKey(type: GGUFValueType.array.rawValue, nestedArray(depth: 10000)) }
        ),
        (
            "general.alignment an int32", "invalidMetadata: must be a uint32",
            {
                var bytes = aligned64
                bytes.put(GGUFValueType.int32.rawValue, at: layout64.entries["general.alignment"]!.type)
                return bytes
            }
        ),
        (
            "general.alignment a string", "invalidMetadata: must be a uint32",
            {
                var builder = GGUFBuilder()
                builder.add(key: "general.alignment", type: .string, ggufString("32"))
                return builder.bytes
            }
        ),
        ("general.alignment 0", "invalidMetadata: is not a power of two up to 1 MiB", { alignment(0) }),
        ("general.alignment 3", "invalidMetadata: is not a power of two up to 1 MiB", { alignment(3) }),
        ("general.alignment 48", "invalidMetadata: is not a power of two up to 1 MiB", { alignment(48) }),
        ("general.alignment 2^21", "invalidMetadata: is not a power of two up to 1 MiB", { alignment(1 << 21) }),
        ("general.alignment 2^31", "invalidMetadata: is not a power of two up to 1 MiB", { alignment(1 << 31) }),
        ("general.alignment 2^32 - 1", "invalidMetadata: is not a power of two up to 1 MiB", { alignment(UInt32.max) }),
        ("n_dims 0", "invalidTensor: (ggml tensors have 1 to 4)", { oneTensor(dimensions: []) }),
        ("n_dims 5", "invalidTensor: (ggml tensors have 1 to 4)", { oneTensor(dimensions: [1, 1, 1, 1, 1]) }),
        (
            "n_dims 2^32 - 1", "invalidTensor: (ggml tensors have 1 to 4)",
            { edited { bytes, layout in bytes.put(UInt32.max, at: layout.tensors["f32_2d"]!.rank) } }
        ),
        (
            "unknown ggml type 4 (the removed Q4_2)", "invalidTensor: unknown ggml type",
            { edited { bytes, layout in bytes.put(UInt32(4), at: layout.tensors["q8_0_2d"]!.type) } }
        ),
        (
            "unknown ggml type 40", "invalidTensor: unknown ggml type",
            { edited { bytes, layout in bytes.put(UInt32(40), at: layout.tensors["f32_1d"]!.type) } }
        ),
        (
            "unknown ggml type 2^32 - 1", "invalidTensor: unknown ggml type",
            { edited { bytes, layout in bytes.put(UInt32.max, at: layout.tensors["f32_1d"]!.type) } }
        ),
        (
            "a Q8_0 row of 48", "invalidTensor: is not a multiple of",
            { edited { bytes, layout in bytes.put(UInt64(48), at: layout.tensors["q8_0_2d"]!.dimensions[0]) } }
        ),
        ("a Q4_K row of 32", "invalidTensor: is not a multiple of", { oneTensor(dimensions: [32], type: .q4_K, data: 144) }),
        (
            "an offset not a multiple of the alignment", "invalidTensor: is not a multiple of the alignment",
            { edited { bytes, layout in bytes.put(UInt64(36), at: layout.tensors["f32_2d"]!.offset) } }
        ),
        (
            "an offset not a multiple of alignment 64", "invalidTensor: is not a multiple of the alignment",
            {
                var bytes = aligned64
                bytes.put(UInt64(32), at: layout64.tensors["f32_2d"]!.offset)
                return bytes
            }
        ),
        (
            "an offset past the end", "truncated: ends past the file's",
            { edited { bytes, layout in bytes.put(UInt64(1 << 20), at: layout.tensors["f32_3d"]!.offset) } }
        ),
        (
            "a tensor ending past the end", "truncated: ends past the file's",
            {
                // f32_3d (96 bytes, the last) moved to end 32 bytes past the data.
                edited { bytes, layout in bytes.put(UInt64(original.count - dataStart - 64), at: layout.tensors["f32_3d"]!.offset) }
            }
        ),
        (
            "an offset beyond Int", "invalidTensor: is out of range",
            { edited { bytes, layout in bytes.put(UInt64.max - 31, at: layout.tensors["f32_3d"]!.offset) } }
        ),
        (
            "an offset whose end overflows", "truncated: ends past the file's",
            { edited { bytes, layout in bytes.put(UInt64(Int.max) - 31, at: layout.tensors["f32_3d"]!.offset) } }
        ),
        (
            "two tensors overlapping", "invalidTensor: overlaps",
            { edited { bytes, layout in bytes.put(UInt64(0), at: layout.tensors["f32_2d"]!.offset) } }
        ),
        (
            "a tensor inside another", "invalidTensor: overlaps",
            { edited { bytes, layout in bytes.put(UInt64(96), at: layout.tensors["f32_1d"]!.offset) } }
        ),
        ("a dimension beyond Int", "invalidTensor: is out of range", { oneTensor(dimensions: [4, UInt64.max]) }),
        ("dimensions whose byte count overflows", "invalidTensor: overflows", { oneTensor(dimensions: [1 << 40, 1 << 40]) }),
        ("a row whose byte count overflows", "invalidTensor: overflows", { oneTensor(dimensions: [1 << 62]) }),
        // The size is 0, but the element count (and the torch shape's) would trap.
        (
            "dimensions whose element count overflows beside a 0", "invalidTensor: overflows",
            { oneTensor(dimensions: [1 << 40, 1 << 40, 0]) }
        ),
        ("a 0 before dimensions whose product overflows", "invalidTensor: overflows", { oneTensor(dimensions: [0, 1 << 40, 1 << 40]) }),
        (
            "Q8_0 dimensions whose element count overflows beside a 0", "invalidTensor: overflows",
            { oneTensor(dimensions: [1 << 40, 1 << 30, 0], type: .q8_0) }
        ),
        (
            "dimensions whose product overflows in gguf-py's file", "invalidTensor: overflows",
            { edited { bytes, layout in bytes.put(UInt64(1) << 62, at: layout.tensors["f32_3d"]!.dimensions[2]) } }
        ),
    ]

    /// `expected` holds the error cases allowed; `fragment`, words the problem must contain.
    static func expectRefused(_ bytes: [UInt8], as expected: Set<String>, saying fragment: String? = nil, _ what: String) {
        switch openGGUF(bytes) {
        case .opened:
            Issue.record("\(what): accepted")
        case .otherError(let description):
            Issue.record("\(what): not a GGUFError: \(description)")
        case .refused(let error, let path):
            #expect(expected.contains(caseName(error)), "\(what): \(error)")
            if let fragment { #expect(error.problem.contains(fragment), "\(what): \(error)") }
            #expect(error.path == path, "\(what)")
            #expect(error.description.hasPrefix(path + ": "), "\(what): \(error.description)")
        }
    }

    @Test(arguments: cases.map { ($0.0, $0.1) })
    func brokenFileIsRefused(_ description: String, _ expected: String) {
        let bytes = Self.cases.first { $0.0 == description }!.2()
        // "case|case: words of the problem"
        let parts = expected.split(separator: ":", maxSplits: 1)
        let cases = Set(parts[0].split(separator: "|").map(String.init))
        let fragment = parts.count > 1 ? String(parts[1].dropFirst()) : nil
        Self.expectRefused(bytes, as: cases, saying: fragment, description)
    }

    /// The layout walk found every field (else the cases above would edit the wrong bytes).
    @Test func theLayoutWalkFindsEveryField() {
        let layout = Self.layout
        #expect(layout.entries.count == 31 && layout.tensorOrder.count == 7)
        #expect(Self.dataStart == (layout.headerEnd + 31) / 32 * 32)
        #expect(Self.layout64.entries["general.alignment"] != nil)
    }

    /// metadata.gguf cut at every byte of its header and padding, and at points in its data: each
    /// is refused as truncated (or, where a count can no longer fit, as an invalid header).
    @Test func truncatedAtEveryCutIsRefused() {
        let cuts = Array(0...Self.dataStart) + stride(from: Self.dataStart + 1, to: Self.original.count, by: 7)
        for cut in cuts {
            let expected: Set<String> = cut < 4 ? ["notGGUF"] : ["truncated", "invalidHeader"]
            Self.expectRefused(Array(Self.original[..<cut]), as: expected, "cut at \(cut)")
        }
    }

    /// Single bytes of the header changed to each of a few values: refused or read, never a crash.
    @Test func everyHeaderByteChangedIsHandled() {
        for position in 0..<Self.dataStart {
            for value: UInt8 in [0x00, 0x01, 0x7F, 0x80, 0xFF] where Self.original[position] != value {
                var bytes = Self.original
                bytes[position] = value
                switch openGGUF(bytes) {
                case .opened(let file):
                    // What reads must dequantize.
                    for info in file.tensors where info.type.isDequantizable { _ = try? file.tensor(info) }
                case .refused(let error, let path):
                    #expect(error.path == path)
                case .otherError(let description):
                    Issue.record("byte \(position) = \(value): \(description)")
                }
            }
        }
    }
}
