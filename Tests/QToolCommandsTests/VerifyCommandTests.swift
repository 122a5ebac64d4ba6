import Foundation
import SafetensorsFormat
import TensorCore
import Testing
import TestSupport

/// `qtool verify` and `qtool diff`: clean artifacts pass, damaged ones fail the check that names
/// the damage, bad input exits 2.
struct VerifyCommandTests {
    let tiny = Fixtures.path("tiny-llama")

    static func report(_ result: CommandResult) throws -> JSONValue { try JSONParser.parse(result.stdout) }

    static func check(_ report: JSONValue, _ name: String) -> JSONValue? {
        report["checks"]?.arrayValues?.first { $0["name"]?.stringValue == name }
    }

    @Test func cleanArtifactsPass() throws {
        let folder = Fixtures.temporaryFolder()
        #expect(try QToolBinary.run(["quantize", tiny, folder + "/m.nf4", "--quiet"]).status == 0)
        for artifact in [folder + "/m.nf4", tiny, Fixtures.path("tiny-llama-bnb-nf4"), Fixtures.path("tiny-llama-sharded")] {
            let result = try QToolBinary.run(["verify", artifact, "--json"])
            #expect(result.status == 0, "\(artifact): \(result.stdout) \(result.stderr)")
            let report = try Self.report(result)
            #expect(report["ok"]?.boolValue == true)
            for name in ["integrity", "finite", "config", "tokenizer"] {
                #expect(Self.check(report, name)?["ok"]?.boolValue == true, "\(artifact): \(name)")
            }
        }
    }

    /// Every single-bit flip of a .nf4 is caught: exit 1 (a check fails) or 2 (the file cannot be
    /// read as a .nf4), never 0 and never a crash.
    @Test func everyFlippedBitIsCaught() throws {
        let folder = Fixtures.temporaryFolder()
        #expect(try QToolBinary.run(["quantize", Fixtures.path("models/llama-gqa"), folder + "/m.nf4", "--quiet"]).status == 0)
        let original = Fixtures.bytes(folder + "/m.nf4")
        var random = SystemRandomNumberGenerator()
        var statuses: [Int32: Int] = [:]
        for _ in 0..<200 {
            var bytes = original
            let bit = Int.random(in: 0..<(bytes.count * 8), using: &random)
            bytes[bit / 8] ^= UInt8(1 << (bit % 8))
            try Data(bytes).write(to: URL(fileURLWithPath: folder + "/flipped.nf4"))
            let result = try QToolBinary.run(["verify", folder + "/flipped.nf4", "--quiet"])
            #expect(result.status == 1 || result.status == 2, "bit \(bit): status \(result.status) \(result.stdout) \(result.stderr)")
            statuses[result.status, default: 0] += 1
        }
        #expect((statuses[1] ?? 0) > 0)
    }

    @Test func damageFailsTheCheckThatNamesIt() throws {
        let folder = Fixtures.temporaryFolder()
        // A NaN in a float tensor.
        let model = try SafeTensorsFile(path: tiny + "/model.safetensors")
        var items: [SafeTensorsWriter.Item] = []
        for (index, (name, tensor)) in model.tensors().entries.enumerated() {
            if index == 3 {
                var values = tensor.withBytes { Array($0) }
                values[0] = 0xC0
                values[1] = 0x7F
                items.append(
                    SafeTensorsWriter.Item(
                        name: name, payload: Tensor(dtype: tensor.dtype, shape: tensor.shape, copying: values.withUnsafeBytes { $0 })))
            } else {
                items.append(SafeTensorsWriter.Item(name: name, payload: tensor))
            }
        }
        try FileManager.default.createDirectory(atPath: folder + "/nan", withIntermediateDirectories: true)
        try SafeTensorsWriter.write(items, metadata: [(key: "format", value: "pt")], toFile: folder + "/nan/model.safetensors")
        var result = try QToolBinary.run(["verify", folder + "/nan/model.safetensors", "--json"])
        #expect(result.status == 1)
        #expect(Self.check(try Self.report(result), "finite")?["ok"]?.boolValue == false)

        // A config that does not fit the tensors.
        try FileManager.default.copyItem(atPath: tiny, toPath: folder + "/config")
        let config = String(decoding: Fixtures.bytes(tiny + "/config.json"), as: UTF8.self)
        let hidden = try #require(try JSONParser.parse(config)["hidden_size"]?.integerValue)
        try Data(config.replacingOccurrences(of: "\"hidden_size\": \(hidden)", with: "\"hidden_size\": \(hidden * 2)").utf8).write(
            to: URL(fileURLWithPath: folder + "/config/config.json"))
        result = try QToolBinary.run(["verify", folder + "/config"])
        #expect(result.status == 1)
        #expect(result.stdout.contains("FAIL config"), "\(result.stdout)")

        // Missing and malformed inputs are bad input.
        result = try QToolBinary.run(["verify", folder + "/nothing.nf4"])
        #expect(result.status == 2 && result.stderr.contains("nothing.nf4"))
        try Data("garbage".utf8).write(to: URL(fileURLWithPath: folder + "/bad.safetensors"))
        #expect(try QToolBinary.run(["verify", folder + "/bad.safetensors"]).status == 2)
    }

