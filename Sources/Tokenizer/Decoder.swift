/// The decoders of tokenizers, each a step from a list of token strings to another (they work on
/// bytes: ByteLevel makes bytes that are text only once they are all together).
enum DecoderStep: Sendable, Equatable {
    /// GPT-2's byte alphabet back to bytes, all tokens into one text (ill-formed UTF-8 replaced).
    case byteLevel
    /// The replacement back to spaces; in the first token it is removed (unless `never`).
    case metaspace(replacement: UInt32, prepend: PrependScheme)
    /// A literal replaced in each token.
    case replace(pattern: [UInt8], content: [UInt8])
    /// Runs of `<0xNN>` tokens back to the text they spell (one U+FFFD a byte when they are not UTF-8).
    case byteFallback
    /// All tokens into one.
    case fuse
    /// Up to `start` leading and `stop` trailing `content` characters removed from each token.
    case strip(content: UInt32, start: Int, stop: Int)

    static func parse(_ json: TokenizerJSON) throws(TokenizerError) -> [DecoderStep] {
        if let steps = try json.sequence("decoders", parse) { return steps }
        let type = try json.typeName()
        switch type {
        case "ByteLevel": return [.byteLevel]
        case "Metaspace":
            let replacement = try json.required("replacement").string()
            guard replacement.unicodeScalars.count == 1, let scalar = replacement.unicodeScalars.first else {
                throw json.invalid("replacement must be one character")
            }
            return [.metaspace(replacement: scalar.value, prepend: try PrependScheme.parse(json))]
        case "Replace":
            let (pattern, content) = try NormalizerStep.literalReplacement(json)
            return [.replace(pattern: pattern, content: content)]
        case "ByteFallback": return [.byteFallback]
        case "Fuse": return [.fuse]
        case "Strip":
            let content = try json.required("content").string()
            guard content.unicodeScalars.count == 1, let scalar = content.unicodeScalars.first else {
                throw json.invalid("content must be one character")
            }
            let limit = 1 << 30
            return [
                .strip(
                    content: scalar.value, start: try json.required("start").integer(in: 0...limit),
                    stop: try json.required("stop").integer(in: 0...limit))
            ]
        default:
            throw json.unsupported(
                "decoder type \(type) is not supported (qtool decodes ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip and Sequence)"
            )
        }
    }

    func apply(_ tokens: [[UInt8]]) -> [[UInt8]] {
        switch self {
        case .byteLevel:
            var bytes: [UInt8] = []
            for token in tokens {
                if let decoded = ByteLevelAlphabet.decode(token) { bytes += decoded } else { bytes += token }
            }
            return [Array(UTF8Text.lossyString(bytes).utf8)]
        case .metaspace(let replacement, let prepend):
            return tokens.enumerated().map { index, token in
                var out: [UInt8] = []
                Self.forEachScalar(token) { scalar, bytes in
                    if scalar == replacement {
                        if !(index == 0 && prepend != .never) { out.append(0x20) }
                    } else {
                        out += bytes
                    }
                }
                return out
            }
        case .replace(let pattern, let content):
            return tokens.map { NormalizerStep.replacing(pattern, with: content, in: $0) }
        case .byteFallback:
            var out: [[UInt8]] = []
            var pending: [UInt8] = []
            func flush() {
                guard !pending.isEmpty else { return }
                if String(validating: pending, as: UTF8.self) != nil {
                    out.append(pending)
                } else {
                    out += [[UInt8]](repeating: [0xEF, 0xBF, 0xBD], count: pending.count)
                }
                pending.removeAll()
            }
            for token in tokens {
                if let byte = Self.byteToken(token) {
                    pending.append(byte)
                } else {
                    flush()
                    out.append(token)
                }
            }
            flush()
            return out
        case .fuse:
            return [Array(tokens.joined())]
        case .strip(let content, let start, let stop):
            return tokens.map { token in
                var scalars: [(UInt32, ArraySlice<UInt8>)] = []
                Self.forEachScalar(token) { scalars.append(($0, $1)) }
                var first = 0
                while first < min(start, scalars.count) && scalars[first].0 == content { first += 1 }
                var end = scalars.count
                var removed = 0
                while removed < stop && end > first && scalars[end - 1].0 == content {
                    end -= 1
                    removed += 1
                }
                return Array(scalars[first..<end].map(\.1).joined())
            }
        }
    }

    /// The byte of a `<0xNN>` token: six bytes, two hexadecimal digits read as Rust's
    /// `u8::from_str_radix` reads them (a leading `+` is accepted).
    static func byteToken(_ token: [UInt8]) -> UInt8? {
        guard token.count == 6, token[0] == UInt8(ascii: "<"), token[1] == UInt8(ascii: "0"), token[2] == UInt8(ascii: "x"),
            token[5] == UInt8(ascii: ">")
        else { return nil }
        func digit(_ c: UInt8) -> UInt8? {
            switch c {
            case 0x30...0x39: c - 0x30
            case 0x41...0x46: c - 0x41 + 10
            case 0x61...0x66: c - 0x61 + 10
            default: nil
            }
        }
        if token[3] == UInt8(ascii: "+") { return digit(token[4]) }
        guard let high = digit(token[3]), let low = digit(token[4]) else { return nil }
        return high << 4 | low
    }

    static func forEachScalar(_ token: [UInt8], _ body: (UInt32, ArraySlice<UInt8>) -> Void) {
        token.withUnsafeBufferPointer { buffer in
            var i = 0
            while i < buffer.count {
                let (scalar, length) = UTF8Text.scalar(buffer, at: i)
                body(scalar, token[i..<i + length])
                i += length
            }
        }
    }
}
