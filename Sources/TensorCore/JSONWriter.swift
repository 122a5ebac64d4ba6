/// Writes JSON text the way a reference tool does, byte for byte.
public enum JSONStyle: Sendable {
    /// serde_json's compact output (the safetensors library): only `"`, `\` and control characters
    /// are escaped; no spaces.
    case serde
    /// Python's `json.dumps` defaults (`ensure_ascii=True`): everything outside printable ASCII is
    /// escaped as `\uXXXX`.
    case python
    /// Reports printed on a terminal: serde's, and also DEL, C1 controls, line separators and
    /// bidirectional overrides escaped, so no string from a file acts on the terminal.
    case report
}

extension JSONStyle {
    /// Whether `text` goes between quotes as it is, in this style.
    public func needsNoEscape(_ text: String) -> Bool {
        switch self {
        case .serde: text.utf8.allSatisfy { $0 >= 0x20 && $0 != UInt8(ascii: "\"") && $0 != UInt8(ascii: "\\") }
        case .python: text.utf8.allSatisfy { $0 >= 0x20 && $0 < 0x7F && $0 != UInt8(ascii: "\"") && $0 != UInt8(ascii: "\\") }
        case .report:
            // Beyond ASCII only C1 controls (C2 80–9F), U+061C (D8 9C) and the line separators
            // and bidirectional controls (E2 80 xx, E2 81 xx) are escaped: found by their bytes.
            text.utf8.withContiguousStorageIfAvailable { bytes in
                var previous: UInt8 = 0
                for byte in bytes {
                    if byte < 0x20 || byte == 0x7F || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") { return false }
                    switch previous {
                    case 0xC2 where byte < 0xA0, 0xD8 where byte == 0x9C, 0xE2 where byte == 0x80 || byte == 0x81: return false
                    default: break
                    }
                    previous = byte
                }
                return true
            } ?? false
        }
    }

    /// `text` as a quoted JSON string.
    public func quoted(_ text: String) -> String {
        var out: [UInt8] = []
        appendQuoted(text, to: &out)
        return String(decoding: out, as: UTF8.self)
    }

    /// Appends `text` as a quoted JSON string to the UTF-8 bytes `out`.
    public func appendQuoted(_ text: String, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        defer { out.append(UInt8(ascii: "\"")) }
        if needsNoEscape(text) {
            out += text.utf8
            return
        }
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\"".utf8
            case "\\": out += "\\\\".utf8
            case "\n": out += "\\n".utf8
            case "\r": out += "\\r".utf8
            case "\t": out += "\\t".utf8
            case "\u{08}": out += "\\b".utf8
            case "\u{0C}": out += "\\f".utf8
            default:
                if scalar.value < 0x20 || (self == .python && scalar.value >= 0x7F) || (self == .report && TerminalText.needsEscape(scalar))
                {
                    if scalar.value > 0xFFFF {
                        // Python escapes astral characters as a UTF-16 surrogate pair.
                        let v = scalar.value - 0x10000
                        out += (Self.unicodeEscape(0xD800 + (v >> 10)) + Self.unicodeEscape(0xDC00 + (v & 0x3FF))).utf8
                    } else {
                        out += Self.unicodeEscape(scalar.value).utf8
                    }
                } else {
                    out += String(scalar).utf8
                }
            }
        }
    }

    private static func unicodeEscape(_ value: UInt32) -> String {
        let hex = String(value, radix: 16)
        return "\\u" + hex.leftPadded(to: 4, with: "0")
    }
}

/// How JSON text is laid out: the one serializer's options. Each reference tool's layout is one
/// of the named formats.
public struct JSONFormat: Sendable {
    /// How strings are escaped.
    public var style: JSONStyle
    /// Spaces per level, each member and element on its own line; nil writes one line.
    public var indent: Int?
    /// Separators ", " and ": " (Python's json.dumps) rather than "," and ":" (serde_json).
    public var spaced: Bool
    /// Object members in code point order of their keys (Python's `sort_keys=True`), else as given.
    public var sortKeys: Bool
    /// In indented output, arrays of scalars on one line (shapes read better that way).
    public var inlineScalarArrays: Bool

    public init(style: JSONStyle, indent: Int?, spaced: Bool, sortKeys: Bool, inlineScalarArrays: Bool) {
        self.style = style
        self.indent = indent
        self.spaced = spaced
        self.sortKeys = sortKeys
        self.inlineScalarArrays = inlineScalarArrays
    }

    /// serde_json's `to_string`: one line, no spaces (safetensors metadata values).
    public static let compact = JSONFormat(style: .serde, indent: nil, spaced: false, sortKeys: false, inlineScalarArrays: false)
    /// Two-space indents, members in their order, scalar arrays inline (the .nf4 header).
    public static let pretty = JSONFormat(style: .serde, indent: 2, spaced: true, sortKeys: false, inlineScalarArrays: true)
    /// `pretty`, with every string escaped for a terminal (qtool's --json reports).
    public static let report = JSONFormat(style: .report, indent: 2, spaced: true, sortKeys: false, inlineScalarArrays: true)