    /// The error against the source, and the thresholds that fail it; the JUnit report.
    @Test func errorAgainstTheSourceAndItsThresholds() throws {
        let folder = Fixtures.temporaryFolder()
        #expect(try QToolBinary.run(["quantize", tiny, folder + "/m.nf4", "--quiet"]).status == 0)
        var result = try QToolBinary.run(["verify", folder + "/m.nf4", "--against", tiny, "--json", "--min-cosine", "0.9"])
        #expect(result.status == 0, "\(result.stdout)")
        let report = try Self.report(result)
        let tensors = try #require(report["tensors"]?.arrayValues)
        #expect(tensors.count == 21 || tensors.count > 0)
        for tensor in tensors {
            let cosine = try #require(tensor["cosine"]?.doubleValue)
            #expect(cosine > 0.9 && cosine <= 1.0000001)
        }
        result = try QToolBinary.run([
            "verify", folder + "/m.nf4", "--against", tiny, "--min-sqnr-db", "40", "--junit", folder + "/report.xml",
        ])
        #expect(result.status == 1)
        #expect(result.stdout.contains("FAIL sqnr_db: worst tensor"))
        let xml = String(decoding: Fixtures.bytes(folder + "/report.xml"), as: UTF8.self)
        #expect(xml.contains("<testcase classname=\"qtool.verify\" name=\"sqnr_db\">") && xml.contains("<failure message="))
        #expect(xml.contains("<testcase classname=\"qtool.verify\" name=\"integrity\"/>"))
    }

    @Test func diffNamesWhatChanged() throws {
        let folder = Fixtures.temporaryFolder()
        #expect(try QToolBinary.run(["quantize", tiny, folder + "/m.nf4", "--quiet"]).status == 0)
        var result = try QToolBinary.run(["diff", tiny, folder + "/m.nf4", "--json"])
        #expect(result.status == 0, "\(result.stderr)")
        let report = try Self.report(result)
        #expect(report["only_in_a"]?.arrayValues?.isEmpty == true && report["only_in_b"]?.arrayValues?.isEmpty == true)
        let changed = try #require(report["changed"]?.arrayValues)
        #expect(!changed.isEmpty && changed.allSatisfy { $0["b"]!.stringValue!.hasPrefix("nf4") })
        result = try QToolBinary.run(["diff", tiny, tiny])
        #expect(result.status == 0 && result.stdout.contains("have the same values"))
    }

    /// fixtures/lora/lora with its B factors scaled by `factor`: an update far below NF4's step
    /// for a small factor.
    static func scaledAdapter(_ factor: Float, into folder: String) throws -> String {
        let source = Fixtures.path("lora/lora")
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: source + "/adapter_config.json", toPath: folder + "/adapter_config.json")
        let tensors = try SafeTensorsFile(path: source + "/adapter_model.safetensors").tensors()
        var items: [SafeTensorsWriter.Item] = []
        for (name, tensor) in tensors.entries {
            guard name.contains("lora_B"), tensor.dtype == .f32 else {
                items.append(SafeTensorsWriter.Item(name: name, payload: tensor))
                continue
            }
            let values = tensor.values(as: Float.self).map { $0 * factor }
            items.append(SafeTensorsWriter.Item(name: name, payload: Tensor(dtype: .f32, shape: tensor.shape, values: values)))
        }
        try SafeTensorsWriter.write(items, metadata: [(key: "format", value: "pt")], toFile: folder + "/adapter_model.safetensors")
        return folder
    }

    /// An update far below the 4-bit step: merging it into a 4-bit output erases it, and both
    /// `merge` (a warning) and `verify --base --adapter --min-update-cosine` say so; merged into a
    /// bf16 output it survives and passes.
    @Test func aMergeThatErasesTheUpdateIsFlagged() throws {
        let folder = Fixtures.temporaryFolder()
        let adapter = try Self.scaledAdapter(1e-4, into: folder + "/tiny-adapter")
        let float = Fixtures.temporaryFolder() + "/tiny-f32"
        #expect(try QToolBinary.run(["convert", tiny, float, "--dtype", "f32", "--quiet"]).status == 0)
        var result = try QToolBinary.run(["merge", float, "--adapter", adapter, "-o", folder + "/m.nf4"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stderr.contains("warning:") && result.stderr.contains("erased most of the adapter's update"), "\(result.stderr)")
        result = try QToolBinary.run([
            "verify", folder + "/m.nf4", "--base", float, "--adapter", adapter, "--min-update-cosine", "0.9", "--json",
        ])
        #expect(result.status == 1, "\(result.stdout)")
        let check = try #require(Self.check(try Self.report(result), "update_cosine"))
        #expect(check["ok"]?.boolValue == false && (check["value"]?.doubleValue ?? 1) < 0.5)
        #expect(check["detail"]?.stringValue?.contains("merge into a float output") == true)

        result = try QToolBinary.run(["merge", float, "--adapter", adapter, "-o", folder + "/m-f32"])
        #expect(result.status == 0 && !result.stderr.contains("warning"))
        result = try QToolBinary.run(["verify", folder + "/m-f32", "--base", float, "--adapter", adapter, "--min-update-cosine", "0.9"])
        #expect(result.status == 0, "\(result.stdout)")

        // The full-size adapter survives a 4-bit merge well enough.
        result = try QToolBinary.run(["merge", float, "--adapter", Fixtures.path("lora/lora"), "-o", folder + "/big.nf4", "--json"])
        let fidelity = try #require(try Self.report(result)["fidelity"])
        #expect((fidelity["median_update_cosine"]?.doubleValue ?? 0) > 0.9)
    }

    @Test func anAdapterForAnotherModelDoesNotFit() throws {
        var result = try QToolBinary.run(["verify", tiny, "--adapter", Fixtures.path("lora/lora")])
        #expect(result.status == 0 && result.stdout.contains("ok   adapter-fits"))
        result = try QToolBinary.run(["verify", Fixtures.path("models/llama-gqa"), "--adapter", Fixtures.path("lora/lora"), "--json"])
        #expect(result.status == 1)
        #expect(Self.check(try Self.report(result), "adapter-fits")?["ok"]?.boolValue == false)
    }
}
