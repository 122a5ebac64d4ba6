/// What the post-processor does to one sequence's ids: TemplateProcessing's `single` template
/// (special tokens around `$A`), each template of a Sequence in turn; ByteLevel changes only
/// offsets, which qtool does not compute.
struct PostProcessor: Sendable {
    enum Piece: Sendable, Equatable {
        case special([Int32])
        case sequence
    }

    /// Templates applied in order, each to what the one before made.
    var templates: [[Piece]] = []

    init() {}

    init(_ json: TokenizerJSON) throws(TokenizerError) {
        try add(json)
    }

    private mutating func add(_ json: TokenizerJSON) throws(TokenizerError) {
        let type = try json.typeName()
        switch type {
        case "Sequence":
            for element in try json.required("processors").elements() { try add(element) }
        case "ByteLevel":
            break
        case "TemplateProcessing":
            let specials = try json.required("special_tokens")
            var pieces: [Piece] = []
            for element in try json.required("single").elements() {
                if let sequence = try element.member("Sequence") {
                    let id = try sequence.required("id").string()
                    guard id == "A" else {
                        throw sequence.invalid("the single template can hold only sequence A, not \(id)")
                    }
                    pieces.append(.sequence)
                } else if let special = try element.member("SpecialToken") {
                    let name = try special.required("id").string()
                    guard let entry = try specials.member(name) else {
                        throw special.invalid("special token '\(name)' is not in special_tokens")
                    }
                    let ids = try entry.required("ids").elements().map { (id) throws(TokenizerError) in
                        Int32(try id.integer(in: 0...Tokenizer.maximumTokenID))
                    }
                    pieces.append(.special(ids))
                } else {
                    throw element.invalid("expected {\"Sequence\": …} or {\"SpecialToken\": …}")
                }
            }
            templates.append(pieces)
        default:
            throw json.unsupported(
                "post-processor type \(type) is not supported (qtool applies TemplateProcessing, ByteLevel and Sequence)")
        }
    }

    /// `ids` with the templates' special tokens (none without `addSpecialTokens`).
    func process(_ ids: [Int32], addSpecialTokens: Bool) -> [Int32] {
        guard addSpecialTokens else { return ids }
        var current = ids
        for template in templates {
            var out: [Int32] = []
            out.reserveCapacity(current.count + 4)
            for piece in template {
                switch piece {
                case .special(let special): out += special
                case .sequence: out += current
                }
            }
            current = out
        }
        return current
    }

    /// The special tokens the templates put before and after the sequence (the first and the
    /// last ones), for a beginning- and end-of-sequence token a config does not name.
    var specialsAround: (before: Int32?, after: Int32?) {
        guard let template = templates.last, let sequence = template.firstIndex(of: .sequence) else { return (nil, nil) }
        var before: Int32?
        var after: Int32?
        for piece in template[..<sequence] { if case .special(let ids) = piece, let first = ids.first { before = before ?? first } }
        for piece in template[(sequence + 1)...] { if case .special(let ids) = piece, let last = ids.last { after = last } }
        return (before, after)
    }
}
