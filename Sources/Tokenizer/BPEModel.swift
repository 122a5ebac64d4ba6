import TensorCore

/// The byte-pair encoding model of tokenizers (`"type": "BPE"`): a vocabulary, ranked merges, and
/// what to do with characters the vocabulary lacks (`byte_fallback`, `unk_token`).
///
/// A word is split into units (bytes in byte-level tokenizers, Unicode scalars otherwise), each
/// looked up in the vocabulary, then the adjacent pair of lowest rank is merged until no pair has
/// a merge, ties going to the leftmost pair — tokenizers' `Word::merge_all`, with a heap of
/// (rank, position) and a linked list of symbols.
///
/// Byte-level vocabularies spell bytes as GPT-2's printable characters (`Ġ` for a space); qtool
/// keys the model's lookups by the bytes those characters stand for instead, so that text is
/// never mapped: a word's own UTF-8 bytes are looked up.
final class BPEModel: Sendable {
    /// Bytes (in the model's space) to token id, for units and for whole words (`ignore_merges`).
    let vocabulary: ByteTable
    /// The vocabulary as written (token bytes to id), and the entry of each id in it (-1 for ids
    /// no token has).
    let writtenVocabulary: ByteTable
    let entries: [Int32]
    let merges: PairTable
    /// The merges in rank order, as ids of their two tokens (for writing them out again).
    let mergeList: [(left: Int32, right: Int32)]
    let byteLevel: Bool
    /// The id of each byte as a unit (byte-level only), -1 when the vocabulary lacks it.
    let byteUnitIDs: [Int32]
    /// `<0xNN>` ids (byte_fallback), -1 for a missing one; empty without byte_fallback.
    let byteFallbackIDs: [Int32]
    let unknownID: Int32?
    let fuseUnknown: Bool
    let ignoreMerges: Bool

    /// Words longer than this are not cached (tokenizers' MAX_LENGTH).
    static let longestCachedWord = 256

    /// Refuses models other than BPE, by name (checked before the rest of the file).
    static func checkType(_ json: TokenizerJSON) throws(TokenizerError) {
        // Files from before "type" was written: a model with merges is BPE.
        var type = try json.member("merges") != nil ? "BPE" : "(no type)"
        if let written = try json.member("type") { type = try written.string() }
        guard type == "BPE" else {
            throw json.unsupported("model type \(type) is not supported; qtool reads BPE tokenizers only")
        }
    }

    /// Reads `model` as tokenizers' BPE deserializer does, checking what it would fail on (a
    /// merge naming a token the vocabulary lacks) and what qtool needs (ids within bounds, one
    /// token an id). `byteLevel`: the pre-tokenizer maps text to GPT-2's byte alphabet.
    init(_ json: TokenizerJSON, byteLevel: Bool) throws(TokenizerError) {
        try Self.checkType(json)
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
        writtenVocabulary = vocabulary
        self.entries = entries

        let mergesJSON = try json.required("merges")
        let mergeElements = try mergesJSON.elements()
        var merges = PairTable(capacity: mergeElements.count)
        var mergeList: [(left: Int32, right: Int32)] = []
        mergeList.reserveCapacity(mergeElements.count)
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
            let pair = (left: try id(left), right: try id(right))
            merges.set(pair.left, pair.right, rank: rank, id: try id(left + right))
            mergeList.append(pair)
            rank += 1
        }
        self.merges = merges
        self.mergeList = mergeList

