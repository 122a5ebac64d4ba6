import Foundation
import SafetensorsFormat
import TensorCore
import Testing
import TestSupport

/// `qtool merge` end to end: PEFT's NF4 merge, step-by-step equivalence, sharding, bad adapters.
struct MergeCommandTests {
    let model = Fixtures.path("tiny-llama")
    let lora = Fixtures.path("lora/lora")

    /// The 4-bit codes of every quantized weight of a bitsandbytes-layout file, by name.
    static func codes(_ path: String) throws -> [String: [UInt8]] {
        let tensors = try SafeTensorsModel(path: path).tensors()
        var out: [String: [UInt8]] = [:]
        for name in tensors.names where tensors[name + ".quant_map"] != nil {
            out[name] = tensors[name]!.values(as: UInt8.self).flatMap { [$0 >> 4, $0 & 15] }
        }
        return out
    }

    static func quantState(_ tensors: NamedTensors, _ name: String) throws -> JSONValue {
        let key = tensors.names.first { $0.hasPrefix(name + ".quant_state.") }!
        return try JSONParser.parse(String(decoding: tensors[key]!.values(as: UInt8.self), as: UTF8.self))
    }

    /// PEFT merging into a bitsandbytes-loaded base dequantizes, adds and quantizes again; qtool
    /// must give the same settings and (nearly) the same codes.
    @Test func bnbBaseMatchesPEFTMerge() throws {
        let out = Fixtures.temporaryFolder() + "/merged"
        let result = try QToolBinary.run(["merge", Fixtures.path("tiny-llama-bnb-nf4"), "--adapter", lora, "-o", out, "--quiet"])
        #expect(result.status == 0, "\(result.stderr)")
        let golden = Fixtures.path("lora/tiny-llama-bnb-nf4-merged")
        let expected = try SafeTensorsModel(path: golden).tensors()
        let actual = try SafeTensorsModel(path: out).tensors()
        #expect(Set(actual.names) == Set(expected.names))
        let expectedCodes = try Self.codes(golden), actualCodes = try Self.codes(out)
        var same = 0, total = 0
        for (name, codes) in expectedCodes {
            let mine = try #require(actualCodes[name])
            for (a, b) in zip(mine, codes) {
                #expect(abs(Int(a) - Int(b)) <= 1, "\(name)")
                if a == b { same += 1 }
            }
            total += codes.count
            // Same settings. The offset is the mean of the block absmax values of the merged
            // weight: torch sums them in float32 in an order its CPU kernel picks (an error of up
            // to about log2(blocks) unit roundoffs of the mean), and each absmax comes from a
            // product summed over the adapter's rank r = 8 in an order OpenBLAS picks (2(r + 2)
            // more); the bound is stated against the mean, so it holds on every CPU.
            var mineState = try Self.quantState(actual, name), theirState = try Self.quantState(expected, name)
            let offsets = (mineState["nested_offset"]!.doubleValue!, theirState["nested_offset"]!.doubleValue!)
            let blocks = Double(expected[name + ".absmax"]!.elementCount)
            let roundoffs = log2(blocks).rounded(.up) + 2 * (8 + 2)
            #expect(abs(offsets.0 - offsets.1) <= roundoffs * 0x1p-24 * abs(offsets.1), "\(name): \(offsets)")
            mineState = .object(mineState.objectMembers!.filter { $0.key != "nested_offset" })
            theirState = .object(theirState.objectMembers!.filter { $0.key != "nested_offset" })
            #expect(mineState == theirState, "\(name)")
        }
        #expect(total > 0 && Double(same) >= 0.999 * Double(total), "\(same) of \(total) codes identical")
        // Everything else (norms, embeddings, lm_head) is untouched, and so is config.json.
        for name in actual.names where !name.contains("absmax") && !name.contains("quant_") && expectedCodes[name] == nil {
            #expect(actual[name]!.isIdentical(to: expected[name]!), "\(name)")
        }
        #expect(Fixtures.bytes(out + "/config.json") == Fixtures.bytes(golden + "/config.json"))
    }

