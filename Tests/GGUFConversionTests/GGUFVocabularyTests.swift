import Foundation
import GGUFConversion
import GGUFFormat
import TensorCore
import TestSupport
import Testing
import Tokenizer

/// The tokenizer's way into GGUF metadata and back: a tokenizer.json rebuilt from the
/// `tokenizer.ggml.*` keys qtool writes tokenizes every golden text as Hugging Face does.
struct GGUFVocabularyTests {
    struct Case: Sendable, CustomStringConvertible {
        let name: String
        let folder: String
        var description: String { name }
    }

    /// The goldens, read by qtool's JSON parser (Foundation's drops a leading U+FEFF from strings).
    static let goldens: JSONValue =
        (try? Fixtures.bytes(Fixtures.path("tokenizers/goldens.json")).withUnsafeBytes { try JSONParser.parse($0) }) ?? .null

    static func json(_ path: String) -> JSONValue? {
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        return try? Fixtures.bytes(path).withUnsafeBytes { try JSONParser.parse($0) }
    }

    /// The metadata qtool writes for a tokenizer folder, for an embedding of `rows` rows.
    static func metadata(_ folder: String, rows: Int? = nil) throws -> [(key: String, value: GGUFValue)] {
        let tokenizer = try Tokenizer(path: folder)
        return try GGUFVocabulary.metadata(
            tokenizer: tokenizer, tokenizerJSON: json(folder + "/tokenizer.json")!, rows: rows ?? tokenizer.vocabularySize,
            tokenizerConfig: json(folder + "/tokenizer_config.json"), modelConfig: json(folder + "/config.json"), chatTemplateFile: nil,
            architecture: "llama")
    }

    static let written: [Case] = [
        "gpt2-bytelevel", "llama3-bytelevel", "qwen2-bytelevel", "llama2-metaspace", "llama2-legacy", "tiny-llama",
    ]
    .map { Case(name: $0, folder: Fixtures.path(goldens["tokenizers"]?[$0]?["path"]?.stringValue ?? "tokenizers/\($0)")) }

    /// Every golden text but those holding an added token with `lstrip`, `rstrip` or
    /// `single_word`: GGUF has no field for those flags (llama.cpp's vocabulary knows only a
    /// token's type), so no GGUF tokenizer can honour them. SentencePiece vocabularies come back
    /// as llama.cpp runs them (a "▁" before the text and after each special token, every space a
    /// "▁": Llama 2's legacy normalizers); a Metaspace tokenizer with prepend_scheme "first"
    /// differs from that after a special token and before leading spaces, so those texts are
    /// left out for it.
    @Test(arguments: written)
    func rebuiltTokenizerEncodesAsHuggingFace(_ item: Case) throws {
        let entries = try Self.metadata(item.folder)
        let files = try GGUFTokenizerFiles.files(GGUFMetadata(entries), path: item.name, contextLength: 512)
        let rebuilt = try Tokenizer(json: files.tokenizer, config: files.config, path: item.name + " (rebuilt)")
        let flagged = try Tokenizer(path: item.folder).exported().addedTokens.filter { $0.leftStrip || $0.rightStrip || $0.singleWord }.map(
            \.content)
        let cases = Self.goldens["tokenizers"]?[item.name]?["cases"]?.arrayValues ?? []
        var compared = 0
        for golden in cases {
            let text = golden["text"]?.stringValue ?? ""
            if flagged.contains(where: { text.contains($0) }) { continue }
            if item.name == "llama2-metaspace"
                && (text.first?.isWhitespace == true || Self.addedContents(item.folder).contains(where: { text.contains($0) }))
            {
                continue
            }
            let ids = golden["ids"]?.arrayValues?.compactMap(\.integerValue) ?? []
            let plain = golden["ids_without_special"]?.arrayValues?.compactMap(\.integerValue) ?? []
            let name = golden["name"]?.stringValue ?? ""
            #expect(rebuilt.encode(text) == ids, "\(item.name) '\(name)'")
            #expect(rebuilt.encode(text, addSpecialTokens: false) == plain, "\(item.name) '\(name)' without special tokens")
            compared += 1
        }
        #expect(compared >= 30, "\(compared) of \(cases.count) texts compared")
    }