        // Byte-level: the model looks words up by the bytes their characters stand for.
        self.byteLevel = byteLevel
        if byteLevel {
            var table = ByteTable(capacity: vocabulary.count)
            vocabulary.forEach { token, id in
                if let bytes = ByteLevelAlphabet.decode(Array(token)) { table.insert(bytes, value: id) }
            }
            byteUnitIDs = (0..<256).map { table.find([UInt8($0)]) ?? -1 }
            self.vocabulary = table
        } else {
            byteUnitIDs = []
            self.vocabulary = vocabulary
        }
        let hex = Array("0123456789ABCDEF".utf8)
        byteFallbackIDs =
            try json.flag("byte_fallback", absent: false)
            ? (0..<256).map { byte in vocabulary.find(Array("<0x".utf8) + [hex[byte >> 4], hex[byte & 15], UInt8(ascii: ">")]) ?? -1 }
            : []
        var unknownID: Int32?
        if let unknown = try json.member("unk_token") {
            let token = try unknown.string()
            guard let id = vocabulary.find(Array(token.utf8)) else {
                throw unknown.invalid("\(JSONStyle.report.quoted(token)) is not in the vocabulary")
            }
            unknownID = id
        }
        self.unknownID = unknownID
        fuseUnknown = try json.flag("fuse_unk", absent: false)
        ignoreMerges = try json.flag("ignore_merges", absent: false)
    }

    /// Appends the ids of `word` (bytes in the model's space); `vocabulary` is this model's
    /// vocabulary (`withVocabulary`).
    @inline(__always)
    func tokenize(
        _ word: UnsafeBufferPointer<UInt8>, vocabulary: ByteTable.View, into ids: inout [Int32], scratch: inout EncodingScratch
    ) {
        if ignoreMerges, let id = vocabulary.find(word) {
            ids.append(id)
            return
        }
        let cacheable = word.count <= Self.longestCachedWord
        if cacheable, let cached = scratch.cache.find(word) {
            scratch.cache.append(cached, to: &ids)
            return
        }
        let start = ids.count
        merge(word, vocabulary: vocabulary, into: &ids, symbols: &scratch.symbols)
        if cacheable { scratch.cache.insert(word, ids: ids[start...]) }
    }

    /// Runs `body` with the vocabulary as buffers, for the words of one text.
    @inline(__always)
    func withVocabulary<R>(_ body: (ByteTable.View) -> R) -> R { vocabulary.withView(body) }

    /// The symbols of `word` before any merge, as tokenizers' `merge_word` makes them: known units,
    /// byte fallback for unknown ones, else the unknown token (fused when `fuse_unk`), else nothing.
    private func units(_ word: UnsafeBufferPointer<UInt8>, vocabulary: ByteTable.View, into symbols: inout SymbolList) {
        var pendingUnknown = false
        func add(_ id: Int32) { symbols.append(id) }
        var i = 0
        while i < word.count {
            let length = byteLevel ? 1 : UTF8Text.scalar(word, at: i).length
            let id: Int32? =
                byteLevel
                ? (byteUnitIDs[Int(word[i])] >= 0 ? byteUnitIDs[Int(word[i])] : nil)
                : vocabulary.find(UnsafeBufferPointer(rebasing: word[i..<i + length]))
            defer { i += length }
            if let id {
                if pendingUnknown, let unknownID { add(unknownID) }
                pendingUnknown = false
                add(id)
                continue
            }
            if !byteFallbackIDs.isEmpty, let fallback = fallbackIDs(word, i, length) {
                // tokenizers adds these before an unknown token still pending.
                for id in fallback { add(id) }
                continue
            }
            guard let unknownID else { continue }
            if pendingUnknown && !fuseUnknown { add(unknownID) }
            pendingUnknown = true
        }
        if pendingUnknown, let unknownID { add(unknownID) }
    }

    /// The `<0xNN>` ids of a unit's bytes (in byte-level vocabularies, of the UTF-8 of the
    /// character that stands for the byte), or nil when one is missing.
    private func fallbackIDs(_ word: UnsafeBufferPointer<UInt8>, _ i: Int, _ length: Int) -> [Int32]? {
        var bytes: [UInt8] = []
        if byteLevel {
            UTF8Text.append(ByteLevelAlphabet.character(of: word[i]), to: &bytes)
        } else {
            bytes = Array(word[i..<i + length])
        }
        var ids: [Int32] = []
        for byte in bytes {
            let id = byteFallbackIDs[Int(byte)]
            guard id >= 0 else { return nil }
            ids.append(id)
        }
        return ids
    }

    private func merge(
        _ word: UnsafeBufferPointer<UInt8>, vocabulary: ByteTable.View, into ids: inout [Int32], symbols: inout SymbolList
    ) {
        symbols.reset()
        units(word, vocabulary: vocabulary, into: &symbols)
        let count = symbols.ids.count
        if count == 0 { return }
        if count == 1 {
            ids.append(symbols.ids[0])
            return
        }
        symbols.heap.removeAll(keepingCapacity: true)
        for position in 0..<count - 1 {
            if let rank = merges.rank(symbols.ids[position], symbols.ids[position + 1]) {
                symbols.heap.push(rank: rank, position: position)
            }
        }
        while let (rank, position) = symbols.heap.pop() {
            guard symbols.alive[position] else { continue }
            let next = Int(symbols.next[position])
            guard next >= 0 else { continue }
            // A stale entry: the pair at this position has changed since it was queued.
            guard let merged = merges.merge(symbols.ids[position], symbols.ids[next]), merged.rank == rank else { continue }
            symbols.ids[position] = merged.id
            symbols.alive[next] = false
            let after = Int(symbols.next[next])
            symbols.next[position] = Int32(after)
            if after >= 0 { symbols.previous[after] = Int32(position) }
            let before = Int(symbols.previous[position])
            if before >= 0, let rank = merges.rank(symbols.ids[before], merged.id) {
                symbols.heap.push(rank: rank, position: before)
            }
            if after >= 0, let rank = merges.rank(merged.id, symbols.ids[after]) {
                symbols.heap.push(rank: rank, position: position)
            }
        }
        var position = 0
        while position >= 0 {
            ids.append(symbols.ids[position])
            position = Int(symbols.next[position])
        }
    }
}

