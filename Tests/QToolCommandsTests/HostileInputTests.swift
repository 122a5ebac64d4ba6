import Foundation
import SafetensorsFormat
import Testing
import TestSupport

@testable import TensorCore

/// Files and arguments made to break qtool, one class of attack at a time. Each must end in
/// `error: <file>: …` with exit 2 (or 64 for a mistake in the arguments), promptly, within a
/// memory cap, with nothing left behind: never a crash, a hang, a blow-up or a wrong output.
struct HostileInputTests {
    /// Generous for these small inputs; far below what the attacks would take.
    static let memoryCap = 2 << 30
    static let model = Fixtures.path("tiny-llama")
    static let lora = Fixtures.path("lora/lora")

    /// Runs qtool with a memory cap and a time limit; expects `status` and, in stderr, `message`.
    @discardableResult
    static func expectFailure(
        _ arguments: [String], status: Int32 = 2, message: String, file: String? = nil,
        environment: [String: String] = [:], sourceLocation: SourceLocation = #_sourceLocation
    ) throws -> CommandResult {
        let result = try QToolBinary.run(arguments, environment: environment, timeout: 60, memoryLimit: memoryCap)
        #expect(result.status == status, "\(arguments): \(result.stderr)", sourceLocation: sourceLocation)
        #expect(result.stderr.contains(message), "\(arguments): \(result.stderr)", sourceLocation: sourceLocation)
        if status == 2, let file {
            #expect(result.stderr.hasPrefix("error: \(file): "), "\(result.stderr)", sourceLocation: sourceLocation)
        }
        return result
    }

    // MARK: Adapters: numbers and types from adapter_config.json and the adapter's tensors

    /// The bundled adapter with its config edited (and optionally its tensors).
    static func adapter(editing edit: (inout [JSONMember]) -> Void, tensors: ((inout [(String, Tensor)]) -> Void)? = nil) throws -> String {
        let folder = Fixtures.temporaryFolder() + "/adapter"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        var config = try JSONParser.parse(String(decoding: Fixtures.bytes(lora + "/adapter_config.json"), as: UTF8.self)).objectMembers!
        edit(&config)
        try Data(JSONValue.object(config).serialized().utf8).write(to: URL(fileURLWithPath: folder + "/adapter_config.json"))
        var entries = try SafeTensorsFile(path: lora + "/adapter_model.safetensors").tensors().entries.map { ($0.name, $0.tensor) }
        tensors?(&entries)
        try SafeTensorsWriter.write(
            entries.map { .init(name: $0.0, payload: $0.1) }, metadata: nil, toFile: folder + "/adapter_model.safetensors")
        return folder
    }

    static func set(_ key: String, _ value: JSONValue) -> (inout [JSONMember]) -> Void {
        { members in
            members.removeAll { $0.key == key }
            members.append(JSONMember(key: key, value: value))
        }
    }

    @Test(arguments: [
        ("r", JSONValue.number("1e19"), "r must be a positive integer up to"),
        ("r", .number("18446744073709551616"), "r must be a positive integer up to"),
        ("rank_pattern", .object([JSONMember(key: "q_proj", value: .number("1e19"))]), "must be a positive integer up to"),
        ("lora_alpha", .number("1e300"), "is not a finite float32 scale"),
        ("rank_pattern", .object([JSONMember(key: "(q)\\1", value: .number("8"))]), "backreferences are not supported"),
    ])
    func hostileNumbersInAdapterConfigs(_ key: String, _ value: JSONValue, _ message: String) throws {
        let adapter = try Self.adapter(editing: Self.set(key, value))
        let out = Fixtures.temporaryFolder()
        try Self.expectFailure(["merge", Self.model, "--adapter", adapter, "-o", out + "/m"], message: message, file: adapter)
        #expect(Fixtures.listing(out).isEmpty)
    }

