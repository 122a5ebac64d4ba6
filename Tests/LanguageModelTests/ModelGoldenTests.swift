import Foundation
import LanguageModel
import LoRAMerge
import Quantization
import SafetensorsFormat
import TensorCore
import Testing
import TestSupport

/// The decoder against transformers (and PEFT, and transformers + bitsandbytes) on the fixture
/// models (fixtures/models, made by fixtures/generate/model_goldens.py).
struct ModelGoldenTests {
    static let goldens: JSONValue = try! JSONParser.parse(
        String(decoding: Fixtures.bytes(Fixtures.path("models/goldens/goldens.json")), as: UTF8.self))
    static let cases: [String] = goldens["cases"]!.objectMembers!.map(\.key)
    static let aliases: [(model: String, goldens: String)] = goldens["aliases"]!.objectMembers!.map {
        ($0.key, $0.value["same_goldens_as"]!.stringValue!)
    }

    /// Logits within this share of their range: float32 against float32 (1e-4), or against
    /// bitsandbytes' 4-bit path, whose dequantized weights round the same but whose products sum
    /// in another order (2e-3).
    static func tolerance(_ name: String) -> Double { name.contains("nf4") ? 2e-3 : 1e-4 }

    static func load(model: String, adapter: String?, threads: Int = 2) throws -> LanguageModel {
        let folder = Fixtures.path("models/" + model)
        let config = try ModelConfig(json: Fixtures.bytes(folder + "/config.json"), path: folder)
        let tensors = try SafeTensorsModel(path: folder).tensors()
        let stored = Dictionary(
            try BitsandbytesLayout.storedTensors(tensors).map { ($0.name, $0.tensor) }, uniquingKeysWith: { _, last in last })
        var adapters: [(adapter: LoRAAdapter, weight: Float)] = []
        if let adapter {
            let path = Fixtures.path("models/" + adapter)
            let json = try JSONParser.parse(String(decoding: Fixtures.bytes(path + "/adapter_config.json"), as: UTF8.self))
            let weights = try SafeTensorsFile(path: path + "/adapter_model.safetensors").tensors()
            adapters.append((try LoRAAdapter(path: path, config: json, tensors: weights, layout: .peft), 1))
        }
        return try LanguageModel(config: config, tensors: stored, adapters: adapters, path: folder, threads: threads)
    }

    static func model(forCase name: String) throws -> LanguageModel {
        let entry = goldens["cases"]![name]!
        return try load(model: entry["model"]!.stringValue!, adapter: entry["adapter"]?.stringValue)
    }

    static func tensors(_ name: String) throws -> NamedTensors {
        try SafeTensorsFile(path: Fixtures.path("models/goldens/" + goldens["cases"]![name]!["golden"]!.stringValue!)).tensors()
    }

    static func ids(_ tensor: Tensor) -> [Int] { tensor.values(as: Int64.self).map { Int($0) } }

    /// The largest difference against the reference, as a share of the reference's range.
    static func relativeError(_ actual: [Float], _ expected: [Float]) -> Double {
        let range = Double((expected.max() ?? 0) - (expected.min() ?? 0))
        let worst = zip(actual, expected).map { abs(Double($0) - Double($1)) }.max() ?? 0
        return worst / max(range, 1e-30)
    }