    @Test func byteLevelPreTokenizersAreNamedFromTheirSplit() throws {
        func pre(_ name: String) throws -> String? {
            try Self.metadata(Fixtures.path("tokenizers/\(name)")).first { $0.key == "tokenizer.ggml.pre" }?.value.string
        }
        #expect(try pre("gpt2-bytelevel") == "gpt-2")
        #expect(try pre("llama3-bytelevel") == "llama-bpe")
        #expect(try pre("qwen2-bytelevel") == "qwen2")
    }

    /// A pre-tokenizer llama.cpp has no equivalent for is refused, not written as "default".
    @Test(arguments: ["qwen35-bytelevel", "gpt2-prefix-space"])
    func unidentifiedPreTokenizersAreRefused(_ name: String) throws {
        #expect(throws: GGUFVocabulary.Refusal.self) { try Self.metadata(Fixtures.path("tokenizers/\(name)")) }
    }

    static func addedContents(_ folder: String) -> [String] {
        ((try? Tokenizer(path: folder))?.exported().addedTokens ?? []).map(\.content)
    }

    /// SentencePiece-style vocabularies: scores follow the merge ranks (llama.cpp merges the
    /// highest-scoring pair first), byte tokens are BYTE, special tokens CONTROL, rows padded.
    @Test func sentencePieceScoresAndTypes() throws {
        let folder = Fixtures.path("models/llama-gqa")
        let tokenizer = try Tokenizer(path: folder)
        let entries = GGUFMetadata(try Self.metadata(folder, rows: tokenizer.vocabularySize + 3))
        let tokens = entries["tokenizer.ggml.tokens"]?.elements?.compactMap(\.string) ?? []
        let scores = entries["tokenizer.ggml.scores"]?.elements?.compactMap(\.number) ?? []
        let types = entries["tokenizer.ggml.token_type"]?.elements?.compactMap(\.integer) ?? []
        #expect(tokens.count == tokenizer.vocabularySize + 3 && scores.count == tokens.count && types.count == tokens.count)
        #expect(entries["tokenizer.ggml.model"]?.string == "llama")
        #expect(tokens.last == "[PAD\(tokens.count - 1)]" && types.last == 5)
        #expect(types[1] == 3 && types[2] == 3, "<s> and </s> are control tokens")
        #expect(tokens[3] == "<0x00>" && types[3] == 6)
        let export = tokenizer.exported()
        let index = Dictionary(
            export.tokens.enumerated().compactMap { id, token in token.map { ($0, id) } }, uniquingKeysWith: { a, _ in a })
        var previous = Double.infinity
        for merge in export.merges.prefix(50) {
            let id = try #require(index[merge.0 + merge.1])
            #expect(scores[id] <= previous, "merge \(merge) scores in rank order")
            previous = scores[id]
        }
    }

    /// gguf-py's size label.
    @Test func sizeLabels() {
        #expect(GGUFModelMetadata.sizeLabel(164_032) == "164K")
        #expect(GGUFModelMetadata.sizeLabel(1_045_632) == "1.0M")
        #expect(GGUFModelMetadata.sizeLabel(134_515_008) == "135M")
        #expect(GGUFModelMetadata.sizeLabel(7_241_732_096) == "7.2B")
        #expect(GGUFModelMetadata.title("llama-gqa") == "Llama Gqa")
        #expect(GGUFModelMetadata.title("SmolLM2-135M") == "SmolLM2 135M")
        #expect(GGUFModelMetadata.title("qwen2-v1.5") == "Qwen2 v1.5")
    }

    /// llama.cpp's q/k permutation and its inverse.
    @Test func rowPermutation() throws {
        let order = try #require(LlamaCppLayout.permutedRows(rows: 8, heads: 2))
        #expect(order == [0, 2, 1, 3, 4, 6, 5, 7])
        let inverse = try #require(LlamaCppLayout.unpermutedRows(rows: 8, heads: 2))
        #expect(order.indices.allSatisfy { inverse[order[$0]] == $0 })
        #expect(LlamaCppLayout.permutedRows(rows: 6, heads: 2) == nil)
        #expect(LlamaCppLayout.ggufName("model.layers.12.self_attn.q_proj.weight") == "blk.12.attn_q.weight")
        #expect(LlamaCppLayout.transformersName("blk.3.ffn_down.weight") == "model.layers.3.mlp.down_proj.weight")
        #expect(LlamaCppLayout.ggufName("model.layers.01.mlp.up_proj.weight") == nil)
    }
}