    /// A key that backtracking engines take exponential time on merges at once (and matches
    /// nothing, so the merge equals the plain one).
    @Test func catastrophicPatternKeysMergeAtOnce() throws {
        let adapter = try Self.adapter(editing: Self.set("rank_pattern", .object([JSONMember(key: "(.*)*X", value: .number("3"))])))
        let out = Fixtures.temporaryFolder()
        let result = try QToolBinary.run(["merge", Self.model, "--adapter", adapter, "-o", out + "/a", "--quiet"], timeout: 60)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(try QToolBinary.run(["merge", Self.model, "--adapter", Self.lora, "-o", out + "/b", "--quiet"]).status == 0)
        #expect(Fixtures.bytes(out + "/a/model.safetensors") == Fixtures.bytes(out + "/b/model.safetensors"))
    }

    @Test func aFactorStoredAsIntegersIsRefused() throws {
        let adapter = try Self.adapter(editing: { _ in }) { entries in
            let index = entries.firstIndex { $0.0.hasSuffix("lora_A.weight") }!
            let factor = entries[index].1
            entries[index].1 = factor.withBytes { Tensor(dtype: .i32, shape: factor.shape, copying: $0) }
        }
        try Self.expectFailure(
            ["merge", Self.model, "--adapter", adapter, "-o", Fixtures.temporaryFolder() + "/m"],
            message: "LoRA factors must be floating point", file: adapter)
    }

    @Test func mlxScaleBeyondFloat32IsRefused() throws {
        let folder = Fixtures.temporaryFolder() + "/mlx"
        try FileManager.default.copyItem(atPath: Fixtures.path("lora/mlx-lora"), toPath: folder)
        var config = try JSONParser.parse(String(decoding: Fixtures.bytes(folder + "/adapter_config.json"), as: UTF8.self)).objectMembers!
        let index = config.firstIndex { $0.key == "lora_parameters" }!
        var parameters = config[index].value.objectMembers!
        parameters.removeAll { $0.key == "scale" }
        parameters.append(JSONMember(key: "scale", value: .number("1e39")))
        config[index].value = .object(parameters)
        try Data(JSONValue.object(config).serialized().utf8).write(to: URL(fileURLWithPath: folder + "/adapter_config.json"))
        try Self.expectFailure(
            ["merge", Self.model, "--adapter", folder, "-o", Fixtures.temporaryFolder() + "/m"], message: "beyond float32's range",
            file: folder)
    }

    /// Scale times weight overflows float32; a scale that fits float32 but not the output type
    /// gives infinities, which are refused rather than written.
    @Test func mergesThatOverflowAreRefused() throws {
        let big = try Self.adapter(editing: Self.set("lora_alpha", .number("1e36")))
        try Self.expectFailure(
            ["merge", Self.model, "--adapter", big + "=1e10", "-o", Fixtures.temporaryFolder() + "/m"], message: "overflows float32",
            file: big)
        let out = Fixtures.temporaryFolder()
        try Self.expectFailure(
            ["merge", Self.model, "--adapter", big, "-o", out + "/m", "--dtype", "f16"], message: "not finite in F16", file: big)
        #expect(Fixtures.listing(out).isEmpty)
    }

    // MARK: Bases of types a merge cannot compute in or write

    /// The bundled model with one adapted weight stored as `dtype` (its bytes reinterpreted).
    static func base(with dtype: DType) throws -> String {
        let folder = Fixtures.temporaryFolder() + "/base"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let name = "model.layers.0.self_attn.q_proj.weight"
        let items = try SafeTensorsFile(path: Self.model + "/model.safetensors").tensors().entries.map { entry -> SafeTensorsWriter.Item in
            guard entry.name == name else { return .init(name: entry.name, payload: entry.tensor) }
            let count = entry.tensor.elementCount
            let byteCount = count * dtype.bitSize / 8
            // Small values in every format (0x30 is 0.125 in E4M3; F4 codes 0x11 are 0.5 pairs).
            let fill: UInt8 = dtype == .f4 ? 0x11 : 0x30
            var bytes = [UInt8](repeating: fill, count: byteCount)
            if dtype == .f64 { bytes = Array(repeating: 0.01, count: count).withUnsafeBytes { Array($0) } }
            return .init(name: name, payload: Tensor(dtype: dtype, shape: entry.tensor.shape, values: bytes))
        }
        try SafeTensorsWriter.write(items, metadata: nil, toFile: folder + "/model.safetensors")
        return folder
    }

