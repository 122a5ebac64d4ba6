/// A `rank_pattern` / `alpha_pattern` key matched against module names as PEFT matches it:
/// `re.match(rf"(.*\.)?({key})$", module_name)`, with Python's regular-expression syntax.
///
/// Python's engine (and Swift's `Regex`) backtrack, so a key such as `(.*)*x` takes exponential
/// time on a long name. This matcher compiles the key to a Thompson NFA and runs it over the name
/// as a set of states (Pike's method without captures): time is O(name length × pattern size)
/// whatever the key. Constructs an NFA cannot express (backreferences, lookaround, conditionals)
/// are refused with a message, as are patterns whose counted repetitions expand past a limit.
public struct ModulePattern: Sendable {
    public struct SyntaxError: Error, Equatable {
        public let message: String
    }

    /// Longest key qtool compiles, and most NFA states its repetitions may expand to.
    public static let maximumKeyLength = 4096
    public static let maximumStates = 100_000

    let program: [Instruction]
    let start: Int

    public init(peftKey key: String) throws(SyntaxError) {
        guard key.unicodeScalars.count <= Self.maximumKeyLength else {
            throw SyntaxError(message: "longer than \(Self.maximumKeyLength) characters")
        }
        var parser = PatternParser(Array(key.unicodeScalars))
        let body = try parser.parseAll()
        // (.*\.)?(key)$
        let prefix: Node = .repeatCount(.concatenation([.repeatCount(.anyExceptNewline, 0, nil), .literal(".")]), 0, 1)
        let whole: Node = .concatenation([prefix, body, .assertion(.endOfLine)])
        var compiler = NFACompiler()
        start = try compiler.compile(whole, next: compiler.emit(.match))
        program = compiler.program
    }

    /// Whether `module` matches from its first character (`re.match`).
    public func matches(_ module: String) -> Bool {
        let text = Array(module.unicodeScalars)
        var current = StateSet(capacity: program.count)
        var next = StateSet(capacity: program.count)
        if addState(start, at: 0, text, &current) { return true }
        for position in text.indices {
            next.clear()
            for state in current.members {
                if case .character(let test, let successor) = program[state], test.accepts(text[position]) {
                    if addState(successor, at: position + 1, text, &next) { return true }
                }
            }
            swap(&current, &next)
            if current.members.isEmpty { return false }
        }
        return false
    }

    /// Adds `state` and everything reachable from it without consuming a character; true when
    /// that reaches the match.
    private func addState(_ state: Int, at position: Int, _ text: [Unicode.Scalar], _ set: inout StateSet) -> Bool {
        var stack = [state]
        while let s = stack.popLast() {
            guard set.insert(s) else { continue }
            switch program[s] {
            case .match: return true
            case .split(let a, let b): stack.append(b); stack.append(a)
            case .assert(let kind, let target): if kind.holds(at: position, in: text) { stack.append(target) }
            case .character: break
            }
        }
        return false
    }
}

/// The states of one step, with O(1) membership.
struct StateSet {
    private var mark: [Bool]
    private(set) var members: [Int] = []

    init(capacity: Int) { mark = [Bool](repeating: false, count: capacity) }

    mutating func insert(_ state: Int) -> Bool {
        if mark[state] { return false }
        mark[state] = true
        members.append(state)
        return true
    }

    mutating func clear() {
        for state in members { mark[state] = false }
        members.removeAll(keepingCapacity: true)
    }
}

// MARK: Syntax

indirect enum Node {
    case empty
    case literal(Unicode.Scalar)
    case anyExceptNewline
    case set(CharacterTest)
    case concatenation([Node])
    case alternation([Node])
    /// `minimum` to `maximum` (nil: unbounded) repetitions.
    case repeatCount(Node, Int, Int?)
    case assertion(Assertion)
}

enum Assertion: Sendable {
    case startOfText, endOfLine, endOfText, wordBoundary, notWordBoundary

