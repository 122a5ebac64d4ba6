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

extension JSONValue {
    /// The value as JSON text on one line, without spaces (for metadata values).
    public func compactSerialized(style: JSONStyle = .serde) -> String {
        switch self {
        case .array(let values): return "[" + values.map { $0.compactSerialized(style: style) }.joined(separator: ",") + "]"
        case .object(let members):
            return "{" + members.map { style.quoted($0.key) + ":" + $0.value.compactSerialized(style: style) }.joined(separator: ",") + "}"
        default: return serialized(style: style)
        }
    }

    /// The value as JSON text: pretty-printed with two-space indents, members in their order.
    public func serialized(indent: Int = 0, style: JSONStyle = .serde) -> String {
        let pad = String(repeating: " ", count: indent + 2)
        let closePad = String(repeating: " ", count: indent)
        switch self {
        case .null: return "null"
        case .bool(let b): return b ? "true" : "false"
        case .number(let text): return text
        case .string(let s): return style.quoted(s)
        case .array(let values):
            if values.isEmpty { return "[]" }
            // Arrays of scalars stay on one line (shapes read better that way).
            if values.allSatisfy({ $0.objectMembers == nil && $0.arrayValues == nil }) {
                return "[" + values.map { $0.serialized(style: style) }.joined(separator: ", ") + "]"
            }
            return "[\n" + values.map { pad + $0.serialized(indent: indent + 2, style: style) }.joined(separator: ",\n") + "\n" + closePad
                + "]"
        case .object(let members):
            if members.isEmpty { return "{}" }
            return "{\n"
                + members.map { pad + style.quoted($0.key) + ": " + $0.value.serialized(indent: indent + 2, style: style) }
                .joined(separator: ",\n") + "\n" + closePad + "}"
        }
    }

    public static func integer(_ value: Int) -> JSONValue { .number(String(value)) }

    /// A finite double as the shortest text that reads back the same; non-finite values become null.
    public static func double(_ value: Double) -> JSONValue { value.isFinite ? .number("\(value)") : .null }
}

extension JSONValue {
    /// The text of Python's `json.dumps(value, indent=indent, sort_keys=sortKeys)`, as transformers
    /// writes config.json (followed there by a newline). Numbers keep their literal text.
    public func pythonDumps(indent: Int = 2, sortKeys: Bool = true, level: Int = 0) -> String {
        let inner = String(repeating: " ", count: (level + 1) * indent)
        let outer = String(repeating: " ", count: level * indent)
        switch self {
        case .null: return "null"
        case .bool(let b): return b ? "true" : "false"
        case .number(let text): return text
        case .string(let s): return JSONStyle.python.quoted(s)
        case .array(let values):
            if values.isEmpty { return "[]" }
            return "[\n"
                + values.map { inner + $0.pythonDumps(indent: indent, sortKeys: sortKeys, level: level + 1) }
                .joined(separator: ",\n") + "\n" + outer + "]"
        case .object(let members):
            if members.isEmpty { return "{}" }
            let ordered =
                sortKeys
                ? members.sorted { $0.key.unicodeScalars.lexicographicallyPrecedes($1.key.unicodeScalars) { $0.value < $1.value } }
                : members
            return "{\n"
                + ordered.map {
                    inner + JSONStyle.python.quoted($0.key) + ": "
                        + $0.value.pythonDumps(indent: indent, sortKeys: sortKeys, level: level + 1)
                }
                .joined(separator: ",\n") + "\n" + outer + "}"
        }
    }

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