    /// Into a .nf4 base: the same codes as dequantize → merge in f32 → quantize, step by step.
    @Test func nf4BaseEqualsStepByStep() throws {
        let folder = Fixtures.temporaryFolder()
        func run(_ arguments: [String]) throws {
            let result = try QToolBinary.run(arguments + ["--quiet"])
            #expect(result.status == 0, "\(arguments): \(result.stderr)")
        }
        try run(["quantize", model, folder + "/base.nf4"])
        try run(["merge", folder + "/base.nf4", "--adapter", lora, "-o", folder + "/merged.nf4"])
        try run(["dequantize", folder + "/base.nf4", folder + "/restored"])
        try run(["merge", folder + "/restored", "--adapter", lora, "-o", folder + "/merged-f32", "--dtype", "f32"])
        try run(["quantize", folder + "/merged-f32", folder + "/steps.nf4"])
        try run(["convert", folder + "/merged.nf4", folder + "/merged-bnb"])
        try run(["convert", folder + "/steps.nf4", folder + "/steps-bnb"])
        let direct = try Self.codes(folder + "/merged-bnb"), steps = try Self.codes(folder + "/steps-bnb")
        let changed = try SafeTensorsFile(path: Fixtures.path("lora/lora.merged.safetensors")).tensors().names
        #expect(changed.count == 28)
        for name in changed {
            let same = direct[name] == steps[name]
            #expect(same, "\(name)")
        }
    }

    /// A float base written as NF4 is the merge, then qtool's own quantization of it.
    @Test func floatBaseToNF4EqualsMergeThenQuantize() throws {
        let folder = Fixtures.temporaryFolder()
        #expect(try QToolBinary.run(["merge", model, "--adapter", lora, "-o", folder + "/a", "--format", "bnb", "--quiet"]).status == 0)
        #expect(try QToolBinary.run(["merge", model, "--adapter", lora, "-o", folder + "/merged", "--quiet"]).status == 0)
        #expect(try QToolBinary.run(["quantize", folder + "/merged", folder + "/b", "--format", "bnb", "--quiet"]).status == 0)
        #expect(Fixtures.bytes(folder + "/a/model.safetensors") == Fixtures.bytes(folder + "/b/model.safetensors"))
        #expect(Fixtures.bytes(folder + "/a/config.json") == Fixtures.bytes(folder + "/b/config.json"))
    }

