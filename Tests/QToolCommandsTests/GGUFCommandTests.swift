import Foundation
import GGUFFormat
import SafetensorsFormat
import TensorCore
import TestSupport
import Testing

/// `qtool convert` / `merge` / `dequantize` / `inspect` with GGUF, held to the files llama.cpp's
/// own converters write (fixtures/gguf/reference, made by fixtures/generate/gguf_reference.py).
struct GGUFCommandTests {
    struct Reference: Sendable, CustomStringConvertible {
        let source: String
        let file: String
        let dtype: String
        var description: String { file }
    }

    static let references: [Reference] = [
        Reference(source: "models/llama-gqa", file: "llama-gqa-f32", dtype: "f32"),
        Reference(source: "models/llama-gqa", file: "llama-gqa-f16", dtype: "f16"),
        Reference(source: "models/llama-gqa", file: "llama-gqa-bf16", dtype: "bf16"),
        Reference(source: "models/llama-gqa", file: "llama-gqa-q8_0", dtype: "q8_0"),
        Reference(source: "models/mistral", file: "mistral-q8_0", dtype: "q8_0"),
        Reference(source: "models/llama3-rope", file: "llama3-rope-f32", dtype: "f32"),
        Reference(source: "models/qwen2-tied", file: "qwen2-tied-f16", dtype: "f16"),
        Reference(source: "models/qwen2-tied", file: "qwen2-tied-bf16", dtype: "bf16"),
        Reference(source: "models/qwen2-tied", file: "qwen2-tied-q8_0", dtype: "q8_0"),
        Reference(source: "tiny-llama", file: "tiny-llama-q8_0", dtype: "q8_0"),
        // Shards: tensors shard by shard, each shard's in name order, as the converter goes.
        Reference(source: "tiny-llama-sharded", file: "tiny-llama-sharded-bf16", dtype: "bf16"),
    ]

    /// The metadata (in order, types and values) and every tensor (name, type, dimensions,
    /// offset, bytes) of two GGUF files are equal, except the keys in `except`.
    static func expectSame(_ mine: GGUFFile, _ theirs: GGUFFile, except: Set<String> = [], _ label: String) {
        #expect(mine.metadata.entries.map(\.key) == theirs.metadata.entries.map(\.key), "\(label): metadata keys")
        for (key, value) in theirs.metadata.entries where !except.contains(key) {
            #expect(mine.metadata[key] == value, "\(label): \(key)")
        }
        #expect(mine.tensors.map(\.name) == theirs.tensors.map(\.name), "\(label): tensor order")
        for info in theirs.tensors {
            guard let other = mine.info(info.name) else { continue }
            #expect(other.type == info.type && other.dimensions == info.dimensions && other.offset == info.offset, "\(label): \(info.name)")
            let same = mine.rawTensor(other).withBytes { a in theirs.rawTensor(info).withBytes { b in a.elementsEqual(b) } }
            #expect(same, "\(label): \(info.name) bytes")
        }
    }

    /// Byte-level vocabularies: the whole file is llama.cpp's byte for byte. SentencePiece ones:
    /// everything but `tokenizer.ggml.scores`, where the converter writes -1000 for every token
    /// (llama.cpp then merges pairs in no particular order and tokenizes unlike transformers)
    /// and qtool writes the merge ranks.
    @Test(arguments: references)
    func convertEqualsLlamaCppConverter(_ reference: Reference) throws {
        let folder = Fixtures.temporaryFolder()
        let output = folder + "/" + reference.file + ".gguf"
        let result = try QToolBinary.run(["convert", Fixtures.path(reference.source), output, "--dtype", reference.dtype, "--quiet"])
        #expect(result.status == 0, "\(result.stderr)")
        let expected = Fixtures.path("gguf/reference/\(reference.file).gguf")
        let mine = try GGUFFile(path: output)
        let theirs = try GGUFFile(path: expected)
        if theirs.metadata["tokenizer.ggml.model"]?.string == "gpt2" {
            #expect(Fixtures.bytes(output) == Fixtures.bytes(expected), "byte-identical")
        } else {
            Self.expectSame(mine, theirs, except: ["tokenizer.ggml.scores"], reference.file)
        }
    }

