import Foundation
import TensorCore
import Testing
import TestSupport

/// `qtool eval` and `qtool generate` end to end, against transformers' goldens
/// (fixtures/models/goldens/goldens.json), and their refusals.
struct ModelCommandTests {
    static let goldens: JSONValue = try! JSONParser.parse(
        String(decoding: Fixtures.bytes(Fixtures.path("models/goldens/goldens.json")), as: UTF8.self))
    let models = Fixtures.path("models")

    static func json(_ text: String) throws -> JSONValue { try JSONParser.parse(text) }

    @Test(arguments: [("llama-gqa", nil), ("qwen2-tied", nil), ("llama-gqa-bnb-nf4", "llama-gqa-lora"), ("llama-gqa", "llama-gqa-dora")])
    func evalGivesTransformersLoss(_ model: String, _ adapter: String?) throws {
        let name = model + (adapter.map { "+" + $0.replacingOccurrences(of: "llama-gqa-", with: "") } ?? "")
        let expected = Self.goldens["cases"]![name]!["eval"]!
        var arguments = [
            "eval", models + "/" + model, "--data", models + "/eval.jsonl", "--max-seq-len", "64", "--json", "--batch-size", "3",
        ]
        if let adapter { arguments += ["--adapter", models + "/" + adapter] }
        let result = try QToolBinary.run(arguments)
        #expect(result.status == 0, "\(result.stderr)")
        let report = try Self.json(result.stdout)
        let loss = report["loss"]!.doubleValue!, reference = expected["loss"]!.doubleValue!
        let tolerance = model.contains("nf4") ? 2e-3 : 1e-4
        #expect(abs(loss - reference) / reference <= tolerance, "\(name): \(loss) against \(reference)")
        #expect(report["tokens"]!.integerValue! == expected["tokens"]!.integerValue!)
        #expect(report["sequences"]!.integerValue! == 8)
        #expect(abs(report["perplexity"]!.doubleValue! - Foundation.exp(loss)) <= 1e-9 * Foundation.exp(loss))
        #expect(report["tokens_per_second"]!.doubleValue! > 0)
    }

    /// qtool's own .nf4 of the float model (carrying config.json and tokenizer.json) evaluates
    /// as transformers + bitsandbytes evaluates its 4-bit load of the same model.
    @Test func ownNF4EvaluatesAsBitsandbytes() throws {
        let folder = Fixtures.temporaryFolder()
        #expect(try QToolBinary.run(["quantize", models + "/llama-gqa", folder + "/m.nf4", "--quiet"]).status == 0)
        let result = try QToolBinary.run(["eval", folder + "/m.nf4", "--data", models + "/eval.jsonl", "--max-seq-len", "64", "--json"])
        #expect(result.status == 0, "\(result.stderr)")
        let loss = try Self.json(result.stdout)["loss"]!.doubleValue!
        let reference = Self.goldens["cases"]!["llama-gqa-bnb-nf4"]!["eval"]!["loss"]!.doubleValue!
        #expect(abs(loss - reference) / reference <= 2e-3, "\(loss) against \(reference)")
    }

    @Test(arguments: ["llama-gqa", "qwen2-tied"])
    func textPerplexityIsLlamaCppsMethod(_ model: String) throws {
        let expected = Self.goldens["cases"]![model]!["perplexity_ctx32"]!
        let result = try QToolBinary.run(["eval", models + "/" + model, "--text", models + "/ppl.txt", "--ctx", "32", "--json"])
        #expect(result.status == 0, "\(result.stderr)")
        let report = try Self.json(result.stdout)
        #expect(report["chunks"]!.integerValue! == expected["chunks"]!.integerValue!)
        #expect(report["tokens"]!.integerValue! == expected["scored_tokens"]!.integerValue!)
        let ppl = report["perplexity"]!.doubleValue!, reference = expected["ppl"]!.doubleValue!
        #expect(abs(ppl - reference) / reference <= 1e-3, "\(ppl) against \(reference)")
    }