    func holds(at position: Int, in text: [Unicode.Scalar]) -> Bool {
        switch self {
        case .startOfText: return position == 0
        // Python's `$` without MULTILINE: at the end, or before a newline that ends the text.
        case .endOfLine: return position == text.count || (position == text.count - 1 && text[position] == "\n")
        case .endOfText: return position == text.count
        case .wordBoundary, .notWordBoundary:
            let before = position > 0 && CharacterTest.isWord(text[position - 1])
            let after = position < text.count && CharacterTest.isWord(text[position])
            return (before != after) == (self == .wordBoundary)
        }
    }
}

/// A character class: ranges and class escapes, possibly negated.
struct CharacterTest: Sendable {
    enum Item: Sendable {
        case range(UInt32, UInt32)
        case digit(Bool), word(Bool), space(Bool)
    }
    var items: [Item]
    var negated: Bool

    func accepts(_ c: Unicode.Scalar) -> Bool {
        var hit = false
        for item in items {
            switch item {
            case .range(let low, let high): hit = c.value >= low && c.value <= high
            case .digit(let positive): hit = Self.isDigit(c) == positive
            case .word(let positive): hit = Self.isWord(c) == positive
            case .space(let positive): hit = Self.isSpace(c) == positive
            }
            if hit { break }
        }
        return hit != negated
    }

    /// Python's `\d` on str: Unicode decimal digits.
    static func isDigit(_ c: Unicode.Scalar) -> Bool { c.properties.numericType == .decimal }
    /// Python's `\w` on str: `isalnum()` or `_`.
    static func isWord(_ c: Unicode.Scalar) -> Bool {
        if c == "_" { return true }
        switch c.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter,
            .decimalNumber, .letterNumber, .otherNumber:
            return true
        default: return false
        }
    }
    static func isSpace(_ c: Unicode.Scalar) -> Bool {
        (0x09...0x0D).contains(c.value) || (0x1C...0x1F).contains(c.value) || c.properties.isWhitespace
    }
}

/// Python `re` syntax into `Node`s.
struct PatternParser {
    let text: [Unicode.Scalar]
    var position = 0
    var depth = 0
    static let maximumDepth = 200

    init(_ text: [Unicode.Scalar]) { self.text = text }

    var current: Unicode.Scalar? { position < text.count ? text[position] : nil }

    func fail(_ message: String) -> ModulePattern.SyntaxError { .init(message: "\(message) (at character \(position + 1))") }

    mutating func parseAll() throws(ModulePattern.SyntaxError) -> Node {
        let node = try parseAlternation()
        if current == ")" { throw fail("unbalanced ')'") }
        return node
    }

    mutating func parseAlternation() throws(ModulePattern.SyntaxError) -> Node {
        var branches = [try parseConcatenation()]
        while current == "|" {
            position += 1
            branches.append(try parseConcatenation())
        }
        return branches.count == 1 ? branches[0] : .alternation(branches)
    }

    mutating func parseConcatenation() throws(ModulePattern.SyntaxError) -> Node {
        var items: [Node] = []
        while let c = current, c != "|", c != ")" {
            var atom = try parseAtom()
            while let quantifier = try parseQuantifier() {
                if case .assertion = atom { throw fail("nothing to repeat") }
                atom = .repeatCount(atom, quantifier.0, quantifier.1)
            }
            items.append(atom)
        }
        return items.count == 1 ? items[0] : items.isEmpty ? .empty : .concatenation(items)
    }

    /// `*`, `+`, `?`, `{m}`, `{m,}`, `{,n}`, `{m,n}`, each optionally lazy (`?`): laziness does
    /// not change whether a name matches. A `{` that does not start a valid count is a literal.
    mutating func parseQuantifier() throws(ModulePattern.SyntaxError) -> (Int, Int?)? {
        guard let c = current else { return nil }
        var result: (Int, Int?)
        switch c {
        case "*": result = (0, nil); position += 1
        case "+": result = (1, nil); position += 1
        case "?": result = (0, 1); position += 1
        case "{":
            guard let counted = try parseCount() else { return nil }
            result = counted
        default: return nil
        }
        if current == "?" {
            position += 1
        } else if current == "+" {
            throw fail("possessive quantifiers are not supported")
        }
        return result
    }