    /// A sharded base keeps its shards and index; the tensors are those of the unsharded merge.
    @Test func shardedBaseKeepsItsSharding() throws {
        let folder = Fixtures.temporaryFolder()
        let sharded = Fixtures.path("tiny-llama-sharded")
        let result = try QToolBinary.run(["merge", sharded, "--adapter", lora, "-o", folder + "/sharded", "--quiet"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(try QToolBinary.run(["merge", model, "--adapter", lora, "-o", folder + "/single", "--quiet"]).status == 0)
        let inputShards = Fixtures.listing(sharded).filter { $0.hasSuffix(".safetensors") }
        #expect(Fixtures.listing(folder + "/sharded").filter { $0.hasSuffix(".safetensors") } == inputShards)
        #expect(
            Fixtures.bytes(folder + "/sharded/model.safetensors.index.json") == Fixtures.bytes(sharded + "/model.safetensors.index.json"))
        let a = try SafeTensorsModel(path: folder + "/sharded").tensors(), b = try SafeTensorsModel(path: folder + "/single").tensors()
        #expect(Set(a.names) == Set(b.names))
        for name in a.names { #expect(a[name]!.isIdentical(to: b[name]!), "\(name)") }
        for file in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
            #expect(Fixtures.bytes(folder + "/single/" + file) == Fixtures.bytes(model + "/" + file), "\(file)")
        }
    }

    /// The merge splits its work by rows in a way fixed by the shapes: any thread count, same bytes.
    @Test func threadCountDoesNotChangeTheOutput() throws {
        let folder = Fixtures.temporaryFolder()
        for threads in ["1", "3"] {
            let result = try QToolBinary.run([
                "merge", model, "--adapter", Fixtures.path("lora/dora"), "--adapter", lora + "=0.3", "-o", folder + "/t\(threads)",
                "--threads", threads, "--quiet",
            ])
            #expect(result.status == 0, "\(result.stderr)")
        }
        #expect(Fixtures.bytes(folder + "/t1/model.safetensors") == Fixtures.bytes(folder + "/t3/model.safetensors"))
    }

    @Test func dryRunListsChangesAndWritesNothing() throws {
        let folder = Fixtures.temporaryFolder()
        let result = try QToolBinary.run([
            "merge", model, "--adapter", Fixtures.path("lora/patterns"), "--adapter", lora + "=0.5", "--dry-run", "--json",
            "-o", folder + "/out",
        ])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(Fixtures.listing(folder).isEmpty)
        let report = try JSONParser.parse(result.stdout)
        let changes = try #require(report["changes"]?.arrayValues)
        func scales(_ tensor: String) -> [Double] {
            changes.first { $0["tensor"]?.stringValue == tensor }?["changes"]?.arrayValues?.compactMap { $0["scale"]?.doubleValue } ?? []
        }
        // rank_pattern q_proj → 8 (alpha 8 / 8 = 1), then the second adapter: 16 / 8 · 0.5.
        #expect(scales("model.layers.0.self_attn.q_proj.weight") == [1, 1])
        // alpha_pattern v_proj → 32 over r 4, then 1.
        #expect(scales("model.layers.0.self_attn.v_proj.weight") == [8, 1])
        #expect(scales("model.layers.1.mlp.down_proj.weight") == [4, 1])  // rank_pattern → 2, alpha 8
        #expect(scales("model.embed_tokens.weight") == [0.5])  // alpha_pattern 2 over r 4; stored whole too
        #expect(changes.count == 29)
    }

    static let badAdapters: [(String, String)] = [
        ("shape-mismatch", "module 'model.layers.0.self_attn.q_proj': its delta is [128, 100]"),
        ("missing-module", "module 'model.layers.9.self_attn.q_proj' is not in the base"),
        ("not-lora", "peft_type is IA3, not LORA"),
        ("broken-config", "adapter_config.json: not valid JSON"),
        ("string-alpha", "lora_alpha must be a number"),
        ("no-weights", "no adapter_model.safetensors (PEFT) or adapters.safetensors (mlx-lm)"),
        ("pickled", "qtool never unpickles"),
        ("no-config", "no adapter_config.json"),
        ("nan-weight", "q_proj.lora_A.weight': holds NaN or infinite values"),
        ("unpaired", "q_proj.lora_B.weight': has no matching lora_A"),
    ]

    @Test(arguments: badAdapters)
    func badAdapterExitsTwoAndWritesNothing(_ name: String, _ message: String) throws {
        let folder = Fixtures.temporaryFolder()
        let adapter = Fixtures.path("lora/malformed/" + name)
        let result = try QToolBinary.run(["merge", model, "--adapter", adapter, "-o", folder + "/out"])
        #expect(result.status == 2)
        #expect(result.stderr.hasPrefix("error: \(adapter): ") && result.stderr.contains(message), "\(result.stderr)")
        #expect(Fixtures.listing(folder).isEmpty)
    }

    @Test(arguments: [
        (["--adapter", "/no/such/adapter"], "no such adapter folder"),
        (["--adapter", Fixtures.path("lora/gpt2-conv1d")], "module 'transformer.h.0.attn.c_attn' is not in the base"),
    ])
    func badArgumentsExitTwo(_ flags: [String], _ message: String) throws {
        let folder = Fixtures.temporaryFolder()
        let result = try QToolBinary.run(["merge", model] + flags + ["-o", folder + "/out"])
        #expect(result.status == 2 && result.stderr.hasPrefix("error: ") && result.stderr.contains(message), "\(result.stderr)")
        #expect(Fixtures.listing(folder).isEmpty)
    }
}
