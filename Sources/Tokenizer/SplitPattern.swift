/// The split patterns of byte-level tokenizers, recognised by their text and run by hand-written
/// scanners instead of a regex engine.
///
/// Each scanner gives the matches of its pattern as Oniguruma finds them (leftmost, the first
/// alternative that matches, greedy with backtracking): the alternatives below are tried in the
/// pattern's order at each position. Every character belongs to some alternative, so the matches
/// cover the text end to end.
enum SplitPattern: Sendable, Equatable {
    /// GPT-2: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    /// (also ByteLevel's built-in pattern, `use_regex: true`).
    case gpt2
    /// Llama 3, Qwen2 and Qwen3.5: `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
    /// ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`, with digit groups of `digits` (3 for
    /// Llama 3, 1 for Qwen) and, for Qwen3.5, marks counted with letters (`[\p{L}\p{M}]+`).
    case llama3(digits: Int, marksWithLetters: Bool)

    static let gpt2Pattern = #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#
    static let known: [(name: String, pattern: String, split: SplitPattern)] = [
        ("GPT-2", gpt2Pattern, .gpt2),
        (
            "Llama 3",
            #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#,
            .llama3(digits: 3, marksWithLetters: false)
        ),
        (
            "Qwen2",
            #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#,
            .llama3(digits: 1, marksWithLetters: false)
        ),
        (
            "Qwen3.5",
            #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#,
            .llama3(digits: 1, marksWithLetters: true)
        ),
    ]

    /// The pattern whose text is exactly `pattern`, or nil.
    static func recognize(_ pattern: String) -> SplitPattern? {
        known.first { $0.pattern.utf8.elementsEqual(pattern.utf8) }?.split
    }

    /// Calls `body` with each match, in order; together they cover `text`.
    @inline(__always)
    func split(_ text: UnsafeBufferPointer<UInt8>, _ body: (Range<Int>) -> Void) {
        var scanner = PatternScanner(text: text)
        switch self {
        case .gpt2:
            while scanner.position < text.count {
                let end = scanner.gpt2Match()
                body(scanner.position..<end)
                scanner.position = end
            }
        case .llama3(let digits, let marksWithLetters):
            let letters = marksWithLetters ? ScalarClass.letter | ScalarClass.mark : ScalarClass.letter
            while scanner.position < text.count {
                let end = scanner.llama3Match(letters: letters, digits: digits)
                body(scanner.position..<end)
                scanner.position = end
            }
        }
    }
}

/// A position in valid UTF-8 text and the alternatives of the patterns from there.
struct PatternScanner {
    let text: UnsafeBufferPointer<UInt8>
    var position = 0

    @inline(__always)
    func scalar(at i: Int) -> (value: UInt32, length: Int, kind: UInt8) {
        let byte = text[i]
        if byte < 0x80 { return (UInt32(byte), 1, ScalarClass.of(UInt32(byte))) }
        let (value, length) = UTF8Text.scalar(text, at: i)
        return (value, length, ScalarClass.of(value))
    }

    /// The end of the run from `i` of scalars whose class has a bit of `any` and none of `none`.
    @inline(__always)
    func run(from i: Int, any: UInt8, none: UInt8 = 0, limit: Int = .max) -> Int {
        var j = i
        var count = 0
        while j < text.count && count < limit {
            let (_, length, kind) = scalar(at: j)
            guard kind & any != 0 && kind & none == 0 else { break }
            j += length
            count += 1
        }
        return j
    }

    /// The end of the run from `i` of scalars of none of the classes `none` (`[^\s\p{L}\p{N}]+`).
    @inline(__always)
    func runOutside(from i: Int, none: UInt8) -> Int {
        var j = i
        while j < text.count {
            let (_, length, kind) = scalar(at: j)
            guard kind & none == 0 else { break }
            j += length
        }
        return j
    }

    /// Whitespace from `i`: where the run ends, where its last scalar starts, and where its last
    /// \r or \n starts (-1 when it has none).
    @inline(__always)
    func whitespaceRun(from i: Int) -> (end: Int, lastStart: Int, lastNewline: Int) {
        var j = i
        var lastStart = i
        var lastNewline = -1
        while j < text.count {
            let (value, length, kind) = scalar(at: j)
            guard kind & ScalarClass.whitespace != 0 else { break }
            if value == 0x0A || value == 0x0D { lastNewline = j }
            lastStart = j
            j += length
        }
        return (j, lastStart, lastNewline)
    }

