/// Writes JSON text the way a reference tool does, byte for byte.
public enum JSONStyle: Sendable {
    /// serde_json's compact output (the safetensors library): only `"`, `\` and control characters
    /// are escaped; no spaces.
    case serde
    /// Python's `json.dumps` defaults (`ensure_ascii=True`): everything outside printable ASCII is
    /// escaped as `\uXXXX`.
    case python
}

extension JSONStyle {
    /// `text` as a quoted JSON string.
    public func quoted(_ text: String) -> String {
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
                if scalar.value < 0x20 || (self == .python && scalar.value >= 0x7F) {
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
        return "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
    }
}

extension JSONValue {
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
            return "[\n" + values.map { pad + $0.serialized(indent: indent + 2, style: style) }.joined(separator: ",\n") + "\n" + closePad + "]"
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