    mutating func parseCount() throws(ModulePattern.SyntaxError) -> (Int, Int?)? {
        var index = position + 1
        func number() -> Int?? {
            var digits = ""
            while index < text.count, ("0"..."9").contains(text[index]) {
                digits.unicodeScalars.append(text[index])
                index += 1
            }
            if digits.isEmpty { return .some(nil) }
            guard digits.count <= 6, let value = Int(digits) else { return nil }
            return .some(value)
        }
        guard let low = number() else { throw fail("repetition count too large") }
        var high: Int?? = low
        if index < text.count, text[index] == "," {
            index += 1
            guard let parsed = number() else { throw fail("repetition count too large") }
            high = .some(parsed)
        } else if low == nil {
            return nil
        }
        guard index < text.count, text[index] == "}" else { return nil }
        position = index + 1
        let minimum = low ?? 0
        let maximum = high ?? nil
        if let maximum, maximum < minimum { throw fail("min repeat greater than max repeat") }
        return (minimum, maximum)
    }

    mutating func parseAtom() throws(ModulePattern.SyntaxError) -> Node {
        let c = current!
        switch c {
        case "(":
            position += 1
            depth += 1
            defer { depth -= 1 }
            guard depth <= Self.maximumDepth else { throw fail("groups nested too deeply") }
            if current == "?" {
                position += 1
                switch current {
                case ":": position += 1
                case "P":
                    position += 1
                    guard current == "<" else { throw fail("named backreferences are not supported") }
                    while let n = current, n != ">" { position += 1 }
                    guard current == ">" else { throw fail("unterminated group name") }
                    position += 1
                case "=", "!": throw fail("lookahead is not supported")
                case "<":
                    if position + 1 < text.count, text[position + 1] == "=" || text[position + 1] == "!" {
                        throw fail("lookbehind is not supported")
                    }
                    while let n = current, n != ">" { position += 1 }
                    guard current == ">" else { throw fail("unterminated group name") }
                    position += 1
                case "(": throw fail("conditional groups are not supported")
                case ">": throw fail("atomic groups are not supported")
                case "#":
                    while let n = current, n != ")" { position += 1 }
                    guard current == ")" else { throw fail("unterminated comment") }
                    position += 1
                    return .empty
                default: throw fail("inline flags are not supported")
                }
            }
            let inner = try parseAlternation()
            guard current == ")" else { throw fail("missing ')'") }
            position += 1
            return inner
        case "[":
            return .set(try parseClass())
        case ".":
            position += 1
            return .anyExceptNewline
        case "^":
            position += 1
            return .assertion(.startOfText)
        case "$":
            position += 1
            return .assertion(.endOfLine)
        case "*", "+", "?":
            throw fail("nothing to repeat")
        case "\\":
            return try parseEscape(inClass: false).node
        default:
            position += 1
            return .literal(c)
        }
    }

    /// An escape: a literal, a class escape (`\d`), or outside a class an anchor (`\A`, `\b`).
    mutating func parseEscape(inClass: Bool) throws(ModulePattern.SyntaxError) -> (node: Node, scalar: Unicode.Scalar?) {
        position += 1
        guard let c = current else { throw fail("bad escape (end of pattern)") }
        position += 1
        func literal(_ s: Unicode.Scalar) -> (Node, Unicode.Scalar?) { (.literal(s), s) }
        switch c {
        case "d", "D": return (.set(CharacterTest(items: [.digit(c == "d")], negated: false)), nil)
        case "w", "W": return (.set(CharacterTest(items: [.word(c == "w")], negated: false)), nil)
        case "s", "S": return (.set(CharacterTest(items: [.space(c == "s")], negated: false)), nil)
        case "n": return literal("\n")
        case "t": return literal("\t")
        case "r": return literal("\r")
        case "f": return literal("\u{0C}")
        case "v": return literal("\u{0B}")
        case "a": return literal("\u{07}")
        case "b" where inClass: return literal("\u{08}")
        case "b", "B": return (.assertion(c == "b" ? .wordBoundary : .notWordBoundary), nil)
        case "A" where !inClass: return (.assertion(.startOfText), nil)
        case "Z" where !inClass: return (.assertion(.endOfText), nil)
        case "x", "u", "U":
            let count = c == "x" ? 2 : c == "u" ? 4 : 8
            var value: UInt32 = 0
            for _ in 0..<count {
                guard let digit = current, let v = UInt32(String(digit), radix: 16) else { throw fail("incomplete escape \\\(c)") }
                value = value * 16 + v
                position += 1
            }
            guard let scalar = Unicode.Scalar(value) else { throw fail("bad escape \\\(c)") }
            return literal(scalar)
        case "0":
            return literal("\u{0}")
        case "1"..."9":
            throw fail("backreferences are not supported")
        default:
            if c.properties.isAlphabetic || ("0"..."9").contains(c) { throw fail("bad escape \\\(c)") }
            return literal(c)
        }
    }

