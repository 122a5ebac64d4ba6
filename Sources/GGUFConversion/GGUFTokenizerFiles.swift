import GGUFFormat
import TensorCore

/// A Hugging Face tokenizer.json and tokenizer_config.json rebuilt from llama.cpp's
/// `tokenizer.ggml.*` metadata (the way back from `GGUFVocabulary`).
public enum GGUFTokenizerFiles {
    static let gpt2Pattern = #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#
    static let llama3Pattern =
        #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
    static let qwen2Pattern =
        #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#

    /// tokenizer.json and tokenizer_config.json, serialized.
    public static func files(_ metadata: GGUFMetadata, path: String, contextLength: Int?) throws -> (tokenizer: [UInt8], config: [UInt8]) {
        func fail(_ key: String, _ detail: String) -> GGUFError { .invalidMetadata(path: path, key: key, detail: detail) }
        guard let model = metadata["tokenizer.ggml.model"]?.string else {
            throw fail("tokenizer.ggml.model", "missing: the file has no tokenizer")
        }
        guard let tokenValues = metadata["tokenizer.ggml.tokens"]?.elements else {
            throw fail("tokenizer.ggml.tokens", "missing or not an array")
        }
        let tokens = try tokenValues.map { value -> String in
            guard let text = value.string else { throw fail("tokenizer.ggml.tokens", "holds a \(value.type), not strings") }
            return text
        }
        let types: [Int] = try (metadata["tokenizer.ggml.token_type"]?.elements ?? tokens.map { _ in .int32(1) }).map { value in
            guard let type = value.integer else { throw fail("tokenizer.ggml.token_type", "holds a \(value.type), not integers") }
            return type
        }
        guard types.count == tokens.count else {
            throw fail("tokenizer.ggml.token_type", "\(types.count) types for \(tokens.count) tokens")
        }
        func id(_ kind: String) -> Int? { metadata["tokenizer.ggml.\(kind)_token_id"]?.integer.flatMap { $0 < tokens.count ? $0 : nil } }
        let bos = id("bos")
        let eos = id("eos")
        let pad = id("padding")
        let unk = id("unknown")
        let addsBOS = metadata["tokenizer.ggml.add_bos_token"]?.bool ?? (model == "llama")
        let addsEOS = metadata["tokenizer.ggml.add_eos_token"]?.bool ?? false

        var vocab: [JSONMember] = []
        var added: [JSONValue] = []
        // Keyed by bytes: Swift's String equality is canonical equivalence ("à" == "a\u{300}"),
        // but tokens are byte strings.
        var seen = Set<[UInt8]>()
        for (id, token) in tokens.enumerated() {
            let type = GGUFTokenType(rawValue: Int32(clamping: types[id])) ?? .normal
            if type == .unused { continue }
            guard seen.insert(Array(token.utf8)).inserted else { continue }
            vocab.append(JSONMember(key: token, value: .number("\(id)")))
            if type == .control || type == .userDefined || (type == .unknown && model == "llama") {
                added.append(
                    .object([
                        JSONMember(key: "id", value: .number("\(id)")),
                        JSONMember(key: "content", value: .string(token)),
                        JSONMember(key: "single_word", value: .bool(false)),
                        JSONMember(key: "lstrip", value: .bool(false)),
                        JSONMember(key: "rstrip", value: .bool(false)),
                        JSONMember(key: "normalized", value: .bool(type == .userDefined)),
                        JSONMember(key: "special", value: .bool(type != .userDefined)),
                    ]))
            }
        }
        var merges: [JSONValue] = []
        var normalizer: JSONValue = .null
        let preTokenizer: JSONValue
        let decoder: JSONValue
        var byteFallback = false
        var ignoreMerges = false
        var unknownToken: JSONValue = .null
        func split(_ pattern: String) -> JSONValue {
            .object([
                JSONMember(key: "type", value: .string("Split")),
                JSONMember(key: "pattern", value: .object([JSONMember(key: "Regex", value: .string(pattern))])),
                JSONMember(key: "behavior", value: .string("Isolated")),
                JSONMember(key: "invert", value: .bool(false)),
            ])
        }
        func byteLevel(regex: Bool) -> JSONValue {
            .object([
                JSONMember(key: "type", value: .string("ByteLevel")),
                JSONMember(key: "add_prefix_space", value: .bool(false)),
                JSONMember(key: "trim_offsets", value: .bool(true)),
                JSONMember(key: "use_regex", value: .bool(regex)),
            ])
        }
        var prependsSpace = false
        switch model {
        case "gpt2":
            let pre = metadata["tokenizer.ggml.pre"]?.string ?? "default"
            switch pre {
            case "gpt-2", "default": preTokenizer = byteLevel(regex: true)
            case "llama-bpe", "llama3", "smaug-bpe":
                preTokenizer = .object([
                    JSONMember(key: "type", value: .string("Sequence")),
                    JSONMember(key: "pretokenizers", value: .array([split(llama3Pattern), byteLevel(regex: false)])),
                ])
                ignoreMerges = true
            case "qwen2":
                normalizer = .object([JSONMember(key: "type", value: .string("NFC"))])
                preTokenizer = .object([
                    JSONMember(key: "type", value: .string("Sequence")),
                    JSONMember(key: "pretokenizers", value: .array([split(qwen2Pattern), byteLevel(regex: false)])),
                ])
            default:
                throw fail(
                    "tokenizer.ggml.pre", "pre-tokenizer \"\(pre)\" is not one qtool can write as tokenizer.json (gpt-2, llama-bpe, qwen2)")
            }
            decoder = byteLevel(regex: true)
            for value in metadata["tokenizer.ggml.merges"]?.elements ?? [] {
                guard let text = value.string else { throw fail("tokenizer.ggml.merges", "holds a \(value.type), not strings") }
                let parts = text.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: false)
                guard parts.count == 2 else { throw fail("tokenizer.ggml.merges", "merge \"\(text)\" is not two tokens") }
                merges.append(.array([.string(String(parts[0])), .string(String(parts[1]))]))
            }
        case "llama":
            prependsSpace = metadata["tokenizer.ggml.add_space_prefix"]?.bool ?? true
            // llama.cpp's SentencePiece tokenizer puts "▁" before the text and after every
            // special token, and turns each space into "▁", without splitting: Llama 2's
            // original (legacy) normalizers do exactly that.
            var normalizers: [JSONValue] = []
            if prependsSpace {
                normalizers.append(
                    .object([JSONMember(key: "type", value: .string("Prepend")), JSONMember(key: "prepend", value: .string("\u{2581}"))]))
            }
            normalizers.append(
                .object([
                    JSONMember(key: "type", value: .string("Replace")),
                    JSONMember(key: "pattern", value: .object([JSONMember(key: "String", value: .string(" "))])),
                    JSONMember(key: "content", value: .string("\u{2581}")),
                ]))
            normalizer = .object([
                JSONMember(key: "type", value: .string("Sequence")), JSONMember(key: "normalizers", value: .array(normalizers)),
            ])
            preTokenizer = .null
            var steps: [JSONValue] = [
                .object([
                    JSONMember(key: "type", value: .string("Replace")),
                    JSONMember(key: "pattern", value: .object([JSONMember(key: "String", value: .string("\u{2581}"))])),
                    JSONMember(key: "content", value: .string(" ")),
                ]),
                .object([JSONMember(key: "type", value: .string("ByteFallback"))]),
                .object([JSONMember(key: "type", value: .string("Fuse"))]),
            ]
            if prependsSpace {
                steps.append(
                    .object([
                        JSONMember(key: "type", value: .string("Strip")),
                        JSONMember(key: "content", value: .string(" ")),
                        JSONMember(key: "start", value: .number("1")),
                        JSONMember(key: "stop", value: .number("0")),
                    ]))
            }
            decoder = .object([JSONMember(key: "type", value: .string("Sequence")), JSONMember(key: "decoders", value: .array(steps))])
            byteFallback = true
            if let unk { unknownToken = .string(tokens[unk]) }
            let scores: [Float] = try (metadata["tokenizer.ggml.scores"]?.elements ?? []).map { value in
                guard let score = value.number else { throw fail("tokenizer.ggml.scores", "holds a \(value.type), not numbers") }
                return Float(score)
            }
            guard scores.count == tokens.count else {
                throw fail(
                    "tokenizer.ggml.scores", "\(scores.count) scores for \(tokens.count) tokens (SentencePiece vocabularies need them)")
            }
            merges = sentencePieceMerges(tokens: tokens, types: types, scores: scores).map { .array([.string($0.0), .string($0.1)]) }
        default:
            throw fail("tokenizer.ggml.model", "tokenizer model \"\(model)\" is not supported (gpt2 and llama are)")
        }
        var postProcessor: JSONValue = .null
        if (addsBOS && bos != nil) || (addsEOS && eos != nil) {
            func special(_ id: Int) -> JSONValue {
                .object([
                    JSONMember(
                        key: "SpecialToken",
                        value: .object([JSONMember(key: "id", value: .string(tokens[id])), JSONMember(key: "type_id", value: .number("0"))])
                    )
                ])
            }
            func sequence(_ name: String) -> JSONValue {
                .object([
                    JSONMember(
                        key: "Sequence",
                        value: .object([JSONMember(key: "id", value: .string(name)), JSONMember(key: "type_id", value: .number("0"))]))
                ])
            }
            var single: [JSONValue] = []
            var pair: [JSONValue] = []
            if addsBOS, let bos { single.append(special(bos)) }
            single.append(sequence("A"))
            if addsEOS, let eos { single.append(special(eos)) }
            pair =
                single
                + single.map { piece in
                    if case .object(let members) = piece, members.first?.key == "Sequence" { return sequence("B") }
                    return piece
                }
            var specialTokens: [JSONMember] = []
            for id in [addsBOS ? bos : nil, addsEOS ? eos : nil].compactMap({ $0 })
            where !specialTokens.contains(where: { $0.key == tokens[id] }) {
                specialTokens.append(
                    JSONMember(
                        key: tokens[id],
                        value: .object([
                            JSONMember(key: "id", value: .string(tokens[id])),
                            JSONMember(key: "ids", value: .array([.number("\(id)")])),
                            JSONMember(key: "tokens", value: .array([.string(tokens[id])])),
                        ])))
            }
            postProcessor = .object([
                JSONMember(key: "type", value: .string("TemplateProcessing")),
                JSONMember(key: "single", value: .array(single)),
                JSONMember(key: "pair", value: .array(pair)),
                JSONMember(key: "special_tokens", value: .object(specialTokens)),
            ])
        } else if model == "gpt2" {
            postProcessor = .object([
                JSONMember(key: "type", value: .string("ByteLevel")),
                JSONMember(key: "add_prefix_space", value: .bool(false)),
                JSONMember(key: "trim_offsets", value: .bool(false)),
                JSONMember(key: "use_regex", value: .bool(false)),
            ])
        }
        let tokenizer = JSONValue.object([
            JSONMember(key: "version", value: .string("1.0")),
            JSONMember(key: "truncation", value: .null),
            JSONMember(key: "padding", value: .null),
            JSONMember(key: "added_tokens", value: .array(added)),
            JSONMember(key: "normalizer", value: normalizer),
            JSONMember(key: "pre_tokenizer", value: preTokenizer),
            JSONMember(key: "post_processor", value: postProcessor),
            JSONMember(key: "decoder", value: decoder),
            JSONMember(
                key: "model",
                value: .object([
                    JSONMember(key: "type", value: .string("BPE")),
                    JSONMember(key: "dropout", value: .null),
                    JSONMember(key: "unk_token", value: unknownToken),
                    JSONMember(key: "continuing_subword_prefix", value: .null),
                    JSONMember(key: "end_of_word_suffix", value: .null),
                    JSONMember(key: "fuse_unk", value: .bool(byteFallback)),
                    JSONMember(key: "byte_fallback", value: .bool(byteFallback)),
                    JSONMember(key: "ignore_merges", value: .bool(ignoreMerges)),
                    JSONMember(key: "vocab", value: .object(vocab)),
                    JSONMember(key: "merges", value: .array(merges)),
                ])),
        ])
        var config: [JSONMember] = [
            JSONMember(key: "add_bos_token", value: .bool(addsBOS)),
            JSONMember(key: "add_eos_token", value: .bool(addsEOS)),
        ]
        if let bos { config.append(JSONMember(key: "bos_token", value: .string(tokens[bos]))) }
        if let template = metadata["tokenizer.chat_template"]?.string {
            config.append(JSONMember(key: "chat_template", value: .string(template)))
        }
        config.append(JSONMember(key: "clean_up_tokenization_spaces", value: .bool(false)))
        if let eos { config.append(JSONMember(key: "eos_token", value: .string(tokens[eos]))) }
        if let contextLength { config.append(JSONMember(key: "model_max_length", value: .number("\(contextLength)"))) }
        if let pad { config.append(JSONMember(key: "pad_token", value: .string(tokens[pad]))) }
        config.append(JSONMember(key: "tokenizer_class", value: .string("PreTrainedTokenizerFast")))
        if let unk { config.append(JSONMember(key: "unk_token", value: .string(tokens[unk]))) }
        return (
            Array((tokenizer.serialized(.pythonDumps()) + "\n").utf8),
            Array((JSONValue.object(config).serialized(.pythonDumps()) + "\n").utf8)
        )
    }

    /// BPE merges of a SentencePiece vocabulary, as transformers' SentencePieceExtractor makes
    /// them: every split of a piece into two pieces of the vocabulary, pieces by descending score
    /// (ties in id order), the splits of one piece by the ids of their parts.
    static func sentencePieceMerges(tokens: [String], types: [Int], scores: [Float]) -> [(String, String)] {
        let mergeable: (Int) -> Bool = { id in
            let type = GGUFTokenType(rawValue: Int32(clamping: types[id]))
            return type == .normal || type == .userDefined
        }
        // Keyed by bytes (String equality would merge canonically equivalent tokens), cut at
        // Unicode scalars as Python cuts a str.
        var index: [[UInt8]: Int] = [:]
        for (id, token) in tokens.enumerated() where mergeable(id) && index[Array(token.utf8)] == nil { index[Array(token.utf8)] = id }
        var merges: [(left: String, right: String, score: Float, order: Int)] = []
        for (id, token) in tokens.enumerated() where mergeable(id) {
            let scalars = Array(token.unicodeScalars)
            guard scalars.count > 1 else { continue }
            var local: [(left: String, right: String, leftID: Int, rightID: Int)] = []
            for cut in 1..<scalars.count {
                var left = String.UnicodeScalarView()
                left.append(contentsOf: scalars[..<cut])
                var right = String.UnicodeScalarView()
                right.append(contentsOf: scalars[cut...])
                if let l = index[Array(String(left).utf8)], let r = index[Array(String(right).utf8)] {
                    local.append((String(left), String(right), l, r))
                }
            }
            local.sort { ($0.leftID, $0.rightID) < ($1.leftID, $1.rightID) }
            for piece in local { merges.append((piece.left, piece.right, scores[id], merges.count)) }
        }
        merges.sort { $0.score != $1.score ? $0.score > $1.score : $0.order < $1.order }
        return merges.map { ($0.left, $0.right) }
    }
}
