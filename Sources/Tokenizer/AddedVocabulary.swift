/// A token of `added_tokens`: matched in the text before the model runs.
struct AddedToken: Sendable {
    var id: Int32
    var content: [UInt8]
    /// What the token is matched as when `normalized`: its content through the normalizer
    /// (tokenizers matches it in normalized text, and decodes it as this).
    var form: [UInt8]
    var special: Bool
    var singleWord: Bool
    var leftStrip: Bool
    var rightStrip: Bool
    var normalized: Bool
}

/// Where added tokens are in a text, as tokenizers' `AddedVocabulary::find_matches` finds them:
/// the leftmost match, the longest at that place, then on from its end (an Aho-Corasick scan);
/// `single_word` discards a match inside a word, `lstrip`/`rstrip` take in the whitespace beside it.
struct AddedTokenMatcher: Sendable {
    /// Token indexes by first byte, longest pattern first.
    private let candidates: [[Int]]
    /// What each token is matched as here (empty for tokens of the other matcher).
    private let patterns: [[UInt8]]
    /// Whether a token starts with each byte.
    private let startsToken: [Bool]
    let isEmpty: Bool

    /// The matcher of the tokens matched in raw text (`normalized` false) or in normalized text.
    init(_ tokens: [AddedToken], normalized: Bool) {
        var candidates = [[Int]](repeating: [], count: 256)
        let patterns = tokens.map { token in token.normalized == normalized ? (normalized ? token.form : token.content) : [] }
        for (index, pattern) in patterns.enumerated() where !pattern.isEmpty {
            candidates[Int(pattern[0])].append(index)
        }
        for byte in 0..<256 { candidates[byte].sort { patterns[$0].count > patterns[$1].count } }
        self.candidates = candidates
        self.patterns = patterns
        startsToken = candidates.map { !$0.isEmpty }
        isEmpty = patterns.allSatisfy(\.isEmpty)
    }

    /// A stretch of text: an added token (its index in the token list) or text for the model.
    struct Segment {
        var range: Range<Int>
        var token: Int?
    }

    /// The segments of `text`, in order. Text segments may be empty (the caller drops them).
    func segments(_ text: UnsafeBufferPointer<UInt8>, tokens: [AddedToken]) -> [Segment] {
        guard !isEmpty else { return [Segment(range: 0..<text.count, token: nil)] }
        var segments: [Segment] = []
        var covered = 0
        var i = 0
        while i < text.count {
            // Most bytes start no token: skip them without looking at the candidates.
            while i < text.count && !startsToken[Int(text[i])] { i += 1 }
            guard i < text.count, let index = longestMatch(text, at: i) else {
                i += 1
                continue
            }
            let token = tokens[index]
            var start = i
            var stop = i + patterns[index].count
            i = stop
            if token.singleWord {
                let startsWord = start == 0 || !Self.wordCharacterEnds(text, at: start)
                let endsWord = stop == text.count || !ScalarClass.isWordCharacter(UTF8Text.scalar(text, at: stop).value)
                guard startsWord && endsWord else { continue }
            }
            if token.leftStrip {
                var j = start
                while j > 0 {
                    let previous = UTF8Text.previousStart(text, before: j)
                    guard ScalarClass.of(UTF8Text.scalar(text, at: previous).value) & ScalarClass.whitespace != 0 else { break }
                    j = previous
                }
                start = max(j, covered)
            }
            if token.rightStrip {
                while stop < text.count {
                    let (value, length) = UTF8Text.scalar(text, at: stop)
                    guard ScalarClass.of(value) & ScalarClass.whitespace != 0 else { break }
                    stop += length
                }
            }
            // A token that starts in the whitespace the one before took in (tokenizers panics).
            start = min(start, stop)
            if covered < start { segments.append(Segment(range: covered..<start, token: nil)) }
            segments.append(Segment(range: start..<stop, token: index))
            covered = stop
        }
        if covered < text.count { segments.append(Segment(range: covered..<text.count, token: nil)) }
        return segments
    }

    private func longestMatch(_ text: UnsafeBufferPointer<UInt8>, at i: Int) -> Int? {
        for index in candidates[Int(text[i])] {
            let pattern = patterns[index]
            if i + pattern.count <= text.count
                && pattern.withUnsafeBufferPointer({ memoryEqual(text.baseAddress! + i, $0.baseAddress!, $0.count) })
            {
                return index
            }
        }
        return nil
    }

    /// Whether the scalar just before `i` is a word character (Rust regex's `\w$`).
    private static func wordCharacterEnds(_ text: UnsafeBufferPointer<UInt8>, at i: Int) -> Bool {
        ScalarClass.isWordCharacter(UTF8Text.scalar(text, at: UTF8Text.previousStart(text, before: i)).value)
    }
}