    /// Python's `json.dumps(value, indent=indent, sort_keys=sortKeys)` with its default
    /// `ensure_ascii=True` (transformers' config.json and index files, bitsandbytes' quant state).
    public static func pythonDumps(indent: Int? = 2, sortKeys: Bool = true) -> JSONFormat {
        JSONFormat(style: .python, indent: indent, spaced: true, sortKeys: sortKeys, inlineScalarArrays: false)
    }
}

extension JSONValue {
    /// The value as JSON text laid out as `format` says. Numbers keep their literal text.
    public func serialized(_ format: JSONFormat = .pretty) -> String {
        var out: [UInt8] = []
        write(to: &out, format, level: 0)
        return String(decoding: out, as: UTF8.self)
    }

    /// Appends the value's text to the UTF-8 bytes `out` (one buffer for the whole value: a report
    /// of millions of ids is written without a string per line).
    private func write(to out: inout [UInt8], _ format: JSONFormat, level: Int) {
        let separator = format.spaced ? ", " : ","
        let indent = format.indent ?? 0
        /// Items on lines of their own, indented one level deeper than the brackets.
        func lines<Item>(_ items: [Item], open: String, close: String, _ item: (Item, inout [UInt8]) -> Void) {
            out += (open + "\n").utf8
            for (i, element) in items.enumerated() {
                if i > 0 { out += ",\n".utf8 }
                out += repeatElement(UInt8(ascii: " "), count: (level + 1) * indent)
                item(element, &out)
            }
            out.append(UInt8(ascii: "\n"))
            out += repeatElement(UInt8(ascii: " "), count: level * indent)
            out += close.utf8
        }
        switch self {
        case .null: out += "null".utf8
        case .bool(let b): out += (b ? "true" : "false").utf8
        case .number(let text): out += text.utf8
        case .string(let s): format.style.appendQuoted(s, to: &out)
        case .array(let values):
            if values.isEmpty {
                out += "[]".utf8
                return
            }
            let inline = format.inlineScalarArrays && values.allSatisfy { $0.objectMembers == nil && $0.arrayValues == nil }
            guard format.indent != nil, !inline else {
                out.append(UInt8(ascii: "["))
                for (i, value) in values.enumerated() {
                    if i > 0 { out += separator.utf8 }
                    value.write(to: &out, format, level: level + 1)
                }
                out.append(UInt8(ascii: "]"))
                return
            }
            lines(values, open: "[", close: "]") { value, out in value.write(to: &out, format, level: level + 1) }
        case .object(let members):
            if members.isEmpty {
                out += "{}".utf8
                return
            }
            let ordered =
                format.sortKeys
                ? members.sorted { $0.key.unicodeScalars.lexicographicallyPrecedes($1.key.unicodeScalars) { $0.value < $1.value } }
                : members
            func member(_ member: JSONMember, _ out: inout [UInt8]) {
                format.style.appendQuoted(member.key, to: &out)
                out += (format.spaced ? ": " : ":").utf8
                member.value.write(to: &out, format, level: level + 1)
            }
            guard format.indent != nil else {
                out.append(UInt8(ascii: "{"))
                for (i, element) in ordered.enumerated() {
                    if i > 0 { out += separator.utf8 }
                    member(element, &out)
                }
                out.append(UInt8(ascii: "}"))
                return
            }
            lines(ordered, open: "{", close: "}", member)
        }
    }

    public static func integer(_ value: Int) -> JSONValue { .number(String(value)) }

    /// A finite double as the shortest text that reads back the same; non-finite values become null.
    public static func double(_ value: Double) -> JSONValue { value.isFinite ? .number("\(value)") : .null }

    /// Python's `repr` of a float: the shortest text that reads back the same double, with an
    /// exponent below 1e-4 and from 1e16 on (`1e-05`, `1e+16`), and `.0` on whole numbers.
    public static func pythonFloat(_ value: Double) -> JSONValue {
        guard value.isFinite else { return .null }
        var text = "\(value)"
        if let e = text.firstIndex(where: { $0 == "e" || $0 == "E" }) {
            // Swift writes 1e-05 and 1e+16 as Python does; normalize the few forms it writes otherwise.
            var mantissa = String(text[..<e])
            var exponent = String(text[text.index(after: e)...])
            if mantissa.hasSuffix(".0") { mantissa.removeLast(2) }
            let negative = exponent.hasPrefix("-")
            exponent = exponent.trimmingPrefix(while: { $0 == "-" || $0 == "+" })
            while exponent.count < 2 { exponent = "0" + exponent }
            text = mantissa + "e" + (negative ? "-" : "+") + exponent
        } else if !text.contains(".") {
            text += ".0"
        }
        return .number(text)
    }
}

extension String {
    fileprivate func trimmingPrefix(while predicate: (Character) -> Bool) -> String {
        String(drop(while: predicate))
    }
}
