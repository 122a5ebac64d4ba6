import Synchronization
import TensorCore

/// A tokenizer read from a Hugging Face `tokenizer.json` (and `tokenizer_config.json` beside it),
/// encoding and decoding as the `tokenizers` library does.
///
/// BPE models only: byte-level ones (GPT-2, Llama 3, Qwen2) and byte-fallback ones with Metaspace
/// or the Prepend/Replace normalizers (Llama 2, Mistral, TinyLlama). Text flows as in tokenizers:
/// added tokens are found first (in the raw text, then the normalized tokens in normalized text),
/// the rest is normalized, cut into words by the pre-tokenizer, merged by the model, and the
/// post-processor's template adds its special tokens. Tokens are byte strings throughout.
public final class Tokenizer: Sendable {
    /// The tokenizer.json this came from (named in errors).
    public let path: String
    /// The beginning-of-sequence token: tokenizer_config.json's `bos_token`, else the first special
    /// token the post-processor puts before the text.
    public let bosTokenID: Int?
    /// End-of-sequence tokens: tokenizer_config.json's `eos_token`, else the last special token
    /// the post-processor puts after the text.
    public let eosTokenIDs: [Int]
    /// The number of distinct tokens, model vocabulary and added tokens (tokenizers'
    /// `get_vocab_size(with_added_tokens=True)`).
    public let vocabularySize: Int

    /// Ids are below this (a limit far above any real vocabulary's, so that a hostile id cannot
    /// make qtool allocate a table of billions of entries).
    public static let maximumTokenID = (1 << 22) - 1
    /// The largest tokenizer.json qtool reads (real ones are tens of megabytes at most).
    public static let maximumFileBytes = 512 << 20
    /// The largest tokenizer_config.json (chat templates make some a few hundred kilobytes).
    public static let maximumConfigBytes = 64 << 20

    let model: BPEModel
    let normalizer: [NormalizerStep]
    let preTokenizer: PreTokenizer
    let postProcessor: PostProcessor
    /// nil: tokens are joined with spaces (tokenizers without a decoder).
    let decoder: [DecoderStep]?
    let addedTokens: [AddedToken]
    let rawMatcher: AddedTokenMatcher
    let normalizedMatcher: AddedTokenMatcher
    /// The model's vocabulary: token bytes (as written) to id, and id to entry.
    let vocabulary: ByteTable
    let vocabularyEntries: [Int32]
    /// Added tokens by id (index into `addedTokens`, -1 for none) and by content.
    let addedByID: [Int32]
    let addedByContent: ByteTable
    /// The contents of special added tokens (decoding can skip tokens spelled as one of them).
    let specialContents: ByteTable
    private let scratchPool = Mutex<[EncodingScratch]>([])

    /// Reads `path`: a model folder holding tokenizer.json, or a tokenizer.json file; a
    /// tokenizer_config.json in the same folder gives the bos and eos tokens.
    public convenience init(path: String) throws {
        var jsonPath = path
        if FilePaths.isDirectory(path) {
            jsonPath = path + (path.hasSuffix("/") ? "" : "/") + "tokenizer.json"
            guard FilePaths.exists(jsonPath) else {
                throw TokenizerError.missingFile(path: path, problem: "no tokenizer.json in this folder")
            }
        } else if !FilePaths.exists(path) {
            throw TokenizerError.missingFile(path: path, problem: "no such file or folder")
        }
        let configPath = FilePaths.directory(of: jsonPath) + "/tokenizer_config.json"
        let json = try Self.read(jsonPath, limit: Self.maximumFileBytes)
        let config = FilePaths.exists(configPath) ? try Self.read(configPath, limit: Self.maximumConfigBytes) : nil
        try self.init(json: json, config: config, path: jsonPath, configPath: configPath)
    }

    private static func read(_ path: String, limit: Int) throws -> [UInt8] {
        let file = try MappedFile(path: path)
        guard file.count <= limit else {
            throw TokenizerError.invalidField(
                path: path, field: "(file)", problem: "\(file.count) bytes, more than qtool's limit of \(limit) for this file")
        }
        return file.withBytes(in: 0..<file.count) { Array($0) }
    }