    @Test func mergingIntoAnFP8BaseNeedsAnOutputType() throws {
        let base = try Self.base(with: .f8E4M3)
        try Self.expectFailure(
            ["merge", base, "--adapter", Self.lora, "-o", Fixtures.temporaryFolder() + "/m"], message: "cannot be written as F8_E4M3",
            file: Self.lora)
        let result = try QToolBinary.run([
            "merge", base, "--adapter", Self.lora, "-o", Fixtures.temporaryFolder() + "/m", "--dtype", "bf16", "--quiet",
        ])
        #expect(result.status == 0, "\(result.stderr)")
    }

    @Test func subByteFloatBasesAreRefusedAndF64BasesMerge() throws {
        try Self.expectFailure(
            ["merge", try Self.base(with: .f4), "--adapter", Self.lora, "-o", Fixtures.temporaryFolder() + "/m"],
            message: "not a float type qtool can merge into", file: Self.lora)
        let out = Fixtures.temporaryFolder() + "/m"
        let result = try QToolBinary.run(["merge", try Self.base(with: .f64), "--adapter", Self.lora, "-o", out, "--quiet"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(try SafeTensorsModel(path: out).tensors()["model.layers.0.self_attn.q_proj.weight"]?.dtype == .f64)
    }

    // MARK: Argument mistakes: exit 64 with a message that says what is wrong

    @Test(arguments: [
        (["merge", model, "--adapter", lora + "=abc", "-o", "/tmp/x"], "the weight 'abc' is not a number"),
        (["merge", model, "--adapter", lora + "=1e39", "-o", "/tmp/x"], "beyond float32's range"),
        (["merge", model, "--adapter", "=0.5", "-o", "/tmp/x"], "has a weight but no folder"),
        (["merge", model, "--adapter", lora, "-o", "/tmp/x", "--threads", "-1"], "--threads must be at least 1, not -1"),
        (["quantize", model, "/tmp/x.nf4", "--threads", "0"], "--threads must be at least 1, not 0"),
        (["quantize", model, "/tmp/x.nf4", "--blocksize", "-64"], "--blocksize must be a power of two from 32 to 4096, not -64"),
        (["quantize", model, "/tmp/o.nf4", "--format", "bnb"], "ends in .nf4 but --format is bnb"),
        (["quantize", model, "/tmp/o.safetensors", "--format", "nf4"], "--format nf4 writes a .nf4 file"),
        (["quantize", model, "/tmp/o.h5"], "names an HDF5 file"),
        (["merge", model, "--adapter", lora, "-o", "/tmp/m.nf4", "--format", "bnb"], "ends in .nf4 but --format is bnb"),
        (["merge", model, "--adapter", lora, "-o", "/tmp/m.safetensors", "--format", "nf4"], "--format nf4 writes a .nf4 file"),
        (["merge", model, "--adapter", lora, "-o", "/tmp/m.h5"], "names an HDF5 file"),
        (["inspect", ""], "PATH is an empty path"),
        (["convert", "", "/tmp/x.safetensors"], "INPUT is an empty path"),
        (["convert", model, ""], "OUTPUT is an empty path"),
        (["merge", model, "--adapter", "", "-o", "/tmp/x"], "--adapter needs a folder"),
    ])
    func argumentMistakesExit64(_ arguments: [String], _ message: String) throws {
        let result = try Self.expectFailure(arguments, status: 64, message: message)
        #expect(!result.stderr.contains("Missing value"))
    }

    @Test func anAdapterConfigGivenAsTheAdapterIsExplained() throws {
        let config = Self.lora + "/adapter_config.json"
        try Self.expectFailure(
            ["merge", Self.model, "--adapter", config, "-o", Fixtures.temporaryFolder() + "/m"], message: "give its folder, '\(Self.lora)'",
            file: config)
    }

    // MARK: .nf4 containers with sizes, offsets and numbers that lie

    /// A .nf4 of the bundled model (quantized without double quantization when `plain`).
    static func container(_ options: [String] = []) throws -> String {
        let path = Fixtures.temporaryFolder() + "/model.nf4"
        let result = try QToolBinary.run(["quantize", Self.model, path, "--quiet"] + options)
        precondition(result.status == 0, result.stderr)
        return path
    }

    /// Rewrites a .nf4 file's header (keeping its checksum right, so the edit is what is tested).
    static func rewriteHeader(_ path: String, _ edit: (inout JSONValue) -> Void, sections: ((inout [UInt8], JSONValue) -> Void)? = nil)
        throws
    {
        var bytes = Fixtures.bytes(path)
        let trailer = bytes.count - 32
        let offset = Int(bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: trailer, as: UInt64.self) })
        let length = Int(bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: trailer + 8, as: UInt64.self) })
        var header = try JSONParser.parse(String(decoding: bytes[offset..<(offset + length)], as: UTF8.self))
        var data = Array(bytes[0..<offset])
        sections?(&data, header)
        edit(&header)
        let text = Array(header.serialized().utf8)
        bytes = data + text
        for value in [UInt64(offset), UInt64(text.count), XXH64.hash(text)] { withUnsafeBytes(of: value.littleEndian) { bytes += $0 } }
        bytes += Array("QTOOLNF4".utf8)
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    }

    /// Edits the first quantized tensor's header entry.
    static func editFirstQuantized(_ edit: @escaping (inout [JSONMember]) -> Void) -> (inout JSONValue) -> Void {
        { header in
            var members = header.objectMembers!
            let t = members.firstIndex { $0.key == "tensors" }!
            var tensors = members[t].value.arrayValues!
            let q = tensors.firstIndex { $0["quantized"]?.boolValue == true }!
            var entry = tensors[q].objectMembers!
            edit(&entry)
            tensors[q] = .object(entry)
            members[t].value = .array(tensors)
            header = .object(members)
        }
    }

    static func replacing(_ key: String, with value: JSONValue) -> (inout [JSONMember]) -> Void {
        { members in
            let index = members.firstIndex { $0.key == key }!
            members[index].value = value
        }
    }

    @Test func containerShapesThatOverflowAreRefused() throws {
        let path = try Self.container()
        try Self.rewriteHeader(path, Self.editFirstQuantized(Self.replacing("shape", with: .array([.number("9223372036854775807")]))))
        try Self.expectFailure(["inspect", path], message: "overflows", file: path)
        try Self.rewriteHeader(
            path, Self.editFirstQuantized(Self.replacing("shape", with: .array([.number("4611686018427387904"), .number("4")]))))
        try Self.expectFailure(["dequantize", path, Fixtures.temporaryFolder() + "/x"], message: "overflows", file: path)
    }

    /// A compressed section declaring a terabyte is refused before anything is allocated.
    @Test func aDecompressedSizeBeyondTheRatioIsRefused() throws {
        let path = try Self.container(["--compress", "zstd"])
        try Self.rewriteHeader(
            path,
            { header in
                var members = header.objectMembers!
                let f = members.firstIndex { $0.key == "files" }!
                var files = members[f].value.arrayValues!
                var file = files[0].objectMembers!
                let d = file.firstIndex { $0.key == "data" }!
                var section = file[d].value.objectMembers!
                section[section.firstIndex { $0.key == "compression" }!].value = .string("zstd")
                section[section.firstIndex { $0.key == "size" }!].value = .number(String(1 << 40))
                file[d].value = .object(section)
                files[0] = .object(file)
                members[f].value = .array(files)
                header = .object(members)
            })
        try Self.expectFailure(
            ["dequantize", path, Fixtures.temporaryFolder() + "/x"], message: "more than 1024 times its length", file: path)
    }

    @Test func aHeaderOverTheLimitIsRefusedUnread() throws {
        // A sparse file: the 65 MiB header region takes no disk and is never read.
        let path = Fixtures.temporaryFolder() + "/big.nf4"
        var prelude = Array("QTOOLNF4".utf8)
        withUnsafeBytes(of: UInt32(1).littleEndian) { prelude += $0 }
        prelude += [0, 0, 0, 0]
        let length = 65 << 20
        FileManager.default.createFile(atPath: path, contents: Data(prelude))
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        try handle.seek(toOffset: UInt64(64 + length))
        var trailer: [UInt8] = []
        for value in [UInt64(64), UInt64(length), 0] { withUnsafeBytes(of: value.littleEndian) { trailer += $0 } }
        try handle.write(contentsOf: trailer + Array("QTOOLNF4".utf8))
        try handle.close()
        try Self.expectFailure(["inspect", path], message: "over the limit of", file: path)
    }

    @Test func nonFiniteOffsetsAndScalesAreRefused() throws {
        let path = try Self.container()
        try Self.rewriteHeader(path, Self.editFirstQuantized(Self.replacing("offset_bits", with: .string("7fc00000"))))
        try Self.expectFailure(["dequantize", path, Fixtures.temporaryFolder() + "/x"], message: "not a finite number", file: path)
        // Without double quantization, a NaN among the float32 scales (checksum made right).
        let plain = try Self.container(["--no-double-quant"])
        var patched: (offset: Int, bytes: [UInt8])? = nil
        try Self.rewriteHeader(
            plain,
            { header in
                Self.editFirstQuantized { entry in
                    var section = entry.first { $0.key == "absmax" }!.value.objectMembers!
                    section[section.firstIndex { $0.key == "xxh64" }!].value = .string(XXH64.hash(patched!.bytes).hexDigits)
                    entry[entry.firstIndex { $0.key == "absmax" }!].value = .object(section)
                }(&header)
            },
            sections: { data, header in
                let entry = header["tensors"]!.arrayValues!.first { $0["quantized"]?.boolValue == true }!
                let offset = entry["absmax"]!["offset"]!.integerValue!, length = entry["absmax"]!["length"]!.integerValue!
                withUnsafeBytes(of: Float.nan.bitPattern.littleEndian) { data.replaceSubrange(offset..<(offset + 4), with: $0) }
                patched = (offset, Array(data[offset..<(offset + length)]))
            })
        try Self.expectFailure(["dequantize", plain, Fixtures.temporaryFolder() + "/x"], message: "not a finite number", file: plain)
    }

    @Test func aDamagedMagicIsNamedAsSuch() throws {
        let path = try Self.container()
        var bytes = Fixtures.bytes(path)
        bytes[0] = 0x51 ^ 0xFF
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let result = try Self.expectFailure(["inspect", path], message: "a damaged .nf4 file", file: path)
        #expect(!result.stderr.contains("header length"))
        let other = Fixtures.temporaryFolder() + "/notes.bin"
        try Data("plain text, no format at all".utf8).write(to: URL(fileURLWithPath: other))
        try Self.expectFailure(["inspect", other], message: "not a recognised checkpoint format", file: other)
    }

    // MARK: bitsandbytes layouts with parts missing, renamed, or lying

    static let bnbSource = Fixtures.path("tiny-llama-bnb-nf4")
    static let victim = "model.layers.1.mlp.up_proj.weight"

    /// The bnb fixture with its tensors edited.
    static func bnb(_ edit: (inout [(String, Tensor)]) throws -> Void) throws -> String {
        let folder = Fixtures.temporaryFolder() + "/bnb"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: bnbSource + "/config.json", toPath: folder + "/config.json")
        var entries = try SafeTensorsModel(path: bnbSource).tensors().entries.map { ($0.name, $0.tensor) }
        try edit(&entries)
        try SafeTensorsWriter.write(entries.map { .init(name: $0.0, payload: $0.1) }, metadata: nil, toFile: folder + "/model.safetensors")
        return folder
    }

    /// The quant_state of `victim` with one member replaced by `value` (written as JSON text).
    static func quantState(_ key: String, _ value: String) -> (inout [(String, Tensor)]) throws -> Void {
        { entries in
            let index = entries.firstIndex { $0.0 == victim + ".quant_state.bitsandbytes__nf4" }!
            var text = String(decoding: entries[index].1.values(as: UInt8.self), as: UTF8.self)
            let state = try JSONParser.parse(text)
            let old = state[key]!.serialized(
                JSONFormat(style: .python, indent: nil, spaced: false, sortKeys: false, inlineScalarArrays: false)
            ).replacingOccurrences(of: ",", with: ", ")
            text = text.replacingOccurrences(of: "\"\(key)\": \(old)", with: "\"\(key)\": \(value)")
            precondition(text.contains(value))
            entries[index].1 = Tensor(dtype: .u8, shape: [text.utf8.count], values: Array(text.utf8))
        }
    }

    @Test(arguments: [
        ("missing codes", "its packed 4-bit codes are missing"),
        ("renamed codes", "its packed 4-bit codes are missing"),
        ("orphaned scales", "has no quant_state"),
        ("fractional shape", "is not a list of non-negative integers"),
        ("text in shape", "is not a list of non-negative integers"),
        ("overflowing shape", "is not a list of non-negative integers"),
        ("infinite offset", "is not a finite float32 number"),
        ("offset past float32", "is not a finite float32 number"),
    ])
    func brokenBitsandbytesLayoutsAreRefused(_ attack: String, _ message: String) throws {
        let folder = try Self.bnb { entries in
            switch attack {
            case "missing codes": entries.removeAll { $0.0 == Self.victim }
            case "renamed codes": entries[entries.firstIndex { $0.0 == Self.victim }!].0 = "model.layers.1.mlp.up_proj.codes"
            case "orphaned scales": entries.removeAll { $0.0.hasPrefix(Self.victim + ".quant_state") }
            case "fractional shape": try Self.quantState("shape", "[352, 128.5]")(&entries)
            case "text in shape": try Self.quantState("shape", "[\"352\", 128]")(&entries)
            case "overflowing shape": try Self.quantState("shape", "[9223372036854775807]")(&entries)
            case "infinite offset": try Self.quantState("nested_offset", "1e999")(&entries)
            default: try Self.quantState("nested_offset", "1e39")(&entries)
            }
        }
        let out = Fixtures.temporaryFolder()
        try Self.expectFailure(["dequantize", folder, out + "/x"], message: message, file: folder)
        try Self.expectFailure(["convert", folder, out + "/y.nf4"], message: message, file: folder)
        #expect(Fixtures.listing(out).isEmpty)
    }

    // MARK: HDF5 files that reach outside themselves, lie about sizes or loop

    @Test(arguments: [
        ("external-link.h5", "is an external link to another file"),
        ("external-storage.h5", "keeps its data in an external file"),
        ("huge-chunked.h5", "declares 17592186044416 bytes"),
        ("huge-contiguous.h5", "declares 1125899906842624 bytes"),
        ("huge-attribute.h5", "over the limit of 16777216 bytes"),
        ("wide-string.h5", "cannot read '/weight"),
    ])
    func hostileHDF5FilesAreRefused(_ file: String, _ message: String) throws {
        let path = Fixtures.path("hdf5/hostile/" + file)
        let out = Fixtures.temporaryFolder()
        try Self.expectFailure(["convert", path, out + "/x.safetensors"], message: message, file: path)
        #expect(Fixtures.listing(out).isEmpty)
    }

    @Test func externalDataIsReadOnlyWhenAllowed() throws {
        let out = Fixtures.temporaryFolder()
        for file in ["external-link.h5", "external-storage.h5"] {
            let result = try QToolBinary.run([
                "convert", Fixtures.path("hdf5/hostile/" + file), out + "/\(file).safetensors", "--allow-external", "--quiet",
            ])
            #expect(result.status == 0, "\(file): \(result.stderr)")
        }
        let linked = try SafeTensorsFile(path: out + "/external-link.h5.safetensors").tensors()
        #expect(linked["linked"]?.values(as: Float.self) == [0, 1, 2, 3])
    }

    @Test(arguments: [
        ("cycle.h5", "link '/a/b/back' is another link to '/a'", ["a.weight"]),
        ("second-link.h5", "link '/weight' is another link to '/alias'", ["alias"]),
        ("odd-attribute.h5", "attribute 'pair' of '/weight' holds a compound type", ["weight"]),
    ])
    func cyclesAndUnsupportedPartsAreSkippedWithAWarning(_ file: String, _ warning: String, _ names: [String]) throws {
        let out = Fixtures.temporaryFolder() + "/x.safetensors"
        let result = try QToolBinary.run(["convert", Fixtures.path("hdf5/hostile/" + file), out], timeout: 60, memoryLimit: Self.memoryCap)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stderr.contains("warning: ") && result.stderr.contains(warning), "\(result.stderr)")
        #expect(try SafeTensorsFile(path: out).tensors().names == names)
    }

    @Test func aNulInATensorNameIsRefusedForHDF5() throws {
        let input = Fixtures.temporaryFolder() + "/nul.safetensors"
        try SafeTensorsWriter.write(
            [.init(name: "a\u{0}b", payload: Tensor(dtype: .f32, shape: [1], values: [Float(1)]))], metadata: nil, toFile: input)
        let out = Fixtures.temporaryFolder()
        try Self.expectFailure(["convert", input, out + "/x.h5"], message: "holds a NUL character", file: out + "/x.h5")
        #expect(Fixtures.listing(out).isEmpty)
    }

    // MARK: Inputs that are not regular files

    @Test func fifosAreRefusedWithoutBlocking() throws {
        let folder = Fixtures.temporaryFolder()
        #expect(mkfifo(folder + "/model.safetensors", 0o644) == 0)
        try Self.expectFailure(
            ["inspect", folder + "/model.safetensors"], message: "not a regular file", file: folder + "/model.safetensors")
        #expect(mkfifo(folder + "/weights.h5", 0o644) == 0)
        try Self.expectFailure(["inspect", folder + "/weights.h5"], message: "not a regular file", file: folder + "/weights.h5")
        // A companion file (config.json) that is a FIFO.
        let model = Fixtures.temporaryFolder() + "/model"
        try FileManager.default.createDirectory(atPath: model, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: Self.model + "/model.safetensors", toPath: model + "/model.safetensors")
        #expect(mkfifo(model + "/config.json", 0o644) == 0)
        let out = Fixtures.temporaryFolder()
        try Self.expectFailure(["convert", model, out + "/copy"], message: "not a regular file", file: model + "/config.json")
        #expect(Fixtures.listing(out).isEmpty)
    }

    // MARK: What reaches the terminal

    @Test func namesFromFilesAreEscapedOnTheTerminal() throws {
        let input = Fixtures.temporaryFolder() + "/evil.safetensors"
        try SafeTensorsWriter.write(
            [.init(name: "red\u{1B}[31mtext\u{202E}gnp.exe\u{9B}2J", payload: Tensor(dtype: .f32, shape: [1], values: [Float(1)]))],
            metadata: [("note", "bell\u{07}")], toFile: input)
        let table = try QToolBinary.run(["inspect", input])
        #expect(table.status == 0)
        #expect(
            !table.stdout.contains("\u{1B}") && !table.stdout.contains("\u{202E}") && !table.stdout.contains("\u{9B}")
                && !table.stdout.contains("\u{07}"))
        #expect(table.stdout.contains("red\\x1b[31mtext\\u{202e}gnp.exe\\x9b2J") && table.stdout.contains("bell\\x07"), "\(table.stdout)")
        let json = try QToolBinary.run(["inspect", input, "--json"])
        #expect(!json.stdout.contains("\u{1B}") && !json.stdout.contains("\u{202E}") && !json.stdout.contains("\u{9B}"))
        #expect(json.stdout.contains("red\\u001b[31mtext\\u202egnp.exe\\u009b2J"), "\(json.stdout)")
        let missing = try QToolBinary.run(["inspect", "/nonexistent/\u{1B}]0;title\u{07}.safetensors"])
        #expect(missing.status == 2 && !missing.stderr.contains("\u{1B}") && missing.stderr.contains("\\x1b]0;title\\x07"))
    }
}