/// The symbols of one word while it is merged: a linked list over arrays kept between words.
struct SymbolList {
    var ids: [Int32] = []
    var previous: [Int32] = []
    var next: [Int32] = []
    var alive: [Bool] = []
    var heap = MergeHeap()

    mutating func reset() {
        ids.removeAll(keepingCapacity: true)
        previous.removeAll(keepingCapacity: true)
        next.removeAll(keepingCapacity: true)
        alive.removeAll(keepingCapacity: true)
    }

    @inline(__always)
    mutating func append(_ id: Int32) {
        let index = Int32(ids.count)
        if index > 0 { next[Int(index) - 1] = index }
        ids.append(id)
        previous.append(index - 1)
        next.append(-1)
        alive.append(true)
    }
}

/// A binary min-heap of (rank, position), ordered by rank then position: the lowest merge
/// first, the leftmost among equals.
struct MergeHeap {
    private var items: [UInt64] = []

    mutating func removeAll(keepingCapacity: Bool) { items.removeAll(keepingCapacity: keepingCapacity) }

    @inline(__always)
    mutating func push(rank: UInt32, position: Int) {
        var i = items.count
        items.append(UInt64(rank) << 32 | UInt64(UInt32(truncatingIfNeeded: position)))
        let item = items[i]
        while i > 0 {
            let parent = (i - 1) / 2
            guard items[parent] > item else { break }
            items[i] = items[parent]
            i = parent
        }
        items[i] = item
    }

    @inline(__always)
    mutating func pop() -> (UInt32, Int)? {
        guard let top = items.first else { return nil }
        let last = items.removeLast()
        if !items.isEmpty {
            var i = 0
            let count = items.count
            while true {
                let left = 2 * i + 1
                if left >= count { break }
                var child = left
                if left + 1 < count && items[left + 1] < items[left] { child = left + 1 }
                guard items[child] < last else { break }
                items[i] = items[child]
                i = child
            }
            items[i] = last
        }
        return (UInt32(top >> 32), Int(top & 0xFFFF_FFFF))
    }
}

/// Merges by the ids of their two parts: the merge's rank (its place in the list) and the id of
/// the token it makes.
struct PairTable: Sendable {
    private var keys: [UInt64]
    private var values: [UInt64]
    private var mask: Int
    private(set) var count = 0
    private static let empty = UInt64.max

    init(capacity: Int) {
        var size = 16
        while size < capacity * 2 { size <<= 1 }
        keys = [UInt64](repeating: Self.empty, count: size)
        values = [UInt64](repeating: 0, count: size)
        mask = size - 1
    }

    @inline(__always)
    private func slot(_ key: UInt64) -> Int {
        var h = key &* 0x9E37_79B9_7F4A_7C15
        h ^= h >> 29
        return Int(truncatingIfNeeded: h) & mask
    }

