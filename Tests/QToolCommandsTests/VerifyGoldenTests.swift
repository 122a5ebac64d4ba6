import Foundation
import SafetensorsFormat
import TensorCore
import Testing
import TestSupport

/// `qtool verify`'s figures against numpy and transformers (fixtures/verify/goldens.json, made by
/// fixtures/generate/verify_goldens.py).
struct VerifyGoldenTests {
    static let goldens: JSONValue = try! JSONParser.parse(
        String(decoding: Fixtures.bytes(Fixtures.path("verify/goldens.json")), as: UTF8.self))

    static func close(_ actual: Double?, _ expected: Double?, relative: Double, absolute: Double = 0) -> Bool {
        guard let actual, let expected else { return actual == nil && expected == nil }
        return abs(actual - expected) <= relative * abs(expected) + absolute
    }

    /// rmse, cosine and SQNR of each tensor of bitsandbytes' NF4 model against its source, as numpy
    /// computes them from the same dequantized values (within 1e-6).
    @Test func tensorErrorsAreNumpys() throws {
        let golden = Self.goldens["tensor_error"]!
        let result = try QToolBinary.run([
            "verify", Fixtures.path(golden["artifact"]!.stringValue!), "--against", Fixtures.path(golden["source"]!.stringValue!), "--json",
        ])
        #expect(result.status == 0, "\(result.stdout)")
        let report = try JSONParser.parse(result.stdout)
        let tensors = Dictionary(
            uniqueKeysWithValues: report["tensors"]!.arrayValues!.map { ($0["name"]!.stringValue!, $0) })
        let expected = golden["tensors"]!.objectMembers!
        #expect(tensors.count == expected.count)
        for member in expected {
            let ours = try #require(tensors[member.key], "\(member.key)")
            let want = member.value
            #expect(Self.close(ours["rmse"]?.doubleValue, want["rmse"]?.doubleValue, relative: 1e-6), "\(member.key) rmse")
            #expect(Self.close(ours["max_abs_error"]?.doubleValue, want["max_abs_error"]?.doubleValue, relative: 1e-6))
            #expect(Self.close(ours["cosine"]?.doubleValue, want["cosine"]?.doubleValue, relative: 1e-6), "\(member.key) cosine")
            if let sqnr = want["sqnr_db"]?.doubleValue {
                #expect(Self.close(ours["sqnr_db"]?.doubleValue, sqnr, relative: 1e-6), "\(member.key) sqnr")
            } else {
                #expect(ours["max_abs_error"]?.doubleValue == 0)
            }
        }
        let total = golden["total"]!
        for key in ["rmse", "max_abs_error", "cosine", "sqnr_db"] {
            #expect(Self.close(report["total"]?[key]?.doubleValue, total[key]?.doubleValue, relative: 1e-6), "total \(key)")
        }
    }

