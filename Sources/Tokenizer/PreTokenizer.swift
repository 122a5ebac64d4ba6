/// How text between added tokens is cut into words before the model sees them.
enum PreTokenizerStep: Sendable, Equatable {
    /// Matches of a split pattern, each its own word (`Split` with behavior Isolated, or
    /// ByteLevel's `use_regex`).
    case split(SplitPattern)
    /// ByteLevel's `add_prefix_space`: a space in front of each piece that does not start with one.
    case prefixSpace
    /// Metaspace: spaces become `replacement`, which is put in front of the first piece
    /// (`first`) or of every piece (`always`); with `split`, a word starts at each replacement.
    case metaspace(replacement: [UInt8], prepend: PrependScheme, split: Bool)
}

enum PrependScheme: Sendable, Equatable {
    case first, always, never

    init(_ json: TokenizerJSON) throws(TokenizerError) {
        switch try json.string() {
        case "first": self = .first
        case "always": self = .always
        case "never": self = .never
        case let other: throw json.invalid("unknown prepend_scheme '\(other)' (first, always or never)")
        }
    }

    /// tokenizers' reading of `prepend_scheme` (default `always`) and the older
    /// `add_prefix_space`, which may only be false with `never`.
    static func parse(_ json: TokenizerJSON) throws(TokenizerError) -> PrependScheme {
        let scheme = try json.member("prepend_scheme").map { (value) throws(TokenizerError) in try PrependScheme(value) } ?? .always
        if try json.member("add_prefix_space")?.bool() == false && scheme != .never {
            throw json.invalid("add_prefix_space does not match declared prepend_scheme")
        }
        return scheme
    }
}

/// The pre-tokenizer: its steps in order, and whether it is byte-level (its words are mapped to
/// GPT-2's byte alphabet before the model sees them).
struct PreTokenizer: Sendable {
    var steps: [PreTokenizerStep] = []
    var byteLevel = false

    init() {}

    init(_ json: TokenizerJSON) throws(TokenizerError) {
        try add(json)
    }

    private mutating func add(_ json: TokenizerJSON) throws(TokenizerError) {
        let type = try json.typeName()
        // ByteLevel maps the text to its byte alphabet last; a split of the mapped text is not
        // the split of the text.
        if byteLevel && type != "Sequence" {
            throw json.unsupported("a \(type) pre-tokenizer after ByteLevel is not supported")
        }
        switch type {
        case "Sequence":
            for element in try json.required("pretokenizers").elements() { try add(element) }
        case "ByteLevel":
            if try json.flag("add_prefix_space", absent: true) { steps.append(.prefixSpace) }
            if try json.flag("use_regex", absent: true) { steps.append(.split(.gpt2)) }
            byteLevel = true
        case "Split":
            let pattern = try json.required("pattern")
            guard let regex = try pattern.member("Regex") else {
                throw pattern.unsupported("only the split patterns of GPT-2, Llama 3, Qwen2 and Qwen3.5 are supported, not a string")
            }
            let text = try regex.string()
            guard let split = SplitPattern.recognize(text) else {
                throw regex.unsupported(
                    "unknown split pattern \"\(text.count > 120 ? String(text.prefix(120)) + "…" : text)\"; "
                        + "qtool recognises the patterns of GPT-2, Llama 3, Qwen2 and Qwen3.5")
            }
            let behavior = try json.required("behavior").string()
            guard behavior == "Isolated" else { throw json.unsupported("Split behavior \(behavior) is not supported (only Isolated)") }
            guard try !json.flag("invert", absent: false) else { throw json.unsupported("an inverted Split is not supported") }
            steps.append(.split(split))
        case "Metaspace":
            let replacement = try json.required("replacement").string()
            guard replacement.unicodeScalars.count == 1 else { throw json.invalid("replacement must be one character") }
            steps.append(
                .metaspace(
                    replacement: Array(replacement.utf8), prepend: try PrependScheme.parse(json),
                    split: try json.flag("split", absent: true)))
        default:
            throw json.unsupported(
                "pre-tokenizer type \(type) is not supported (qtool runs ByteLevel, Split with a known pattern, Metaspace and Sequence)")
        }
    }

    /// Calls `body` with each word of `piece`. `atStart`: the piece begins the text (Metaspace's
    /// `first` scheme puts its replacement only there). Empty words are dropped, as tokenizers does.
    @inline(__always)
    func words(_ piece: UnsafeBufferPointer<UInt8>, atStart: Bool, _ body: (UnsafeBufferPointer<UInt8>) -> Void) {
        steps.withUnsafeBufferPointer { steps in Self.run(steps, 0, piece, atStart, body) }
    }

    private static func run(
        _ steps: UnsafeBufferPointer<PreTokenizerStep>, _ k: Int, _ piece: UnsafeBufferPointer<UInt8>, _ atStart: Bool,
        _ body: (UnsafeBufferPointer<UInt8>) -> Void
    ) {
        if piece.isEmpty { return }
        if k == steps.count {
            body(piece)
            return
        }
        switch steps[k] {
        case .split(let pattern):
            pattern.split(piece) { range in
                run(steps, k + 1, UnsafeBufferPointer(rebasing: piece[range]), atStart && range.lowerBound == 0, body)
            }
        case .prefixSpace:
            if piece[0] == 0x20 {
                run(steps, k + 1, piece, atStart, body)
            } else {
                let spaced = [0x20] + Array(piece)
                spaced.withUnsafeBufferPointer { run(steps, k + 1, $0, atStart, body) }
            }
        case .metaspace(let replacement, let prepend, let split):
            var text = NormalizerStep.replacing([0x20], with: replacement, in: Array(piece))
            let starts = text.starts(with: replacement)
            if !starts && (prepend == .always || (prepend == .first && atStart)) { text = replacement + text }
            text.withUnsafeBufferPointer { text in
                guard split else { return run(steps, k + 1, text, atStart, body) }
                // Each replacement begins a word (MergedWithNext).
                var start = 0
                var i = 0
                while i + replacement.count <= text.count {
                    if i > start && memoryEqual(text.baseAddress! + i, replacement, replacement.count) {
                        run(steps, k + 1, UnsafeBufferPointer(rebasing: text[start..<i]), atStart && start == 0, body)
                        start = i
                        i += replacement.count
                    } else {
                        i += 1
                    }
                }
                run(steps, k + 1, UnsafeBufferPointer(rebasing: text[start...]), atStart && start == 0, body)
            }
        }
    }
}