    @Test func everyCaseIsThere() {
        #expect(
            Set(Self.cases).isSuperset(of: [
                "llama-gqa", "llama3-rope", "llama-linear-rope", "qwen2-tied", "llama-gqa-bnb-nf4",
                "llama-gqa+lora", "llama-gqa+dora", "llama-gqa+rslora", "llama-gqa-bnb-nf4+lora",
            ]))
    }

    @Test(arguments: cases)
    func logitsMatchTransformers(_ name: String) throws {
        let model = try Self.model(forCase: name)
        let golden = try Self.tensors(name)
        for index in 0..<3 {
            let ids = Self.ids(golden["seq\(index).ids"]!)
            let hidden = model.hiddenStates([ids])
            var logits = [Float](repeating: 0, count: ids.count * model.config.vocabSize)
            hidden.withUnsafeBufferPointer { h in
                logits.withUnsafeMutableBufferPointer { model.logits(hidden: h.baseAddress!, rows: ids.count, into: $0.baseAddress!) }
            }
            let error = Self.relativeError(logits, golden["seq\(index).logits"]!.values(as: Float.self))
            #expect(error <= Self.tolerance(name), "\(name) seq\(index): \(error) of the logit range")
            if index == 2 {
                let hiddenError = Self.relativeError(hidden, golden["seq2.hidden"]!.values(as: Float.self))
                #expect(hiddenError <= Self.tolerance(name), "\(name) hidden: \(hiddenError)")
            }
        }
    }

    /// The same config in transformers' older form (rope_theta and rope_scaling at the top) and
    /// Mistral's gives the goldens of the model it is an alias of.
    @Test(arguments: aliases.map(\.model))
    func aliasesGiveTheSameLogits(_ alias: String) throws {
        let target = Self.aliases.first { $0.model == alias }!.goldens
        let model = try Self.load(model: alias, adapter: nil)
        let golden = try Self.tensors(target)
        let ids = Self.ids(golden["seq2.ids"]!)
        let hidden = model.hiddenStates([ids])
        var logits = [Float](repeating: 0, count: ids.count * model.config.vocabSize)
        hidden.withUnsafeBufferPointer { h in
            logits.withUnsafeMutableBufferPointer { model.logits(hidden: h.baseAddress!, rows: ids.count, into: $0.baseAddress!) }
        }
        #expect(Self.relativeError(logits, golden["seq2.logits"]!.values(as: Float.self)) <= 1e-4)
    }

    /// Each line alone, truncated, summed over the next-token predictions: transformers' loss.
    @Test(arguments: cases)
    func evalLossMatchesTransformers(_ name: String) throws {
        let model = try Self.model(forCase: name)
        let entry = Self.goldens["cases"]![name]!
        let lines = entry["eval_ids"]!.arrayValues!.map { $0.arrayValues!.map { $0.integerValue! } }
        for key in ["eval", "eval_max16"] {
            let expected = entry[key]!
            let limit = expected["max_seq_len"]!.integerValue!
            let (sum, tokens) = model.negativeLogLikelihood(lines.map { Array($0.prefix(limit)) })
            #expect(tokens == expected["tokens"]!.integerValue!)
            let loss = sum / Double(tokens), reference = expected["loss"]!.doubleValue!
            #expect(abs(loss - reference) / reference <= Self.tolerance(name), "\(name) \(key): \(loss) against \(reference)")
        }
    }

    /// llama.cpp's perplexity method, on the tokens of ppl.txt.
    @Test(arguments: ["llama-gqa", "qwen2-tied", "llama-gqa-bnb-nf4"])
    func chunkedPerplexityMatches(_ name: String) throws {
        let model = try Self.model(forCase: name)
        let entry = Self.goldens["cases"]![name]!
        let expected = entry["perplexity_ctx32"]!
        let idsCase = name.hasPrefix("qwen2") ? "qwen2-tied" : "llama-gqa"
        let tokens = Self.ids(try Self.tensors(idsCase)["ppl.ids"]!)
        #expect(tokens.count == expected["file_tokens"]!.integerValue!)
        let bos = expected["first_token_replaced_by_bos"]!.boolValue! ? model.config.bosTokenID : nil
        let result = model.chunkedNegativeLogLikelihood(tokens, context: 32, bos: bos, batch: 3)
        #expect(result.chunks == expected["chunks"]!.integerValue! && result.scored == expected["scored_tokens"]!.integerValue!)
        let nll = result.sum / Double(result.scored), reference = expected["nll"]!.doubleValue!
        #expect(abs(nll - reference) / reference <= Self.tolerance(name), "\(name): \(nll) against \(reference)")
    }

    /// Greedy decoding with the key/value cache: transformers' `generate(do_sample=False)`.
    @Test(arguments: ["llama-gqa", "qwen2-tied", "llama-gqa+lora"])
    func greedyGenerationMatchesTransformers(_ name: String) throws {
        let model = try Self.model(forCase: name)
        let expected = Self.goldens["cases"]![name]!["generate"]!
        let prompt = expected["prompt_ids"]!.arrayValues!.map { $0.integerValue! }
        let produced = model.generate(
            prompt: prompt, maxTokens: expected["max_new_tokens"]!.integerValue!, stop: [expected["eos_token_id"]!.integerValue!],
            sampler: Sampler())
        #expect(produced == expected["new_ids"]!.arrayValues!.map { $0.integerValue! })
    }

    /// A long sequence (several attention blocks) run whole, and run in pieces through the
    /// key/value cache, give the same hidden states.
    @Test(arguments: ["llama-gqa", "qwen2-tied"])
    func cachedPiecesGiveTheWholeForward(_ name: String) throws {
        let model = try Self.model(forCase: name)
        let tokens = (0..<300).map { ($0 * 37 + 11) % model.config.vocabSize }
        let whole = model.hiddenStates([tokens])
        let cache = LanguageModel.Cache(model: model)
        var pieces: [Float] = []
        for range in [0..<1, 1..<150, 150..<151, 151..<300] { pieces += model.hiddenStates([Array(tokens[range])], cache: cache) }
        #expect(cache.length == 300)
        #expect(Self.relativeError(pieces, whole) <= 1e-5)
    }

    /// Sequences of different lengths in one batch give what each gives alone.
    @Test func aBatchGivesWhatEachSequenceGivesAlone() throws {
        let model = try Self.load(model: "llama-gqa", adapter: nil)
        let a = [1, 300, 301, 302, 303], b = [1, 400, 401]
        let together = model.hiddenStates([a, b])
        let alone = model.hiddenStates([a]) + model.hiddenStates([b])
        #expect(Self.relativeError(together, alone) <= 1e-6)
    }
}