    /// A tokenizer from the bytes of a tokenizer.json and, optionally, of its
    /// tokenizer_config.json; `path` (and `configPath`) name the files in errors.
    public init(json: [UInt8], config: [UInt8]?, path: String, configPath: String? = nil) throws(TokenizerError) {
        self.path = path
        let root = TokenizerJSON(try Self.parse(json, path: path), field: "", file: path)
        guard root.value.objectMembers != nil else { throw root.invalid("expected a JSON object, found \(root.value.kindName)") }
        if let version = try root.member("version"), try version.string() != "1.0" {
            throw version.unsupported("unknown tokenizer version '\(try version.string())'")
        }

        let modelJSON = try root.required("model")
        try BPEModel.checkType(modelJSON)
        normalizer = try root.member("normalizer").map { (json) throws(TokenizerError) in try NormalizerStep.parse(json) } ?? []
        preTokenizer = try root.member("pre_tokenizer").map { (json) throws(TokenizerError) in try PreTokenizer(json) } ?? PreTokenizer()
        postProcessor =
            try root.member("post_processor").map { (json) throws(TokenizerError) in try PostProcessor(json) } ?? PostProcessor()
        decoder = try root.member("decoder").map { (json) throws(TokenizerError) in try DecoderStep.parse(json) }
        let loaded = try BPEModel(modelJSON, byteLevel: preTokenizer.byteLevel)
        model = loaded
        vocabulary = loaded.writtenVocabulary
        vocabularyEntries = loaded.entries

        // tokenizers ignores the ids written in added_tokens: a token the vocabulary has takes its
        // id there, the others the ids after the vocabulary, in order.
        var added: [AddedToken] = []
        var addedByContent = ByteTable()
        var specialContents = ByteTable()
        var nextID = Int32(loaded.writtenVocabulary.count)
        for entry in try root.member("added_tokens")?.elements() ?? [] {
            let content = Array(try entry.required("content").string().utf8)
            _ = try entry.required("id").integer(in: 0...Int(UInt32.max))
            if content.isEmpty { continue }
            let special = try entry.flag("special", absent: false)
            let normalized = try entry.flag("normalized", absent: !special)
            var token = AddedToken(
                id: 0, content: content, form: content, special: special, singleWord: try entry.flag("single_word", absent: false),
                leftStrip: try entry.flag("lstrip", absent: false), rightStrip: try entry.flag("rstrip", absent: false),
                normalized: normalized)
            if normalized && !normalizer.isEmpty { token.form = NormalizerStep.apply(normalizer, to: content) }
            if special { specialContents.insert(content, value: 0) }
            if let existing = addedByContent.find(content) {
                token.id = added[Int(existing)].id
                added[Int(existing)] = token
                continue
            }
            if let id = loaded.writtenVocabulary.find(content) {
                token.id = id
            } else {
                guard Int(nextID) <= Self.maximumTokenID else {
                    throw entry.invalid("more tokens than qtool's limit of \(Self.maximumTokenID + 1)")
                }
                token.id = nextID
                nextID += 1
            }
            addedByContent.insert(content, value: Int32(added.count))
            added.append(token)
        }
        addedTokens = added
        self.addedByContent = addedByContent
        self.specialContents = specialContents
        rawMatcher = AddedTokenMatcher(added, normalized: false)
        normalizedMatcher = AddedTokenMatcher(added, normalized: true)
        let largestID = max(loaded.entries.count - 1, added.map { Int($0.id) }.max() ?? -1)
        var byID = [Int32](repeating: -1, count: largestID + 1)
        for (index, token) in added.enumerated() { byID[Int(token.id)] = Int32(index) }
        addedByID = byID
        // tokenizers would emit an id the vocabulary lacks; such a template is a broken file.
        func namesToken(_ id: Int) -> Bool {
            id < byID.count && (byID[id] >= 0 || (id < loaded.entries.count && loaded.entries[id] >= 0))
        }
        for case .special(let ids) in postProcessor.templates.joined() {
            if let id = ids.first(where: { !namesToken(Int($0)) }) {
                throw root.invalid("post_processor: special token id \(id) names no token of the vocabulary")
            }
        }
        vocabularySize = loaded.writtenVocabulary.count + added.filter { loaded.writtenVocabulary.find($0.content) == nil }.count

        let special = try Self.configuredSpecialTokens(config, path: configPath ?? FilePaths.directory(of: path) + "/tokenizer_config.json")
        func id(_ token: [UInt8]?) -> Int? {
            guard let token else { return nil }
            if let index = addedByContent.find(token) { return Int(added[Int(index)].id) }
            return loaded.writtenVocabulary.find(token).map(Int.init)
        }
        let around = postProcessor.specialsAround
        bosTokenID = special.configured ? id(special.bos) : around.before.map(Int.init)
        let eos = special.configured ? id(special.eos) : around.after.map(Int.init)
        eosTokenIDs = eos.map { [$0] } ?? []
    }

    private static func parse(_ bytes: [UInt8], path: String) throws(TokenizerError) -> JSONValue {
        let parsed: Result<JSONValue, JSONParseError> = bytes.withUnsafeBytes { buffer in
            Result { () throws(JSONParseError) in try JSONParser.parse(buffer) }
        }
        switch parsed {
        case .success(let value): return value
        case .failure(let error): throw .notJSON(path: path, problem: error.description)
        }
    }

