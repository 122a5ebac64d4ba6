/// The normalizers qtool applies, in order, to each stretch of text between added tokens.
enum NormalizerStep: Sendable, Equatable {
    /// Unicode canonical composition (Qwen2).
    case nfc
    /// `Prepend`: the text, when not empty, gets this in front (Llama 2's "▁").
    case prepend([UInt8])
    /// `Replace` with a literal pattern: every occurrence, left to right (Llama 2's " " → "▁").
    case replace(pattern: [UInt8], content: [UInt8])

    static func parse(_ json: TokenizerJSON) throws(TokenizerError) -> [NormalizerStep] {
        if let steps = try json.sequence("normalizers", parse) { return steps }
        let type = try json.typeName()
        switch type {
        case "NFC": return [.nfc]
        case "Prepend": return [.prepend(Array(try json.required("prepend").string().utf8))]
        case "Replace":
            let (pattern, content) = try literalReplacement(json)
            return [.replace(pattern: pattern, content: content)]
        default:
            throw json.unsupported("normalizer type \(type) is not supported (qtool applies NFC, Prepend, Replace and Sequence)")
        }
    }

    /// The pattern and content of a `Replace` whose pattern is a literal string.
    static func literalReplacement(_ json: TokenizerJSON) throws(TokenizerError) -> ([UInt8], [UInt8]) {
        let pattern = try json.required("pattern")
        guard let literal = try pattern.member("String") else {
            throw pattern.unsupported("only literal {\"String\": …} patterns are supported, not regular expressions")
        }
        let text = Array(try literal.string().utf8)
        guard !text.isEmpty else { throw literal.invalid("the pattern is empty") }
        return (text, Array(try json.required("content").string().utf8))
    }

    /// `text` normalized by every step in turn.
    static func apply(_ steps: [NormalizerStep], to text: [UInt8]) -> [UInt8] {
        var current = text
        for step in steps { current = step.apply(current) }
        return current
    }

    func apply(_ text: [UInt8]) -> [UInt8] {
        switch self {
        case .nfc:
            // Already composed ASCII is the common case.
            if text.allSatisfy({ $0 < 0x80 }) { return text }
            return String(decoding: text, as: UTF8.self)._nfcCodeUnits
        case .prepend(let prefix):
            return text.isEmpty ? text : prefix + text
        case .replace(let pattern, let content):
            return Self.replacing(pattern, with: content, in: text)
        }
    }

    /// Every non-overlapping occurrence of `pattern`, left to right, replaced by `content`.
    static func replacing(_ pattern: [UInt8], with content: [UInt8], in text: [UInt8]) -> [UInt8] {
        guard text.count >= pattern.count, let first = pattern.first else { return text }
        var out: [UInt8] = []
        out.reserveCapacity(text.count + text.count / 2)
        var i = 0
        while i < text.count {
            if text[i] == first && i + pattern.count <= text.count && text[i..<i + pattern.count].elementsEqual(pattern) {
                out += content
                i += pattern.count
            } else {
                out.append(text[i])
                i += 1
            }
        }
        return out
    }
}
