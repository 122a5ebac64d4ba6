/// What a tokenizer is made of, for writing it in another format (llama.cpp's GGUF vocabulary):
/// its tokens as tokenizer.json writes them, merges, added tokens and pre-tokenization.
public struct TokenizerExport: Sendable {
    /// How text is cut into words before the model sees it.
    public enum PreTokenization: Equatable, Sendable {
        /// No pre-tokenizer.
        case none
        /// Byte-level: optionally split by a known pattern (`gpt2`, `llama3`, `qwen2`, `qwen35`),
        /// then mapped to GPT-2's byte alphabet; `prefixSpace`: ByteLevel's `add_prefix_space`.
        case byteLevel(split: String?, prefixSpace: Bool)
        /// Metaspace (SentencePiece style): spaces become `replacement`, prepended per `prepend`
        /// (`first`, `always`, `never`), words split at it when `split`.
        case metaspace(replacement: String, prepend: String, split: Bool)
        /// A split by a known pattern without the byte-level mapping.
        case split(String)
    }

    /// A token of tokenizer.json's `added_tokens`, with the id tokenizers gives it.
    public struct AddedTokenInfo: Sendable {
        public let id: Int
        public let content: String
        public let special: Bool
        public let normalized: Bool
        public let leftStrip: Bool
        public let rightStrip: Bool
        public let singleWord: Bool
    }

    /// The model's vocabulary by id, as written in tokenizer.json (nil for an id no token has).
    public let tokens: [String?]
    /// The merges in rank order, as written.
    public let merges: [(String, String)]
    public let addedTokens: [AddedTokenInfo]
    public let preTokenization: PreTokenization
    /// The normalizer steps, named: `NFC`, `Prepend:<text>`, `Replace:<pattern>:<content>`.
    public let normalizers: [String]
    public let byteFallback: Bool
    public let ignoreMerges: Bool
    public let unknownTokenID: Int?
    /// Whether the post-processor puts a special token before (after) the text.
    public let addsTokenBefore: Bool
    public let addsTokenAfter: Bool
}

extension Tokenizer {
    /// The tokenizer's parts, for writing it in another format.
    public func exported() -> TokenizerExport {
        func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }
        let tokens: [String?] = model.entries.map { entry in entry < 0 ? nil : text(Array(vocabulary.key(at: Int(entry)))) }
        let merges = model.mergeList.map { pair in
            (tokens[Int(pair.left)] ?? "", tokens[Int(pair.right)] ?? "")
        }
        var split: String? = nil
        var prefixSpace = false
        var pre: TokenizerExport.PreTokenization = .none
        for step in preTokenizer.steps {
            switch step {
            case .split(let pattern):
                switch pattern {
                case .gpt2: split = "gpt2"
                case .llama3(let digits, let marks): split = marks ? "qwen35" : (digits == 3 ? "llama3" : "qwen2")
                }
            case .prefixSpace: prefixSpace = true
            case .metaspace(let replacement, let prepend, let splits):
                let scheme =
                    switch prepend {
                    case .first: "first"
                    case .always: "always"
                    case .never: "never"
                    }
                pre = .metaspace(replacement: text(replacement), prepend: scheme, split: splits)
            }
        }
        if preTokenizer.byteLevel {
            pre = .byteLevel(split: split, prefixSpace: prefixSpace)
        } else if let split, pre == .none {
            pre = .split(split)
        }
        let normalizers = normalizer.map { step -> String in
            switch step {
            case .nfc: "NFC"
            case .prepend(let prefix): "Prepend:" + text(prefix)
            case .replace(let pattern, let content): "Replace:" + text(pattern) + ":" + text(content)
            }
        }
        let around = postProcessor.specialsAround
        return TokenizerExport(
            tokens: tokens, merges: merges,
            addedTokens: addedTokens.map {
                .init(
                    id: Int($0.id), content: text($0.content), special: $0.special, normalized: $0.normalized, leftStrip: $0.leftStrip,
                    rightStrip: $0.rightStrip, singleWord: $0.singleWord)
            },
            preTokenization: pre, normalizers: normalizers, byteFallback: !model.byteFallbackIDs.isEmpty, ignoreMerges: model.ignoreMerges,
            unknownTokenID: model.unknownID.map(Int.init), addsTokenBefore: around.before != nil, addsTokenAfter: around.after != nil)
    }
}
