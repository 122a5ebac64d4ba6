import GGUFFormat
import TensorCore
import Tokenizer

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
public enum GGUFTokenType: Int32, Sendable {
    case normal = 1
    case unknown = 2
    case control = 3
    case userDefined = 4
    case unused = 5
    case byte = 6
}

/// The tokenizer as llama.cpp reads it from GGUF metadata (`tokenizer.ggml.*`), made from a
/// tokenizer.json through the Tokenizer module, and the way back.
public enum GGUFVocabulary {
    /// What cannot be written for llama.cpp.
    public struct Refusal: Error, CustomStringConvertible {
        public let description: String
    }

    /// The llama.cpp pre-tokenizer (`tokenizer.ggml.pre`) that runs the same split as a byte-level
    /// tokenizer's, identified from its pre-tokenizer (not from a hash of its vocabulary).
    public static func preTokenizer(_ export: TokenizerExport) throws(Refusal) -> String {
        guard case .byteLevel(let split, let prefixSpace) = export.preTokenization else {
            throw Refusal(description: "not a byte-level tokenizer")
        }
        guard !prefixSpace else {
            throw Refusal(
                description: "its ByteLevel pre-tokenizer adds a prefix space, which no llama.cpp pre-tokenizer does; "
                    + "refusing rather than writing one that tokenizes differently")
        }
        switch split {
        case "gpt2": return "gpt-2"
        case "llama3": return "llama-bpe"
        case "qwen2": return "qwen2"
        case let other:
            throw Refusal(
                description: "its pre-tokenizer (\(other.map { "split pattern \($0)" } ?? "ByteLevel without a split pattern")) has no "
                    + "llama.cpp equivalent qtool can name (gpt-2, llama-bpe, qwen2); refusing rather than writing \"default\"")
        }
    }

