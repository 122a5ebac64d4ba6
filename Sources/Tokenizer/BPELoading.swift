import TensorCore

extension BPEModel {
    /// Refuses models other than BPE, by name (checked before the rest of the file).
    static func checkType(_ json: TokenizerJSON) throws(TokenizerError) {
        // Files from before "type" was written: a model with merges is BPE.
        var type = try json.member("merges") != nil ? "BPE" : "(no type)"
        if let written = try json.member("type") { type = try written.string() }
        guard type == "BPE" else {
            throw json.unsupported("model type \(type) is not supported; qtool reads BPE tokenizers only")
        }
    }

    /// The model of a tokenizer.json, its vocabulary as written (token bytes to id) and the entry
    /// of each id in it (-1 for ids no token has).
    struct Loaded {
        var model: BPEModel
        var vocabulary: ByteTable
        var entries: [Int32]
    }

    /// Reads `model` as tokenizers' BPE deserializer does, checking what it would fail on (a
    /// merge naming a token the vocabulary lacks) and what qtool needs (ids within bounds, one
    /// token an id). `byteLevel`: the pre-tokenizer maps text to GPT-2's byte alphabet.
    static func load(_ json: TokenizerJSON, byteLevel: Bool) throws(TokenizerError) -> Loaded {
        try checkType(json)
        if let dropout = try json.member("dropout") {
            guard let value = dropout.value.doubleValue, (0...1).contains(value) else {
                throw dropout.invalid("must be a number from 0 to 1")
            }
            guard value == 0 else { throw dropout.unsupported("BPE dropout (random merges) is not supported") }
        }
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if let affix = try json.member(key), try !affix.string().isEmpty {
                throw affix.unsupported("\(key) is not supported")
            }
        }

        let vocabularyJSON = try json.required("vocab")
        let members = try vocabularyJSON.members()
        var vocabulary = ByteTable(capacity: members.count)
        var largest = -1
        var ids: [Int32] = []
        ids.reserveCapacity(members.count)
        for member in members {
            let field = TokenizerJSON(
                member.value, field: "\(vocabularyJSON.field)[\(JSONStyle.report.quoted(member.key))]", file: json.file)
            let id = try field.integer(in: 0...Tokenizer.maximumTokenID)
            vocabulary.insert(Array(member.key.utf8), value: Int32(id))
            ids.append(Int32(id))
            largest = max(largest, id)
        }
        var entries = [Int32](repeating: -1, count: largest + 1)
        for (entry, id) in ids.enumerated() {
            guard entries[Int(id)] < 0 else {
                let first = String(decoding: vocabulary.key(at: Int(entries[Int(id)])), as: UTF8.self)
                let second = String(decoding: vocabulary.key(at: entry), as: UTF8.self)
                throw vocabularyJSON.invalid(
                    "id \(id) is given to two tokens, \(JSONStyle.report.quoted(first)) and \(JSONStyle.report.quoted(second))")
            }
            entries[Int(id)] = Int32(entry)
        }

        let mergesJSON = try json.required("merges")
        let mergeElements = try mergesJSON.elements()
        var merges = PairTable(capacity: mergeElements.count)
        var rank: UInt32 = 0
        for element in mergeElements {
            let parts: [String]
            if let text = element.value.stringValue {
                // The older form, "a b"; tokenizers skips a "#version" line of merges.txt.
                if text.hasPrefix("#version") { continue }
                parts = text.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
                guard parts.count == 2 else { throw element.invalid("expected two tokens separated by one space") }
            } else {
                parts = try element.elements().map { (part) throws(TokenizerError) in try part.string() }
                guard parts.count == 2 else { throw element.invalid("expected a pair of tokens") }
            }
            let left = Array(parts[0].utf8)
            let right = Array(parts[1].utf8)
            func id(_ token: [UInt8]) throws(TokenizerError) -> Int32 {
                guard let id = vocabulary.find(token) else {
                    throw element.invalid(
                        "token \(JSONStyle.report.quoted(String(decoding: token, as: UTF8.self))) is not in the vocabulary")
                }
                return id
            }
            merges.set(try id(left), try id(right), rank: rank, id: try id(left + right))
            rank += 1
        }

        // Byte-level: the model looks words up by the bytes their characters stand for.
        var modelVocabulary = vocabulary
        var byteUnitIDs: [Int32] = []
        if byteLevel {
            modelVocabulary = ByteTable(capacity: vocabulary.count)
            vocabulary.forEach { token, id in
                if let bytes = ByteLevelAlphabet.decode(Array(token)) { modelVocabulary.insert(bytes, value: id) }
            }
            byteUnitIDs = (0..<256).map { modelVocabulary.find([UInt8($0)]) ?? -1 }
        }
        var byteFallbackIDs: [Int32] = []
        if try json.flag("byte_fallback", absent: false) {
            let hex = Array("0123456789ABCDEF".utf8)
            byteFallbackIDs = (0..<256).map { byte in
                vocabulary.find(Array("<0x".utf8) + [hex[byte >> 4], hex[byte & 15], UInt8(ascii: ">")]) ?? -1
            }
        }
        var unknownID: Int32?
        if let unknown = try json.member("unk_token") {
            let token = try unknown.string()
            guard let id = vocabulary.find(Array(token.utf8)) else {
                throw unknown.invalid("\(JSONStyle.report.quoted(token)) is not in the vocabulary")
            }
            unknownID = id
        }
        let model = BPEModel(
            vocabulary: modelVocabulary, merges: merges, byteLevel: byteLevel, byteUnitIDs: byteUnitIDs,
            byteFallbackIDs: byteFallbackIDs, unknownID: unknownID, fuseUnknown: try json.flag("fuse_unk", absent: false),
            ignoreMerges: try json.flag("ignore_merges", absent: false))
        return Loaded(model: model, vocabulary: vocabulary, entries: entries)
    }
}