    /// tokenizer_config.json's `bos_token` and `eos_token` (strings, or objects with `content`
    /// as older transformers wrote them); `configured` is false without the file.
    private static func configuredSpecialTokens(
        _ config: [UInt8]?, path: String
    ) throws(TokenizerError) -> (configured: Bool, bos: [UInt8]?, eos: [UInt8]?) {
        guard let config else { return (false, nil, nil) }
        let root = TokenizerJSON(try parse(config, path: path), field: "", file: path)
        guard root.value.objectMembers != nil else { throw root.invalid("expected a JSON object, found \(root.value.kindName)") }
        func token(_ key: String) throws(TokenizerError) -> [UInt8]? {
            guard let value = try root.member(key) else { return nil }
            if value.value.objectMembers != nil { return Array(try value.required("content").string().utf8) }
            return Array(try value.string().utf8)
        }
        return (true, try token("bos_token"), try token("eos_token"))
    }

    // MARK: Encoding

    /// The ids of `text`; with `addSpecialTokens`, the post-processor's special tokens too (a
    /// Llama's beginning-of-sequence token).
    public func encode(_ text: String, addSpecialTokens: Bool = true) -> [Int] {
        var ids: [Int32] = []
        var scratch = scratchPool.withLock { $0.popLast() } ?? EncodingScratch()
        var text = text
        text.withUTF8 { text in model.withVocabulary { encode(text, vocabulary: $0, into: &ids, scratch: &scratch) } }
        scratchPool.withLock { pool in if pool.count < 4 { pool.append(scratch) } }
        return postProcessor.process(ids, addSpecialTokens: addSpecialTokens).map { Int($0) }
    }

    private func encode(
        _ text: UnsafeBufferPointer<UInt8>, vocabulary: ByteTable.View, into ids: inout [Int32], scratch: inout EncodingScratch
    ) {
        ids.reserveCapacity(text.count / 3)
        for segment in rawMatcher.segments(text, tokens: addedTokens) {
            if let token = segment.token {
                ids.append(addedTokens[token].id)
                continue
            }
            guard !segment.range.isEmpty else { continue }
            let piece = UnsafeBufferPointer(rebasing: text[segment.range])
            let atStart = segment.range.lowerBound == 0
            if normalizer.isEmpty {
                encodeNormalized(piece, atStart: atStart, vocabulary: vocabulary, into: &ids, scratch: &scratch)
            } else {
                let normalized = NormalizerStep.apply(normalizer, to: Array(piece))
                normalized.withUnsafeBufferPointer {
                    encodeNormalized($0, atStart: atStart, vocabulary: vocabulary, into: &ids, scratch: &scratch)
                }
            }
        }
    }

    /// Normalized text: its normalized added tokens, and words for the model between them.
    private func encodeNormalized(
        _ text: UnsafeBufferPointer<UInt8>, atStart: Bool, vocabulary: ByteTable.View, into ids: inout [Int32],
        scratch: inout EncodingScratch
    ) {
        let model = self.model
        for segment in normalizedMatcher.segments(text, tokens: addedTokens) {
            if let token = segment.token {
                ids.append(addedTokens[token].id)
                continue
            }
            guard !segment.range.isEmpty else { continue }
            preTokenizer.words(UnsafeBufferPointer(rebasing: text[segment.range]), atStart: atStart && segment.range.lowerBound == 0) {
                model.tokenize($0, vocabulary: vocabulary, into: &ids, scratch: &scratch)
            }
        }
    }

    // MARK: Decoding and the vocabulary

    /// The text of `ids`, through the decoder; ids that name no token are left out, and special
    /// tokens too with `skipSpecialTokens`.
    public func decode(_ ids: [Int], skipSpecialTokens: Bool = false) -> String {
        var tokens: [[UInt8]] = []
        tokens.reserveCapacity(ids.count)
        for id in ids {
            guard let token = token(id) else { continue }
            if skipSpecialTokens && specialContents.find(token) != nil { continue }
            tokens.append(token)
        }
        guard let decoder else {
            return String(decoding: Array(tokens.joined(separator: [0x20])), as: UTF8.self)
        }
        for step in decoder { tokens = step.apply(tokens) }
        return String(decoding: Array(tokens.joined()), as: UTF8.self)
    }

    /// The token of `id` as the vocabulary spells it (an added token as it is matched: its
    /// normalized form when it is normalized), or nil for an id that names none.
    public func token(_ id: Int) -> [UInt8]? {
        guard id >= 0 else { return nil }
        if id < addedByID.count, addedByID[id] >= 0 { return addedTokens[Int(addedByID[id])].form }
        guard id < vocabularyEntries.count, vocabularyEntries[id] >= 0 else { return nil }
        return Array(vocabulary.key(at: Int(vocabularyEntries[id])))
    }

    /// The id of the token spelled `token` (an added token's content, or a vocabulary entry).
    public func id(of token: [UInt8]) -> Int? {
        if let index = addedByContent.find(token) { return Int(addedTokens[Int(index)].id) }
        return vocabulary.find(token).map(Int.init)
    }

    /// Whether `id` is a special added token (decoding with `skipSpecialTokens` leaves it out).
    public func isSpecial(_ id: Int) -> Bool {
        guard let token = token(id) else { return false }
        return specialContents.find(token) != nil
    }
}