    /// `\s+(?!\S)|\s+` at `i` (a whitespace scalar): the whole run when it ends the text, else
    /// the run but its last scalar (which then starts the next match), else the one scalar.
    @inline(__always)
    func trailingWhitespace(_ run: (end: Int, lastStart: Int, lastNewline: Int), at i: Int) -> Int {
        if run.end == text.count { return run.end }
        return run.lastStart > i ? run.lastStart : run.end
    }

    /// `'s|'t|'re|'ve|'m|'ll|'d` after an apostrophe at `i`: the match's end, or nil. With
    /// `ignoringCase`, as Oniguruma folds case: ASCII either case, and U+017F (ſ) as s.
    @inline(__always)
    func contraction(after i: Int, ignoringCase: Bool) -> Int? {
        let j = i + 1
        guard j < text.count else { return nil }
        func letter(_ k: Int) -> UInt8? {
            guard k < text.count else { return nil }
            let byte = text[k]
            if ignoringCase && byte >= 0x41 && byte <= 0x5A { return byte | 0x20 }
            return byte
        }
        if ignoringCase && text[j] == 0xC5 && j + 1 < text.count && text[j + 1] == 0xBF { return j + 2 }  // ſ
        switch letter(j) {
        case UInt8(ascii: "s"), UInt8(ascii: "t"), UInt8(ascii: "m"), UInt8(ascii: "d"): return j + 1
        case UInt8(ascii: "r"), UInt8(ascii: "v"): return letter(j + 1) == UInt8(ascii: "e") ? j + 2 : nil
        case UInt8(ascii: "l"): return letter(j + 1) == UInt8(ascii: "l") ? j + 2 : nil
        default: return nil
        }
    }

    /// The end of GPT-2's match at `position`.
    func gpt2Match() -> Int {
        let i = position
        let (value, length, kind) = scalar(at: i)
        let letter = ScalarClass.letter
        let number = ScalarClass.number
        let space = ScalarClass.whitespace
        if value == 0x27, let end = contraction(after: i, ignoringCase: false) { return end }
        // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+` with the space.
        if value == 0x20 && i + 1 < text.count {
            let next = scalar(at: i + 1).kind
            if next & letter != 0 { return run(from: i + 1, any: letter) }
            if next & number != 0 { return run(from: i + 1, any: number) }
            if next & (letter | number | space) == 0 { return runOutside(from: i + 1, none: letter | number | space) }
        }
        if kind & letter != 0 { return run(from: i, any: letter) }
        if kind & number != 0 { return run(from: i, any: number) }
        if kind & space == 0 { return runOutside(from: i, none: letter | number | space) }
        let whitespace = whitespaceRun(from: i)
        return max(trailingWhitespace(whitespace, at: i), i + length)
    }

    /// The end of the Llama 3 family's match at `position`; `letters` is the class of
    /// `\p{L}` (or `[\p{L}\p{M}]`), `digits` the longest digit group.
    func llama3Match(letters: UInt8, digits: Int) -> Int {
        let i = position
        let (value, length, kind) = scalar(at: i)
        let number = ScalarClass.number
        let space = ScalarClass.whitespace
        if value == 0x27, let end = contraction(after: i, ignoringCase: true) { return end }
        // `[^\r\n\p{L}\p{N}]?\p{L}+`
        if kind & letters != 0 { return run(from: i, any: letters) }
        let isNewline = value == 0x0A || value == 0x0D
        if !isNewline && kind & (ScalarClass.letter | number) == 0 && i + length < text.count
            && scalar(at: i + length).kind & letters != 0
        {
            return run(from: i + length, any: letters)
        }
        // `\p{N}{1,3}` (or `\p{N}`)
        if kind & number != 0 { return run(from: i, any: number, limit: digits) }
        // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
        let other = letters | number | space
        var start = -1
        if kind & other == 0 {
            start = i
        } else if value == 0x20 && i + 1 < text.count && scalar(at: i + 1).kind & other == 0 {
            start = i + 1
        }
        if start >= 0 {
            var end = runOutside(from: start, none: other)
            while end < text.count && (text[end] == 0x0A || text[end] == 0x0D) { end += 1 }
            return end
        }
        guard kind & space != 0 else { return i + length }
        // `\s*[\r\n]+`: up to the run's last newline; then `\s+(?!\S)|\s+`.
        let whitespace = whitespaceRun(from: i)
        if whitespace.lastNewline >= 0 { return whitespace.lastNewline + 1 }
        return max(trailingWhitespace(whitespace, at: i), i + length)
    }
}