    @Test(arguments: ["llama-gqa", "qwen2-tied"])
    func greedyGenerationIsTransformers(_ model: String) throws {
        let expected = Self.goldens["cases"]![model]!["generate"]!
        let result = try QToolBinary.run([
            "generate", models + "/" + model, "--prompt", expected["prompt"]!.stringValue!, "--max-tokens", "20", "--json",
        ])
        #expect(result.status == 0, "\(result.stderr)")
        let report = try Self.json(result.stdout)
        #expect(report["prompt_ids"]!.arrayValues!.map(\.integerValue) == expected["prompt_ids"]!.arrayValues!.map(\.integerValue))
        #expect(report["ids"]!.arrayValues!.map(\.integerValue) == expected["new_ids"]!.arrayValues!.map(\.integerValue))
        // Streamed, the same tokens come out as text.
        let streamed = try QToolBinary.run([
            "generate", models + "/" + model, "--prompt", expected["prompt"]!.stringValue!, "--max-tokens", "20", "--quiet",
        ])
        #expect(streamed.status == 0)
        #expect(streamed.stdout == report["text"]!.stringValue! + "\n")
    }

    @Test func sampledGenerationFollowsItsSeed() throws {
        func run(_ seed: String) throws -> String {
            let result = try QToolBinary.run([
                "generate", models + "/llama-gqa", "--prompt", "The", "--max-tokens", "12", "--temperature", "0.9", "--top-p", "0.9",
                "--seed", seed, "--json",
            ])
            #expect(result.status == 0)
            return try Self.json(result.stdout)["ids"]!.serialized(.compact)
        }
        #expect(try run("3") == run("3"))
        #expect(try run("3") != run("4"))
    }

    /// Bad input: exit 2 and `error: <file>: <what is wrong>`.
    @Test func badInputExitsTwoNamingTheProblem() throws {
        let folder = Fixtures.temporaryFolder()
        func write(_ name: String, _ text: String) -> String {
            let path = folder + "/" + name
            _ = FileManager.default.createFile(atPath: path, contents: Data(text.utf8))
            return path
        }
        let model = models + "/llama-gqa"
        let cases: [([String], String)] = [
            (["eval", model, "--data", write("bad.jsonl", "{\"text\": \"a\"}\n{\"text\": \"b\"}\n{\"txt\": 1}\n")], "line 3"),
            (["eval", model, "--data", write("broken.jsonl", "{\"text\": \"a\"}\nnot json\n")], "line 2"),
            (["eval", model, "--data", write("empty.jsonl", "")], "holds no lines"),
            (["eval", model, "--data", write("short.jsonl", "{\"text\": \"\"}\n")], "nothing to predict"),
            (["eval", model, "--text", write("tiny.txt", "hi"), "--ctx", "64"], "fewer than one chunk"),
            (["eval", Fixtures.path("lora/bases/tiny-qwen2"), "--data", models + "/eval.jsonl"], "tokenizer.json"),
            (["eval", model, "--data", folder + "/missing.jsonl"], "cannot open: No such file or directory"),
        ]
        for (arguments, problem) in cases {
            let result = try QToolBinary.run(arguments)
            #expect(result.status == 2, "\(arguments): \(result.stderr)")
            #expect(result.stderr.hasPrefix("error: ") && result.stderr.contains(problem), "\(arguments): \(result.stderr)")
        }
        // A config qtool cannot run, and weights that do not fit it.
        let copy = folder + "/model"
        try FileManager.default.createDirectory(atPath: copy, withIntermediateDirectories: true)
        for file in ["model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
            try FileManager.default.copyItem(atPath: model + "/" + file, toPath: copy + "/" + file)
        }
        let config = String(decoding: Fixtures.bytes(model + "/config.json"), as: UTF8.self)
        for (edited, problem) in [
            (config.replacingOccurrences(of: "\"model_type\": \"llama\"", with: "\"model_type\": \"gpt_neox\""), "gpt_neox"),
            (config.replacingOccurrences(of: "\"intermediate_size\": 192", with: "\"intermediate_size\": 200"), "mlp"),
        ] {
            #expect(edited != config)
            _ = FileManager.default.createFile(atPath: copy + "/config.json", contents: Data(edited.utf8))
            let result = try QToolBinary.run(["eval", copy, "--data", models + "/eval.jsonl"])
            #expect(result.status == 2, "\(result.stderr)")
            #expect(result.stderr.hasPrefix("error: ") && result.stderr.contains(problem), "\(result.stderr)")
        }
    }
}