    @Test(arguments: ["f32", "f16"])
    func adapterEqualsLlamaCppConverter(_ dtype: String) throws {
        let output = Fixtures.temporaryFolder() + "/adapter.gguf"
        let result = try QToolBinary.run([
            "convert", Fixtures.path("models/llama-gqa-lora"), output, "--base", Fixtures.path("models/llama-gqa"), "--dtype", dtype,
            "--quiet",
        ])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(Fixtures.bytes(output) == Fixtures.bytes(Fixtures.path("gguf/reference/llama-gqa-lora-\(dtype).gguf")))
    }

    /// rsLoRA: llama.cpp scales by alpha / r, so B carries the rest of PEFT's alpha / √r.
    @Test func rsLoRAScaleIsFoldedIntoB() throws {
        let folder = Fixtures.temporaryFolder()
        let result = try QToolBinary.run([
            "convert", Fixtures.path("models/llama-gqa-rslora"), folder + "/a.gguf", "--base", Fixtures.path("models/llama-gqa"), "--quiet",
        ])
        #expect(result.status == 0, "\(result.stderr)")
        let file = try GGUFFile(path: folder + "/a.gguf")
        let config = try JSONParser.parse(
            String(decoding: Fixtures.bytes(Fixtures.path("models/llama-gqa-rslora/adapter_config.json")), as: UTF8.self))
        let alpha = try #require(config["lora_alpha"]?.doubleValue)
        let rank = try #require(config["r"]?.integerValue)
        #expect(file.metadata["adapter.lora.alpha"] == .float32(Float(alpha)))
        let adapter = try SafeTensorsFile(path: Fixtures.path("models/llama-gqa-rslora/adapter_model.safetensors")).tensors()
        let name = "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"
        let b = try #require(adapter[name]).values(as: Float.self)
        let written = try file.tensor(try #require(file.info("blk.0.attn_v.weight.lora_b"))).values(as: Float.self)
        let correction = Float(alpha / Double(rank).squareRoot()) / (Float(alpha) / Float(rank))
        #expect(written == b.map { $0 * correction })
    }

    /// An embedding target: llama.cpp gathers rows of `token_embd.weight.lora_a` by token, so A
    /// [r, vocab] is stored transposed ([vocab, r] in torch order) and B [hidden, r] as it is;
    /// alpha_pattern's embed_tokens alpha (2, against lora_alpha 8) is folded into B. The saved
    /// base_layer (the base's own embedding) is skipped.
    @Test func embeddingAdapter() throws {
        let folder = Fixtures.temporaryFolder()
        let result = try QToolBinary.run([
            "convert", Fixtures.path("lora/patterns"), folder + "/a.gguf", "--base", Fixtures.path("tiny-llama"), "--quiet",
        ])
        #expect(result.status == 0, "\(result.stderr)")
        let file = try GGUFFile(path: folder + "/a.gguf")
        let adapter = try SafeTensorsFile(path: Fixtures.path("lora/patterns/adapter_model.safetensors")).tensors()
        let a = try #require(adapter["base_model.model.model.embed_tokens.lora_embedding_A"])
        let b = try #require(adapter["base_model.model.model.embed_tokens.lora_embedding_B"])
        let (rank, vocab) = (a.shape.dimensions[0], a.shape.dimensions[1])
        let storedA = try #require(file.info("token_embd.weight.lora_a"))
        let storedB = try #require(file.info("token_embd.weight.lora_b"))
        #expect(storedA.shape == [vocab, rank] && storedB.shape == b.shape)
        let aValues = a.values(as: Float.self)
        let transposed = (0..<(vocab * rank)).map { i in aValues[(i % rank) * vocab + i / rank] }
        #expect(try file.tensor(storedA).values(as: Float.self) == transposed)
        // PEFT's scale 2/4 against llama.cpp's alpha 8 / r 4: B times 1/4.
        #expect(file.metadata["adapter.lora.alpha"] == .float32(8))
        #expect(try file.tensor(storedB).values(as: Float.self) == b.values(as: Float.self).map { $0 * 0.25 })
    }

    /// qtool's own GGUF back to transformers: the same tensors (q/k rows un-permuted), a config
    /// qtool evaluates the same.
    @Test func ggufBackToTransformers() throws {
        let folder = Fixtures.temporaryFolder()
        for (source, name) in [("models/llama-gqa", "llama"), ("models/qwen2-tied", "qwen2")] {
            let gguf = folder + "/\(name).gguf"
            #expect(try QToolBinary.run(["convert", Fixtures.path(source), gguf, "--dtype", "f32", "--quiet"]).status == 0)
            let back = folder + "/\(name)-back"
            let result = try QToolBinary.run(["convert", gguf, back, "--quiet"])
            #expect(result.status == 0, "\(result.stderr)")
            let original = try SafeTensorsFile(path: Fixtures.path(source + "/model.safetensors")).tensors()
            let restored = try SafeTensorsFile(path: back + "/model.safetensors").tensors()
            #expect(Set(restored.names) == Set(original.names))
            for name in original.names {
                #expect(restored[name]?.values(as: Float.self) == original[name]?.values(as: Float.self), "\(name)")
            }
            let files = Fixtures.listing(back)
            #expect(files.contains("config.json") && files.contains("tokenizer.json") && files.contains("tokenizer_config.json"))
            // The same loss, tokenized by the rebuilt tokenizer.
            let text = Fixtures.path("models/ppl.txt")
            let a = try QToolBinary.run(["eval", Fixtures.path(source), "--text", text, "--ctx", "64", "--json", "--quiet"])
            let b = try QToolBinary.run(["eval", back, "--text", text, "--ctx", "64", "--json", "--quiet"])
            #expect(a.status == 0 && b.status == 0, "\(a.stderr) \(b.stderr)")
            let pa = try JSONParser.parse(a.stdout)["perplexity"]?.doubleValue
            let pb = try JSONParser.parse(b.stdout)["perplexity"]?.doubleValue
            #expect(pa != nil && pa == pb, "\(a.stdout) \(b.stdout)")
        }
    }

    /// `merge … -o out.gguf` writes what converting the merged folder writes.
    @Test func mergeToGGUFEqualsConvertOfTheMergedModel() throws {
        let folder = Fixtures.temporaryFolder()
        let args = [Fixtures.path("models/llama-gqa"), "--adapter", Fixtures.path("models/llama-gqa-lora"), "--dtype", "f16", "--quiet"]
        #expect(try QToolBinary.run(["merge"] + args + ["-o", folder + "/merged.gguf"]).status == 0)
        #expect(try QToolBinary.run(["merge"] + args + ["-o", folder + "/merged"]).status == 0)
        let other = folder + "/llama-gqa.gguf"  // named as the base, so general.name matches
        try FileManager.default.moveItem(atPath: folder + "/merged", toPath: folder + "/llama-gqa")
        #expect(try QToolBinary.run(["convert", folder + "/llama-gqa", other, "--dtype", "f16", "--quiet"]).status == 0)
        #expect(Fixtures.bytes(folder + "/merged.gguf") == Fixtures.bytes(other))
    }

    /// A 4-bit source: dequantized as bitsandbytes does, Q8_0 by default, and the output says so.
    @Test func fourBitSourceDefaultsToQ8_0() throws {
        let folder = Fixtures.temporaryFolder()
        let result = try QToolBinary.run(["convert", Fixtures.path("models/llama-gqa-bnb-nf4"), folder + "/m.gguf"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stderr.contains("Q8_0"))
        let file = try GGUFFile(path: folder + "/m.gguf")
        #expect(file.metadata["general.file_type"] == .uint32(7))
        #expect(file.info("blk.0.ffn_up.weight")?.type == .q8_0)
        #expect(file.info("blk.0.attn_norm.weight")?.type == .f32)
    }

    /// Q4_0 output: every matrix in Q4_0, read back within its rounding.
    @Test func q4_0Output() throws {
        let folder = Fixtures.temporaryFolder()
        #expect(
            try QToolBinary.run(["convert", Fixtures.path("models/llama-gqa"), folder + "/m.gguf", "--dtype", "q4_0", "--quiet"]).status
                == 0)
        let file = try GGUFFile(path: folder + "/m.gguf")
        #expect(file.metadata["general.file_type"] == .uint32(2))
        let source = try SafeTensorsFile(path: Fixtures.path("models/llama-gqa/model.safetensors")).tensors()
        let info = try #require(file.info("blk.0.ffn_down.weight"))
        #expect(info.type == .q4_0)
        let restored = try file.tensor(info).values(as: Float.self)
        let original = try #require(source["model.layers.0.mlp.down_proj.weight"]).values(as: Float.self)
        // Each value within half a step (d = max/8 of its block's largest magnitude), or one
        // step where the code clips at the far end (Q4_0 reaches 7d on the side opposite the max);
        // plus up to 8 codes times the float16 rounding of d (2⁻¹¹ of it).
        for block in 0..<(original.count / 32) {
            let range = (block * 32)..<((block + 1) * 32)
            let step = original[range].map(abs).max()! / 8
            for i in range {
                let clipped = abs(original[i]) > step * 7.5
                #expect(abs(restored[i] - original[i]) <= step * ((clipped ? 1 : 0.5) + 8.0 / 2048) + 1e-6)
            }
        }
    }

    /// `dequantize model.gguf out.safetensors`: the tensors as gguf-py's `dequantize` gives them.
    @Test func dequantizeKeepsGGUFNamesAndValues() throws {
        let folder = Fixtures.temporaryFolder()
        let input = Fixtures.path("gguf/reference/llama-gqa-q8_0.gguf")
        let result = try QToolBinary.run(["dequantize", input, folder + "/d.safetensors", "--quiet"])
        #expect(result.status == 0, "\(result.stderr)")
        let tensors = try SafeTensorsFile(path: folder + "/d.safetensors").tensors()
        let file = try GGUFFile(path: input)
        #expect(Set(tensors.names) == Set(file.tensors.map(\.name)))
        let q = try #require(file.info("blk.1.ffn_up.weight"))
        #expect(tensors["blk.1.ffn_up.weight"]?.shape == q.shape)
        #expect(tensors["blk.1.ffn_up.weight"]?.values(as: Float.self) == (try file.tensor(q).values(as: Float.self)))
    }

    @Test func inspectListsMetadata() throws {
        let result = try QToolBinary.run(["inspect", Fixtures.path("gguf/reference/qwen2-tied-q8_0.gguf"), "--json"])
        #expect(result.status == 0, "\(result.stderr)")
        let report = try JSONParser.parse(result.stdout)
        #expect(report["format"]?.stringValue == "gguf")
        let metadata = report["metadata"]?.arrayValues ?? []
        #expect(metadata.first?["value"]?.stringValue == "qwen2")
        #expect(metadata.contains { $0["key"]?.stringValue == "tokenizer.ggml.tokens" && $0["value"]?["count"]?.integerValue == 600 })
        let table = try QToolBinary.run(["inspect", Fixtures.path("gguf/reference/qwen2-tied-q8_0.gguf")])
        #expect(table.stdout.contains("tokenizer.ggml.pre (string) = \"qwen2\""))
    }

    struct Refusal: Sendable, CustomStringConvertible {
        let arguments: [String]
        let message: String
        var description: String { message }
    }

    /// What cannot be written is refused with exit 2 and a message naming it; nothing is left.
    @Test(arguments: [
        Refusal(arguments: ["convert", "models/llama-gqa-dora", "OUT/x.gguf", "--base", "models/llama-gqa"], message: "DoRA"),
        Refusal(arguments: ["convert", "models/llama-gqa-lora", "OUT/x.gguf"], message: "--base"),
        Refusal(arguments: ["convert", "gguf/metadata.gguf", "OUT/back"], message: "no transformers name"),
        Refusal(arguments: ["convert", "gguf/reference/llama-gqa-lora-f32.gguf", "OUT/back"], message: "adapter"),
        Refusal(arguments: ["convert", "gguf/reference/llama3-rope-f32.gguf", "OUT/back"], message: "rope_freqs"),
        Refusal(arguments: ["convert", "models/llama-gqa", "OUT/x.safetensors", "--dtype", "q8_0"], message: "must end in .gguf"),
    ])
    func refusals(_ refusal: Refusal) throws {
        let folder = Fixtures.temporaryFolder()
        let arguments = refusal.arguments.map { argument in
            argument.hasPrefix("OUT/") ? folder + argument.dropFirst(3) : (argument.contains("/") ? Fixtures.path(argument) : argument)
        }
        let result = try QToolBinary.run(arguments)
        #expect(result.status == 2 || result.status == 64, "\(result.stderr)")
        #expect(result.stderr.contains(refusal.message), "\(result.stderr)")
        #expect(Fixtures.listing(folder).isEmpty, "nothing written")
    }

    /// An unsupported architecture and an unidentified pre-tokenizer are named.
    @Test func unsupportedModelAndTokenizerAreNamed() throws {
        let folder = Fixtures.temporaryFolder()
        let model = folder + "/model"
        try FileManager.default.createDirectory(atPath: model, withIntermediateDirectories: true)
        for file in ["model.safetensors", "tokenizer_config.json"] {
            try FileManager.default.copyItem(atPath: Fixtures.path("models/qwen2-tied/" + file), toPath: model + "/" + file)
        }
        try FileManager.default.copyItem(
            atPath: Fixtures.path("tokenizers/qwen35-bytelevel/tokenizer.json"), toPath: model + "/tokenizer.json")
        var config = String(decoding: Fixtures.bytes(Fixtures.path("models/qwen2-tied/config.json")), as: UTF8.self)
        try config.write(toFile: model + "/config.json", atomically: true, encoding: .utf8)
        var result = try QToolBinary.run(["convert", model, folder + "/x.gguf"])
        #expect(result.status == 2 && result.stderr.contains("pre-tokenizer") && result.stderr.contains("default"), "\(result.stderr)")
        try FileManager.default.removeItem(atPath: model + "/config.json")
        result = try QToolBinary.run(["convert", model, folder + "/x.gguf"])
        #expect(result.status == 2 && result.stderr.contains("no config.json"), "\(result.stderr)")
        config = config.replacingOccurrences(of: "\"qwen2\"", with: "\"gemma\"")
        try config.write(toFile: model + "/config.json", atomically: true, encoding: .utf8)
        result = try QToolBinary.run(["convert", model, folder + "/x.gguf"])
        #expect(result.status == 2 && result.stderr.contains("gemma"), "\(result.stderr)")
        #expect(!FileManager.default.fileExists(atPath: folder + "/x.gguf"))
    }

    /// A damaged GGUF input is an error naming the file, never a crash.
    @Test func damagedInputIsAnError() throws {
        let folder = Fixtures.temporaryFolder()
        var bytes = Fixtures.bytes(Fixtures.path("gguf/reference/llama-gqa-q8_0.gguf"))
        bytes = Array(bytes.prefix(bytes.count - 1000))
        try Data(bytes).write(to: URL(fileURLWithPath: folder + "/cut.gguf"))
        for command in [["inspect"], ["dequantize"], ["convert"]] {
            let result = try QToolBinary.run(command + [folder + "/cut.gguf"] + (command == ["inspect"] ? [] : [folder + "/out"]))
            #expect(result.status == 2, "\(command): \(result.stderr)")
            #expect(result.stderr.hasPrefix("error: \(folder)/cut.gguf: truncated GGUF file"), "\(result.stderr)")
        }
    }
}