    mutating func parseClass() throws(ModulePattern.SyntaxError) -> CharacterTest {
        position += 1
        var test = CharacterTest(items: [], negated: false)
        if current == "^" {
            test.negated = true
            position += 1
        }
        var first = true
        while true {
            guard let c = current else { throw fail("unterminated character set") }
            if c == "]" && !first { position += 1; break }
            first = false
            var low: Unicode.Scalar
            if c == "\\" {
                let escape = try parseEscape(inClass: true)
                guard let scalar = escape.scalar else {
                    if case .set(let inner) = escape.node { test.items += inner.items }
                    continue
                }
                low = scalar
            } else {
                low = c
                position += 1
            }
            if current == "-", position + 1 < text.count, text[position + 1] != "]" {
                position += 1
                var high: Unicode.Scalar
                if current == "\\" {
                    guard let scalar = try parseEscape(inClass: true).scalar else { throw fail("bad character range") }
                    high = scalar
                } else {
                    high = current!
                    position += 1
                }
                guard high.value >= low.value else { throw fail("bad character range") }
                test.items.append(.range(low.value, high.value))
            } else {
                test.items.append(.range(low.value, low.value))
            }
        }
        return test
    }
}

// MARK: NFA

enum Instruction {
    /// Consumes one character that passes the test, then continues at the successor.
    case character(CharacterTest, Int)
    case split(Int, Int)
    case assert(Assertion, Int)
    case match
}

/// Compiles back to front: each node is emitted with the state it continues to, so no patching.
struct NFACompiler {
    var program: [Instruction] = []

    mutating func emit(_ instruction: Instruction) throws(ModulePattern.SyntaxError) -> Int {
        guard program.count < ModulePattern.maximumStates else {
            throw .init(message: "the pattern expands to more than \(ModulePattern.maximumStates) states")
        }
        program.append(instruction)
        return program.count - 1
    }

    mutating func compile(_ node: Node, next: Int) throws(ModulePattern.SyntaxError) -> Int {
        switch node {
        case .empty: return next
        case .literal(let c): return try character(CharacterTest(items: [.range(c.value, c.value)], negated: false), next)
        case .anyExceptNewline: return try character(CharacterTest(items: [.range(0x0A, 0x0A)], negated: true), next)
        case .set(let test): return try character(test, next)
        case .assertion(let kind): return try emit(.assert(kind, next))
        case .concatenation(let items):
            var target = next
            for item in items.reversed() { target = try compile(item, next: target) }
            return target
        case .alternation(let branches):
            var target = try compile(branches.last!, next: next)
            for branch in branches.dropLast().reversed() {
                target = try emit(.split(try compile(branch, next: next), target))
            }
            return target
        case .repeatCount(let inner, let minimum, let maximum):
            var target = next
            if let maximum {
                // Optional copies, innermost first: x? (x? (…)).
                for _ in 0..<(maximum - minimum) {
                    let body = try compile(inner, next: target)
                    target = try emit(.split(body, next))
                }
            } else {
                // x*: a loop state that either enters the body (which jumps back) or leaves.
                let loop = try emit(.split(-1, next))
                let body = try compile(inner, next: loop)
                program[loop] = .split(body, next)
                target = loop
            }
            for _ in 0..<minimum { target = try compile(inner, next: target) }
            return target
        }
    }

    private mutating func character(_ test: CharacterTest, _ next: Int) throws(ModulePattern.SyntaxError) -> Int {
        try emit(.character(test, next))
    }
}
