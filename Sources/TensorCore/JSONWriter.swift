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
        case .report: text.utf8.allSatisfy { $0 >= 0x20 && $0 < 0x7F && $0 != UInt8(ascii: "\"") && $0 != UInt8(ascii: "\\") }
        }
    }

    /// `text` as a quoted JSON string.
    public func quoted(_ text: String) -> String {
        if needsNoEscape(text) { return "\"" + text + "\"" }
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            default:
                if scalar.value < 0x20 || (self == .python && scalar.value >= 0x7F) || (self == .report && TerminalText.needsEscape(scalar))
                {
                    if scalar.value > 0xFFFF {
                        // Python escapes astral characters as a UTF-16 surrogate pair.
                        let v = scalar.value - 0x10000
                        out += Self.unicodeEscape(0xD800 + (v >> 10)) + Self.unicodeEscape(0xDC00 + (v & 0x3FF))
                    } else {
                        out += Self.unicodeEscape(scalar.value)
                    }
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
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
        serialized(format, level: 0)
    }

    private func serialized(_ format: JSONFormat, level: Int) -> String {
        let separator = format.spaced ? ", " : ","
        func lines(_ items: [String], open: String, close: String) -> String {
            let indent = format.indent ?? 0
            let pad = String(repeating: " ", count: (level + 1) * indent)
            return open + "\n" + items.map { pad + $0 }.joined(separator: ",\n") + "\n" + String(repeating: " ", count: level * indent)
                + close
        }
        switch self {
        case .null: return "null"
        case .bool(let b): return b ? "true" : "false"
        case .number(let text): return text
        case .string(let s): return format.style.quoted(s)
        case .array(let values):
            if values.isEmpty { return "[]" }
            let items = values.map { $0.serialized(format, level: level + 1) }
            let inline = format.inlineScalarArrays && values.allSatisfy { $0.objectMembers == nil && $0.arrayValues == nil }
            guard format.indent != nil, !inline else { return "[" + items.joined(separator: separator) + "]" }
            return lines(items, open: "[", close: "]")
        case .object(let members):
            if members.isEmpty { return "{}" }
            let ordered =
                format.sortKeys
                ? members.sorted { $0.key.unicodeScalars.lexicographicallyPrecedes($1.key.unicodeScalars) { $0.value < $1.value } }
                : members
            let items = ordered.map {
                format.style.quoted($0.key) + (format.spaced ? ": " : ":") + $0.value.serialized(format, level: level + 1)
            }
            guard format.indent != nil else { return "{" + items.joined(separator: separator) + "}" }
            return lines(items, open: "{", close: "}")
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