    /// The `tokenizer.*` metadata of a model whose embedding has `rows` rows: tokens padded to
    /// `rows`, types, merges or scores, special ids, `add_bos_token`, the chat template.
    /// `tokenizerConfig` and `modelConfig` are the JSON of tokenizer_config.json and config.json;
    /// `chatTemplateFile` the text of chat_template.jinja when there is one.
    public static func metadata(
        tokenizer: Tokenizer, tokenizerJSON: JSONValue, rows: Int, tokenizerConfig: JSONValue?, modelConfig: JSONValue?,
        chatTemplateFile: String?, architecture: String
    ) throws(Refusal) -> [(key: String, value: GGUFValue)] {
        let export = tokenizer.exported()
        var entries: [(key: String, value: GGUFValue)] = []
        // LlamaModel.set_vocab: tokenizer_config.json's add_prefix_space, before the vocabulary.
        if architecture == "llama", let flag = tokenizerConfig?["add_prefix_space"]?.boolValue {
            entries.append(("tokenizer.ggml.add_space_prefix", .bool(flag)))
        }
        let isByteLevel: Bool
        switch export.preTokenization {
        case .byteLevel: isByteLevel = true
        case .metaspace, .none:
            guard export.byteFallback else {
                throw Refusal(description: "a BPE tokenizer neither byte-level nor with byte_fallback has no llama.cpp equivalent")
            }
            isByteLevel = false
        case .split(let name):
            throw Refusal(description: "a \(name) split without ByteLevel has no llama.cpp equivalent")
        }
        let pre = isByteLevel ? try preTokenizer(export) : "default"
        let added = Dictionary(export.addedTokens.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
        let largestID = max(export.tokens.count - 1, export.addedTokens.map(\.id).max() ?? -1)
        guard largestID < rows else {
            throw Refusal(description: "the tokenizer has token id \(largestID), beyond the embedding's \(rows) rows")
        }
        var tokens: [String] = []
        var types: [GGUFTokenType] = []
        tokens.reserveCapacity(rows)
        types.reserveCapacity(rows)
        for id in 0..<rows {
            if let token = added[id] {
                tokens.append(token.content)
                if token.special || looksSpecial(token.content) {
                    types.append(.control)
                } else {
                    // llama.cpp expects user-defined tokens pre-normalized (convert_hf_to_gguf).
                    types.append(.userDefined)
                    if isByteLevel { tokens[tokens.count - 1] = token.content.replacingOccurrences(of: "\u{2581}", with: " ") }
                }
            } else if id < export.tokens.count, let token = export.tokens[id] {
                tokens.append(token)
                if !isByteLevel && isByteToken(token) {
                    types.append(.byte)
                } else {
                    types.append(.normal)
                }
            } else {
                tokens.append("[PAD\(id)]")
                types.append(.unused)
            }
        }
        if isByteLevel {
            entries.append(("tokenizer.ggml.model", .string("gpt2")))
            entries.append(("tokenizer.ggml.pre", .string(pre)))
            entries.append(("tokenizer.ggml.tokens", .strings(tokens)))
            entries.append(("tokenizer.ggml.token_type", .array(.int32, types.map { .int32($0.rawValue) })))
            // gguf-py spells a space inside a merge's token as U+0120, as the byte alphabet does.
            func spaced(_ part: String) -> String { part.replacingOccurrences(of: " ", with: "\u{0120}") }
            entries.append(("tokenizer.ggml.merges", .strings(export.merges.map { spaced($0.0) + " " + spaced($0.1) })))
        } else {
            entries.append(("tokenizer.ggml.model", .string("llama")))
            entries.append(("tokenizer.ggml.pre", .string(pre)))
            entries.append(("tokenizer.ggml.tokens", .strings(tokens)))
            entries.append(("tokenizer.ggml.scores", .array(.float32, scores(export, rows: rows).map(GGUFValue.float32))))
            entries.append(("tokenizer.ggml.token_type", .array(.int32, types.map { .int32($0.rawValue) })))
            if case .metaspace(_, let prepend, _) = export.preTokenization, prepend == "never",
                !entries.contains(where: { $0.key == "tokenizer.ggml.add_space_prefix" })
            {
                entries.append(("tokenizer.ggml.add_space_prefix", .bool(false)))
            }
        }
        entries += specialTokens(
            tokenizerJSON: tokenizerJSON, tokenizerConfig: tokenizerConfig, modelConfig: modelConfig,
            vocabularyLimit: isByteLevel ? nil : rows)
        if let template = tokenizerConfig?["chat_template"] {
            if let text = template.stringValue {
                entries.append(("tokenizer.chat_template", .string(text)))
            } else if let list = template.arrayValues {
                // Named templates: "default" as the template, the others by name.
                for item in list {
                    guard let name = item["name"]?.stringValue, let text = item["template"]?.stringValue else { continue }
                    entries.append((name == "default" ? "tokenizer.chat_template" : "tokenizer.chat_template.\(name)", .string(text)))
                }
            }
        } else if let chatTemplateFile {
            entries.append(("tokenizer.chat_template", .string(chatTemplateFile)))
        }
        return entries
    }

    /// convert_hf_to_gguf's `does_token_look_special`.
    static func looksSpecial(_ token: String) -> Bool {
        ["<pad>", "<mask>", "<2mass>", "[@BOS@]"].contains(token) || (token.hasPrefix("<|") && token.hasSuffix("|>"))
            || (token.hasPrefix("<\u{FF5C}") && token.hasSuffix("\u{FF5C}>")) || (token.hasPrefix("<unused") && token.hasSuffix(">"))
    }

    static func isByteToken(_ token: String) -> Bool {
        let bytes = Array(token.utf8)
        func hex(_ b: UInt8) -> Bool { (48...57).contains(b) || (65...70).contains(b) || (97...102).contains(b) }
        return bytes.count == 6 && bytes[0..<3].elementsEqual("<0x".utf8) && hex(bytes[3]) && hex(bytes[4]) && bytes[5] == UInt8(ascii: ">")
    }

    /// Scores for llama.cpp's SentencePiece tokenizer, which merges the adjacent pair whose joined
    /// token scores highest: a token made by the merge of rank r scores −r, so llama.cpp merges in
    /// tokenizer.json's order; tokens no merge makes score −1e9 (merged last), bytes and
    /// special tokens 0 (never merged into).
    static func scores(_ export: TokenizerExport, rows: Int) -> [Float] {
        var scores = [Float](repeating: -1e9, count: rows)
        // Keyed by bytes: String equality is canonical equivalence, tokens are byte strings.
        var index: [[UInt8]: Int] = [:]
        for (id, token) in export.tokens.enumerated() { if let token { index[Array(token.utf8)] = id } }
        for (rank, merge) in export.merges.enumerated().reversed() {
            if let id = index[Array(merge.0.utf8) + Array(merge.1.utf8)], id < rows { scores[id] = -Float(rank) }
        }
        for (id, token) in export.tokens.enumerated() where id < rows {
            if let token, isByteToken(token) || id == export.unknownTokenID { scores[id] = 0 }
        }
        for token in export.addedTokens where token.id < rows { scores[token.id] = 0 }
        return scores
    }

    /// gguf-py's `SpecialVocab`, step for step: whether BOS/EOS/SEP are added (read from the
    /// post-processor, then tokenizer_config.json's `add_<type>_token`), and the ids of bos, eos,
    /// unk, sep, pad, mask (eot/eom when the template's last token is not the eos) from
    /// tokenizer_config.json's tokens matched to tokenizer.json's added tokens, else config.json.
    static func specialTokens(
        tokenizerJSON: JSONValue, tokenizerConfig: JSONValue?, modelConfig: JSONValue?, vocabularyLimit: Int?
    ) -> [(key: String, value: GGUFValue)] {
        var types = ["bos", "eos", "unk", "sep", "pad", "cls", "mask"]
        // tokenizer_config.json's token entries, as gguf-py reads and edits them.
        var configTokens: [String: JSONValue] = [:]
        for member in tokenizerConfig?.objectMembers ?? [] where member.key.hasSuffix("_token") { configTokens[member.key] = member.value }
        let hasConfig = tokenizerConfig?.objectMembers.map { !$0.isEmpty } ?? false
        var adds: [(String, Bool)] = []
        func setAdd(_ type: String, _ value: Bool) {
            if let index = adds.firstIndex(where: { $0.0 == type }) { adds[index].1 = value } else { adds.append((type, value)) }
        }
        func truthy(_ value: JSONValue?) -> Bool {
            switch value {
            case .none, .null?: false
            case .string(let s)?: !s.isEmpty
            case .bool(let b)?: b
            default: true
            }
        }
        var bos = configTokens["bos_token"]
        var cls = configTokens["cls_token"]
        var eos = configTokens["eos_token"]
        let sep = configTokens["sep_token"]
        if !truthy(bos) && truthy(cls) && hasConfig { bos = cls; configTokens["bos_token"] = cls }
        if !truthy(eos) && truthy(sep) && hasConfig { eos = sep; configTokens["eos_token"] = sep }
        if let processor = tokenizerJSON["post_processor"], processor != .null {
            let processors = processor["processors"]?.arrayValues ?? [processor]
            for processor in processors {
                switch processor["type"]?.stringValue {
                case "ByteLevel":
                    if !adds.contains(where: { $0.0 == "bos" }) { adds.append(("bos", false)) }
                    if !adds.contains(where: { $0.0 == "eos" }) { adds.append(("eos", false)) }
                case "RobertaProcessing":
                    setAdd("bos", true)
                    setAdd("eos", true)
                    setAdd("sep", true)
                case "TemplateProcessing":
                    let single = processor["single"]?.arrayValues ?? []
                    var pair = processor["pair"]?.arrayValues ?? []
                    func specialID(_ piece: JSONValue?) -> JSONValue? {
                        guard let id = piece?["SpecialToken"]?["id"], truthy(id) else { return nil }
                        return id
                    }
                    var first: JSONValue? = nil
                    var last: JSONValue? = nil
                    if single.count > 1 {
                        first = specialID(single.first)
                        if let first {
                            if !hasConfig {
                                bos = first
                            } else if first != bos && first != cls {
                                if !truthy(bos) { bos = first; configTokens["bos_token"] = first }
                                if !truthy(cls) { cls = first; configTokens["cls_token"] = first }
                            }
                            setAdd("bos", first == bos || first == cls)
                        }
                        last = specialID(single.last)
                        if let last {
                            if !hasConfig {
                                eos = last
                            } else if last != eos {
                                if !types.contains("eot") {
                                    types.append("eot")
                                    configTokens["eot_token"] = eos ?? .null
                                } else if !types.contains("eom") {
                                    types.append("eom")
                                    configTokens["eom_token"] = eos ?? .null
                                }
                                eos = last
                                configTokens["eos_token"] = last
                            }
                            setAdd("eos", last == eos)
                        }
                    }
                    if !pair.isEmpty {
                        let start = first != nil && specialID(pair.first) == first ? 1 : 0
                        let stop = last != nil && specialID(pair.last) == last ? pair.count - 1 : pair.count
                        pair = start < stop ? Array(pair[start..<stop]) : []
                        if !pair.isEmpty {
                            let a = pair.first?["Sequence"]?["id"]?.stringValue
                            let b = pair.last?["Sequence"]?["id"]?.stringValue
                            if a == "A", b == "B", pair.count > 2 {
                                let middle = Array(pair[1..<(pair.count - 1)])
                                var addSep = false
                                let separator = configTokens["sep_token"]
                                if let entry = specialID(middle.first), entry == separator || entry == eos, last == nil { addSep = true }
                                if middle.count == 2, let entry = specialID(middle[1]), entry == separator || entry == eos { addSep = true }
                                setAdd("sep", addSep)
                                if addSep && !truthy(separator) && hasConfig { configTokens["sep_token"] = eos ?? .null }
                            }
                        }
                    }
                default: break
                }
            }
        }
        var ids: [(String, Int)] = []
        func setID(_ type: String, _ id: Int?) {
            guard let id, id >= 0, !ids.contains(where: { $0.0 == type }) else { return }
            if let vocabularyLimit, id >= vocabularyLimit { return }
            ids.append((type, id))
        }
        if hasConfig {
            let added = tokenizerJSON["added_tokens"]?.arrayValues ?? []
            for type in types {
                if let flag = tokenizerConfig?["add_\(type)_token"]?.boolValue, !adds.contains(where: { $0.0 == type }) {
                    adds.append((type, flag))
                }
                guard let entry = configTokens["\(type)_token"] else { continue }
                guard let content = entry.stringValue ?? entry["content"]?.stringValue else { continue }
                setID(type, added.first { $0["content"]?.stringValue == content }?["id"]?.integerValue)
            }
        }
        for type in types { setID(type, modelConfig?["\(type)_token_id"]?.integerValue) }
        let idKeys = [
            "bos": "bos", "eos": "eos", "unk": "unknown", "sep": "seperator", "pad": "padding", "mask": "mask", "eot": "eot", "eom": "eom",
        ]
        var entries: [(key: String, value: GGUFValue)] = []
        for (type, id) in ids {
            guard let key = idKeys[type] else { continue }
            entries.append(("tokenizer.ggml.\(key)_token_id", .uint32(UInt32(id))))
        }
        for (type, value) in adds where ["bos", "eos", "sep"].contains(type) {
            entries.append(("tokenizer.ggml.add_\(type)_token", .bool(value)))
        }
        return entries
    }
}
