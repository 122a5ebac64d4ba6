/// The Unicode classes the split patterns name, per scalar: `\p{L}`, `\p{N}`, `\p{M}` (general
/// categories) and `\s` (the White_Space property, which is what Oniguruma's `\s` matches in
/// tokenizers' patterns).
enum ScalarClass {
    static let letter: UInt8 = 1
    static let number: UInt8 = 2
    static let mark: UInt8 = 4
    static let whitespace: UInt8 = 8

    /// ASCII without a property lookup: the common case.
    @inline(__always)
    static func of(_ scalar: UInt32) -> UInt8 {
        switch scalar {
        case 0x61...0x7A, 0x41...0x5A: return letter
        case 0x30...0x39: return number
        case 0x09...0x0D, 0x20: return whitespace
        case 0..<0x80: return 0
        default: return classify(scalar)
        }
    }

    static func classify(_ value: UInt32) -> UInt8 {
        guard let scalar = Unicode.Scalar(value) else { return 0 }
        var result: UInt8
        switch scalar.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: result = letter
        case .decimalNumber, .letterNumber, .otherNumber: result = number
        case .nonspacingMark, .spacingMark, .enclosingMark: result = mark
        default: result = 0
        }
        if isWhitespace(value) { result |= whitespace }
        return result
    }

    /// The White_Space property (unchanged since Unicode 6.3), without a property lookup.
    @inline(__always)
    static func isWhitespace(_ value: UInt32) -> Bool {
        switch value {
        case 0x09...0x0D, 0x20, 0x85, 0xA0, 0x1680, 0x2000...0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000: true
        default: false
        }
    }

    /// Rust regex's `\w` (Alphabetic, marks, decimal digits, connector punctuation, Join_Control):
    /// what tokenizers' `single_word` tests on either side of an added token.
    static func isWordCharacter(_ value: UInt32) -> Bool {
        guard let scalar = Unicode.Scalar(value) else { return false }
        let properties = scalar.properties
        if properties.isAlphabetic || properties.isJoinControl { return true }
        switch properties.generalCategory {
        case .nonspacingMark, .spacingMark, .enclosingMark, .decimalNumber, .connectorPunctuation: return true
        default: return false
        }
    }
}

/// Reading valid UTF-8 (Swift strings and what the normalizers make of them) scalar by scalar.
enum UTF8Text {
    /// The scalar that starts at `i` and its length in bytes. The input is valid UTF-8; a
    /// truncated sequence at the end reads as what is there (no read past the buffer).
    @inline(__always)
    static func scalar(_ text: UnsafeBufferPointer<UInt8>, at i: Int) -> (value: UInt32, length: Int) {
        let lead = text[i]
        if lead < 0x80 { return (UInt32(lead), 1) }
        let length = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : 2
        guard i + length <= text.count else { return (UInt32(lead), 1) }
        var value = UInt32(lead) & (lead >= 0xF0 ? 0x07 : lead >= 0xE0 ? 0x0F : 0x1F)
        for k in 1..<length { value = value << 6 | UInt32(text[i + k] & 0x3F) }
        return (value, length)
    }

    /// The start of the scalar that ends just before `i`.
    @inline(__always)
    static func previousStart(_ text: UnsafeBufferPointer<UInt8>, before i: Int) -> Int {
        var j = i - 1
        while j > 0 && text[j] & 0xC0 == 0x80 { j -= 1 }
        return j
    }

    static func append(_ scalar: UInt32, to bytes: inout [UInt8]) {
        switch scalar {
        case 0..<0x80: bytes.append(UInt8(scalar))
        case 0x80..<0x800:
            bytes.append(UInt8(0xC0 | scalar >> 6))
            bytes.append(UInt8(0x80 | scalar & 0x3F))
        case 0x800..<0x10000:
            bytes.append(UInt8(0xE0 | scalar >> 12))
            bytes.append(UInt8(0x80 | scalar >> 6 & 0x3F))
            bytes.append(UInt8(0x80 | scalar & 0x3F))
        default:
            bytes.append(UInt8(0xF0 | scalar >> 18))
            bytes.append(UInt8(0x80 | scalar >> 12 & 0x3F))
            bytes.append(UInt8(0x80 | scalar >> 6 & 0x3F))
            bytes.append(UInt8(0x80 | scalar & 0x3F))
        }
    }

    /// Bytes as text, each ill-formed sequence replaced by U+FFFD as Rust's
    /// `String::from_utf8_lossy` does (one replacement per maximal ill-formed subpart).
    static func lossyString(_ bytes: [UInt8]) -> String {
        String(decoding: bytes, as: UTF8.self)
    }
}