    /// Sets the merge of (`left`, `right`); a later merge of the same pair replaces an earlier one
    /// (tokenizers collects the list into a map).
    mutating func set(_ left: Int32, _ right: Int32, rank: UInt32, id: Int32) {
        let key = UInt64(UInt32(bitPattern: left)) << 32 | UInt64(UInt32(bitPattern: right))
        var i = slot(key)
        while keys[i] != Self.empty && keys[i] != key { i = (i + 1) & mask }
        if keys[i] == Self.empty { count += 1 }
        keys[i] = key
        values[i] = UInt64(rank) << 32 | UInt64(UInt32(bitPattern: id))
    }

    @inline(__always)
    func merge(_ left: Int32, _ right: Int32) -> (rank: UInt32, id: Int32)? {
        let key = UInt64(UInt32(bitPattern: left)) << 32 | UInt64(UInt32(bitPattern: right))
        return keys.withUnsafeBufferPointer { keys in
            var i = slot(key)
            while true {
                let found = keys[i]
                if found == key {
                    let value = values[i]
                    return (UInt32(value >> 32), Int32(bitPattern: UInt32(value & 0xFFFF_FFFF)))
                }
                if found == Self.empty { return nil }
                i = (i + 1) & mask
            }
        }
    }

    @inline(__always)
    func rank(_ left: Int32, _ right: Int32) -> UInt32? { merge(left, right)?.rank }
}

/// Words already encoded in this call (or an earlier one): their bytes and ids. Emptied when it
/// grows past its bounds.
struct WordCache {
    private var table = ByteTable(capacity: 4096)
    private var ids: [Int32] = []
    static let maximumWords = 100_000
    static let maximumIDs = 4 << 20

    @inline(__always)
    func find(_ word: UnsafeBufferPointer<UInt8>) -> Int32? { table.find(word) }

    @inline(__always)
    func append(_ entry: Int32, to out: inout [Int32]) {
        ids.withUnsafeBufferPointer { ids in
            let start = Int(entry)
            out.append(contentsOf: UnsafeBufferPointer(rebasing: ids[start + 1..<start + 1 + Int(ids[start])]))
        }
    }

    mutating func insert(_ word: UnsafeBufferPointer<UInt8>, ids wordIDs: ArraySlice<Int32>) {
        if table.count >= Self.maximumWords || ids.count + wordIDs.count + 1 > Self.maximumIDs {
            table.removeAll()
            ids.removeAll(keepingCapacity: true)
        }
        let entry = Int32(ids.count)
        ids.append(Int32(wordIDs.count))
        ids.append(contentsOf: wordIDs)
        table.insert(word, value: entry)
    }
}

/// What one encoding call works in: the word cache and the merge buffers, kept between calls.
struct EncodingScratch {
    var cache = WordCache()
    var symbols = SymbolList()
}

/// GPT-2's `bytes_to_unicode`: the printable character that stands for each byte in byte-level
/// vocabularies ('!'…'~', '¡'…'¬', '®'…'ÿ' for themselves, the rest from U+0100 on).
enum ByteLevelAlphabet {
    static let characters: [UInt32] = {
        var table = [UInt32](repeating: 0, count: 256)
        var next: UInt32 = 256
        for byte in 0..<256 {
            if (0x21...0x7E).contains(byte) || (0xA1...0xAC).contains(byte) || (0xAE...0xFF).contains(byte) {
                table[byte] = UInt32(byte)
            } else {
                table[byte] = next
                next += 1
            }
        }
        return table
    }()

    /// Character to byte, for the characters up to U+0143 (-1 for the others).
    static let bytes: [Int16] = {
        var table = [Int16](repeating: -1, count: 0x144)
        for (byte, character) in characters.enumerated() { table[Int(character)] = Int16(byte) }
        return table
    }()

    static func character(of byte: UInt8) -> UInt32 { characters[Int(byte)] }

    static func byte(of character: UInt32) -> UInt8? {
        guard character < 0x144 else { return nil }
        let byte = bytes[Int(character)]
        return byte >= 0 ? UInt8(byte) : nil
    }

    /// The bytes a byte-level token stands for, or nil when a character of it stands for none.
    static func decode(_ token: [UInt8]) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(token.count)
        var ok = true
        token.withUnsafeBufferPointer { token in
            var i = 0
            while i < token.count {
                let (scalar, length) = UTF8Text.scalar(token, at: i)
                guard let byte = byte(of: scalar) else {
                    ok = false
                    return
                }
                out.append(byte)
                i += length
            }
        }
        return ok ? out : nil
    }
}
