import TensorCore

/// One value of a tokenizer.json with where it is (`model.merges[3]`), so that every problem is
/// reported with its file and field.
struct TokenizerJSON {
    let value: JSONValue
    let field: String
    let file: String

    init(_ value: JSONValue, field: String, file: String) {
        self.value = value
        self.field = field
        self.file = file
    }

    /// The object member `key`, nil when it is absent or null (serde's `Option`).
    func member(_ key: String) throws(TokenizerError) -> TokenizerJSON? {
        guard let members = value.objectMembers else { throw invalid("expected an object, found \(value.kindName)") }
        guard let found = members.first(where: { $0.key.utf8.elementsEqual(key.utf8) }), found.value != .null else { return nil }
        return TokenizerJSON(found.value, field: field.isEmpty ? key : "\(field).\(key)", file: file)
    }

    func required(_ key: String) throws(TokenizerError) -> TokenizerJSON {
        guard let found = try member(key) else {
            throw .invalidField(path: file, field: field.isEmpty ? key : "\(field).\(key)", problem: "missing")
        }
        return found
    }

    func members() throws(TokenizerError) -> [JSONMember] {
        guard let members = value.objectMembers else { throw invalid("expected an object, found \(value.kindName)") }
        return members
    }

    func elements() throws(TokenizerError) -> [TokenizerJSON] {
        guard let values = value.arrayValues else { throw invalid("expected an array, found \(value.kindName)") }
        return values.enumerated().map { TokenizerJSON($0.element, field: "\(field)[\($0.offset)]", file: file) }
    }

    func string() throws(TokenizerError) -> String {
        guard let text = value.stringValue else { throw invalid("expected a string, found \(value.kindName)") }
        return text
    }

    func bool() throws(TokenizerError) -> Bool {
        guard let flag = value.boolValue else { throw invalid("expected true or false, found \(value.kindName)") }
        return flag
    }

    /// A boolean member, `absent` when it is missing or null.
    func flag(_ key: String, absent: Bool) throws(TokenizerError) -> Bool {
        try member(key)?.bool() ?? absent
    }

    /// A whole number within `range`.
    func integer(in range: ClosedRange<Int>) throws(TokenizerError) -> Int {
        guard case .number = value else { throw invalid("expected a number, found \(value.kindName)") }
        guard let number = value.integerValue, range.contains(number) else {
            throw invalid(
                "\(value.doubleValue.map { "\($0)" } ?? "the number") is not a whole number from \(range.lowerBound) to \(range.upperBound)"
            )
        }
        return number
    }

    /// The `type` member of a component (`"BPE"`, `"Sequence"`).
    func typeName() throws(TokenizerError) -> String {
        try required("type").string()
    }

    /// The components of a `Sequence` (its array `key`), each read by `parse`, in one list; nil
    /// when this component is not a Sequence.
    func sequence<Step>(
        _ key: String, _ parse: (TokenizerJSON) throws(TokenizerError) -> [Step]
    ) throws(TokenizerError) -> [Step]? {
        guard try typeName() == "Sequence" else { return nil }
        var steps: [Step] = []
        for element in try required(key).elements() { steps += try parse(element) }
        return steps
    }

    func invalid(_ problem: String) -> TokenizerError {
        .invalidField(path: file, field: field.isEmpty ? "(top level)" : field, problem: problem)
    }

    func unsupported(_ problem: String) -> TokenizerError {
        .unsupported(path: file, field: field.isEmpty ? "(top level)" : field, problem: problem)
    }
}