    /// llama-perplexity --kl-divergence's figures as transformers gives them for the fixture model's
    /// 4-bit load against its float one, on JSON Lines and on a text at ctx 32.
    @Test(arguments: ["data", "text_ctx32"])
    func qualityIsTransformers(_ name: String) throws {
        let golden = Self.goldens["quality"]![name]!
        let models = Fixtures.path("models")
        var arguments = ["verify", models + "/llama-gqa-bnb-nf4", "--against", models + "/llama-gqa", "--json"]
        if name == "data" {
            arguments += ["--data", models + "/eval.jsonl", "--max-seq-len", String(golden["max_seq_len"]!.integerValue!)]
        } else {
            arguments += ["--text", models + "/ppl.txt", "--ctx", String(golden["n_ctx"]!.integerValue!)]
        }
        let result = try QToolBinary.run(arguments)
        #expect(result.status == 0, "\(result.stdout) \(result.stderr)")
        let quality = try #require(try JSONParser.parse(result.stdout)["quality"])
        #expect(quality["tokens"]?.integerValue == golden["tokens"]?.integerValue)
        let pairs = [
            ("ppl", "ppl_artifact"), ("ppl_source", "ppl_source"), ("ppl_ratio", "ppl_ratio"), ("kld_mean", "kld_mean"),
            ("kld_median", "kld_median"), ("kld_p99", "kld_p99"), ("kld_max", "kld_max"), ("same_top", "same_top"),
            ("rms_delta_p", "rms_delta_p"),
        ]
        for (ours, theirs) in pairs {
            // Within 1e-4 of the value (perplexities: relative), as the acceptance asks.
            let relative = ours.hasPrefix("ppl") ? 1e-4 : 0
            #expect(
                Self.close(quality[ours]?.doubleValue, golden[theirs]?.doubleValue, relative: relative, absolute: relative == 0 ? 1e-4 : 0),
                "\(name) \(ours): \(quality[ours]?.doubleValue ?? .nan) vs \(golden[theirs]?.doubleValue ?? .nan)")
        }
    }

    /// Two tensors of the same shape swapped: integrity and config hold, the error against the
    /// source names them.
    @Test func aShuffledModelFailsOnlyAgainstItsSource() throws {
        let golden = Self.goldens["defects"]!["shuffled"]!
        let swapped = golden["swapped"]!.arrayValues!.map(\.stringValue!)
        let tiny = Fixtures.path("tiny-llama")
        let folder = Fixtures.temporaryFolder() + "/shuffled"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        for file in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
            try FileManager.default.copyItem(atPath: tiny + "/" + file, toPath: folder + "/" + file)
        }
        let model = try SafeTensorsFile(path: tiny + "/model.safetensors")
        let tensors = model.tensors()
        let byName = Dictionary(uniqueKeysWithValues: tensors.entries.map { ($0.name, $0.tensor) })
        let items = tensors.entries.map { name, tensor in
            let other = name == swapped[0] ? swapped[1] : name == swapped[1] ? swapped[0] : name
            return SafeTensorsWriter.Item(name: name, payload: byName[other]!)
        }
        try SafeTensorsWriter.write(items, metadata: tensors.metadata, toFile: folder + "/model.safetensors")
        var result = try QToolBinary.run(["verify", folder])
        #expect(result.status == 0, "\(result.stdout)")
        result = try QToolBinary.run(["verify", folder, "--against", tiny, "--min-cosine", "0.99", "--json"])
        #expect(result.status == 1)
        let report = try JSONParser.parse(result.stdout)
        let cosine = report["checks"]!.arrayValues!.first { $0["name"]?.stringValue == "cosine" }!
        #expect(cosine["ok"]?.boolValue == false)
        #expect(swapped.contains { cosine["detail"]!.stringValue!.contains($0) })
        let reported = Dictionary(uniqueKeysWithValues: report["tensors"]!.arrayValues!.map { ($0["name"]!.stringValue!, $0) })
        for name in swapped {
            let want = golden["tensor_error"]![name]!
            #expect(Self.close(reported[name]?["cosine"]?.doubleValue, want["cosine"]?.doubleValue, relative: 1e-6))
            #expect(Self.close(reported[name]?["sqnr_db"]?.doubleValue, want["sqnr_db"]?.doubleValue, relative: 1e-6))
        }
        #expect(Self.close(report["total"]?["rmse"]?.doubleValue, golden["total"]!["rmse"]!.doubleValue, relative: 1e-6))
    }

    /// The fixture adapter (an update far below NF4's step, above bf16's): merged into 4 bits it
    /// is flagged by `merge` and fails `verify --min-update-cosine 0.9`; merged into bf16 it passes.
    @Test func theFixtureAdapterIsErasedByA4BitMergeOnly() throws {
        let adapter = Fixtures.path("verify/tiny-adapter")
        let tiny = Fixtures.path("tiny-llama")
        let folder = Fixtures.temporaryFolder()
        var result = try QToolBinary.run(["merge", tiny, "--adapter", adapter, "-o", folder + "/m.nf4"])
        #expect(result.status == 0 && result.stderr.contains("erased most of the adapter's update"), "\(result.stderr)")
        result = try QToolBinary.run(["verify", folder + "/m.nf4", "--base", tiny, "--adapter", adapter, "--min-update-cosine", "0.9"])
        #expect(result.status == 1 && result.stdout.contains("FAIL update_cosine"), "\(result.stdout)")
        result = try QToolBinary.run(["merge", tiny, "--adapter", adapter, "-o", folder + "/bf16"])
        #expect(result.status == 0 && !result.stderr.contains("warning"), "\(result.stderr)")
        result = try QToolBinary.run([
            "verify", folder + "/bf16", "--base", tiny, "--adapter", adapter, "--min-update-cosine", "0.9", "--json",
        ])
        #expect(result.status == 0, "\(result.stdout)")
        // What landed in bf16 is what the reference's bf16 merge keeps of the update.
        let report = try JSONParser.parse(result.stdout)
        let targets = Self.goldens["adapter"]!["targets"]!.objectMembers!
        for item in report["tensors"]!.arrayValues! {
            guard let name = item["name"]?.stringValue, let want = targets.first(where: { $0.key == name })?.value else { continue }
            #expect(
                Self.close(item["update_cosine"]?.doubleValue, want["bf16_merge_kept_cosine"]?.doubleValue, relative: 1e-3),
                "\(name): \(item["update_cosine"]?.doubleValue ?? .nan) vs \(want["bf16_merge_kept_cosine"]?.doubleValue ?? .nan)")
        }
    }

    /// `--base --adapter --data`: the merged model against the base with the adapter un-merged,
    /// whose perplexity is PEFT's (the model goldens).
    @Test func aMergedModelIsComparedWithItsBaseAndAdapterUnmerged() throws {
        let models = Fixtures.path("models")
        let folder = Fixtures.temporaryFolder()
        #expect(
            try QToolBinary.run(["merge", models + "/llama-gqa", "--adapter", models + "/llama-gqa-lora", "-o", folder + "/m", "--quiet"])
                .status == 0)
        let result = try QToolBinary.run([
            "verify", folder + "/m", "--base", models + "/llama-gqa", "--adapter", models + "/llama-gqa-lora", "--data",
            models + "/eval.jsonl",
            "--max-seq-len", "64", "--max-kld", "1e-6", "--min-update-cosine", "0.999", "--json",
        ])
        #expect(result.status == 0, "\(result.stdout)")
        let report = try JSONParser.parse(result.stdout)
        let peft = try JSONParser.parse(String(decoding: Fixtures.bytes(models + "/goldens/goldens.json"), as: UTF8.self))
        let expected = peft["cases"]!["llama-gqa+lora"]!["eval"]!["perplexity"]!.doubleValue!
        #expect(Self.close(report["quality"]?["ppl_source"]?.doubleValue, expected, relative: 1e-4))
        #expect(Self.close(report["quality"]?["ppl"]?.doubleValue, expected, relative: 1e-4))
    }
}