/// A model that does not fit its config, or a config qtool cannot run: errors naming the problem.
struct ModelConfigErrorTests {
    static func config(_ edit: (inout [String: Any]) -> Void) throws -> [UInt8] {
        var object =
            try JSONSerialization.jsonObject(with: Data(Fixtures.bytes(Fixtures.path("models/llama-gqa/config.json")))) as! [String: Any]
        edit(&object)
        return Array(try JSONSerialization.data(withJSONObject: object))
    }

    @Test func unsupportedArchitectureIsNamed() throws {
        let bytes = try Self.config { $0["model_type"] = "gpt2" }
        #expect(throws: ModelError.self) { try ModelConfig(json: bytes, path: "c") }
        do {
            _ = try ModelConfig(json: bytes, path: "c")
        } catch {
            #expect(error.problem.contains("gpt2"))
        }
    }

    @Test func badConfigValuesAreRefused() throws {
        for edit: (inout [String: Any]) -> Void in [
            { $0["hidden_size"] = -4 }, { $0["num_key_value_heads"] = 3 }, { $0["head_dim"] = 7 }, { $0.removeValue(forKey: "vocab_size") },
            { $0["rope_parameters"] = ["rope_type": "yarn", "factor": 2.0, "rope_theta": 10000.0] },
        ] {
            let bytes = try Self.config(edit)
            #expect(throws: ModelError.self) { try ModelConfig(json: bytes, path: "c") }
        }
        #expect(throws: ModelError.self) { try ModelConfig(json: Array("not json".utf8), path: "c") }
    }

    @Test func weightsThatDoNotFitTheConfigAreNamed() throws {
        let folder = Fixtures.path("models/llama-gqa")
        let tensors = try SafeTensorsModel(path: folder).tensors()
        var stored: [String: StoredTensor] = [:]
        for (name, tensor) in tensors.entries { stored[name] = .plain(tensor) }
        // A vocabulary larger than the embedding.
        var config = try ModelConfig(json: Fixtures.bytes(folder + "/config.json"), path: folder)
        config.vocabSize += 1
        do {
            _ = try LanguageModel(config: config, tensors: stored, path: folder)
            Issue.record("a vocabulary that does not fit the embedding was accepted")
        } catch let error as ModelError {
            #expect(error.problem.contains("model.embed_tokens.weight"))
        }
        // A missing tensor.
        let right = try ModelConfig(json: Fixtures.bytes(folder + "/config.json"), path: folder)
        var missing = stored
        missing["model.layers.1.mlp.up_proj.weight"] = nil
        do {
            _ = try LanguageModel(config: right, tensors: missing, path: folder)
            Issue.record("a missing tensor was accepted")
        } catch let error as ModelError {
            #expect(error.problem.contains("model.layers.1.mlp.up_proj.weight") && error.problem.contains("missing"))
        }
    }
}

/// The sliding window (Mistral), on a one-layer model: RoPE makes attention depend on relative
/// positions only, so with a window of 4 the last token of a sequence sees exactly what it sees
/// when only the last 4 tokens are run.
struct SlidingWindowTests {
    static func model(window: Int?) throws -> LanguageModel {
        var config = try ModelConfig(json: Fixtures.bytes(Fixtures.path("models/mistral/config.json")), path: "mistral")
        config.layers = 1
        config.slidingWindow = window
        let folder = Fixtures.path("models/llama-gqa")
        let tensors = try SafeTensorsModel(path: folder).tensors()
        var stored: [String: StoredTensor] = [:]
        for (name, tensor) in tensors.entries where !name.hasPrefix("model.layers.1.") { stored[name] = .plain(tensor) }
        return try LanguageModel(config: config, tensors: stored, path: folder, threads: 2)
    }

    @Test func theLastTokenSeesOnlyTheWindow() throws {
        let tokens = [1, 300, 301, 302, 303, 304, 305, 306, 307, 308]
        let windowed = try Self.model(window: 4)
        let whole = windowed.hiddenStates([tokens])
        let tail = windowed.hiddenStates([Array(tokens.suffix(4))])
        let d = windowed.config.hiddenSize
        let last = Array(whole[(whole.count - d)...]), alone = Array(tail[(tail.count - d)...])
        #expect(ModelGoldenTests.relativeError(last, alone) <= 1e-5)
        // Without the window the same token sees all ten, and differs.
        let full = try Self.model(window: nil).hiddenStates([tokens])
        #expect(ModelGoldenTests.relativeError(Array(full[(full.count - d)...]), alone) > 1e-3)
    }
}
