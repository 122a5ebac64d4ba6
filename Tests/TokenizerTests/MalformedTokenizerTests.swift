import TensorCore
import Testing
import TestSupport
import Tokenizer

/// Broken and unsupported tokenizer files: each must end in a thrown error that names the file
/// and the problem, never a crash. The broken files are a bundled tokenizer.json edited in one
/// place (or bytes that are not a tokenizer at all).
struct MalformedTokenizerTests {
    static let base = Fixtures.path("tokenizers/llama2-metaspace/tokenizer.json")
    static let baseJSON = try! JSONParser.parse(String(decoding: Fixtures.bytes(base), as: UTF8.self))

    /// `value` with the member at `path` (object keys, or array indexes as numbers) replaced by
    /// `replacement`, or removed when it is nil.
    static func editing(_ value: JSONValue, _ path: ArraySlice<String>, _ replacement: JSONValue?) -> JSONValue {
        guard let key = path.first else { return replacement ?? .null }
        switch value {
        case .object(var members):
            if let index = members.firstIndex(where: { $0.key == key }) {
                if path.count == 1 && replacement == nil {
                    members.remove(at: index)
                } else {
                    members[index].value = editing(members[index].value, path.dropFirst(), replacement)
                }
            } else if let replacement {
                members.append(
                    JSONMember(key: key, value: path.count == 1 ? replacement : editing(.object([]), path.dropFirst(), replacement)))
            }
            return .object(members)
        case .array(var values):
            let index = Int(key)!
            values[index] = editing(values[index], path.dropFirst(), replacement)
            return .array(values)
        default:
            return value
        }
    }

    static func edited(_ path: String, _ replacement: JSONValue?) -> [UInt8] {
        Array(editing(baseJSON, ArraySlice(path.split(separator: "/").map(String.init)), replacement).serialized(.compact).utf8)
    }

    static func problem(_ json: [UInt8], config: [UInt8]? = nil) -> String? {
        do {
            _ = try Tokenizer(json: json, config: config, path: "t.json", configPath: "c.json")
            return nil
        } catch {
            #expect(error.path == (config == nil ? "t.json" : "c.json"))
            return error.problem
        }
    }

    static let string = JSONValue.string
    static func number(_ text: String) -> JSONValue { .number(text) }

    @Test(
        arguments: [
            ("model", nil, "model: missing"),
            ("model/vocab", .array([]), "model.vocab: expected an object, found an array"),
            ("model/vocab/<s>", string("1"), "model.vocab[\"<s>\"]: expected a number, found a string"),
            ("model/vocab/<s>", number("4294967297"), "is not a whole number from 0 to 4194303"),
            ("model/vocab/<s>", number("1e19"), "is not a whole number from 0 to 4194303"),
            ("model/vocab/<s>", number("-1"), "is not a whole number from 0 to 4194303"),
            ("model/vocab/<s>", number("2.5"), "is not a whole number from 0 to 4194303"),
            ("model/vocab/<s>", number("0"), "id 0 is given to two tokens, \"<unk>\" and \"<s>\""),
            ("model/merges", nil, "model.merges: missing"),
            ("model/merges", string("a b"), "model.merges: expected an array, found a string"),
            ("model/merges/0", .array([string("zzz"), string("q")]), "model.merges[0]: token \"zzz\" is not in the vocabulary"),
            ("model/merges/0", .array([string("x"), string("q")]), "model.merges[0]: token \"xq\" is not in the vocabulary"),
            ("model/merges/0", string("a b c"), "model.merges[0]: expected two tokens separated by one space"),
            ("model/merges/0", .array([number("1"), number("2")]), "model.merges[0][0]: expected a string, found a number"),
            ("model/merges/0", .array([string("a")]), "model.merges[0]: expected a pair of tokens"),
            ("model/type", string("WordPiece"), "model type WordPiece is not supported; qtool reads BPE tokenizers only"),
            ("model/type", number("3"), "model.type: expected a string"),
            ("model/unk_token", string("<nope>"), "model.unk_token: \"<nope>\" is not in the vocabulary"),
            ("model/dropout", number("0.1"), "BPE dropout (random merges) is not supported"),
            ("model/dropout", number("7"), "must be a number from 0 to 1"),
            ("model/continuing_subword_prefix", string("##"), "continuing_subword_prefix is not supported"),
            ("added_tokens", .object([]), "added_tokens: expected an array"),
            ("added_tokens/0/content", nil, "added_tokens[0].content: missing"),
            ("added_tokens/0/special", string("yes"), "added_tokens[0].special: expected true or false"),
            ("added_tokens/0/id", number("-3"), "added_tokens[0].id: -3.0 is not a whole number"),
            ("version", string("2.0"), "version: unknown tokenizer version '2.0'"),
            (
                "normalizer", .object([JSONMember(key: "type", value: string("BertNormalizer"))]),
                "normalizer type BertNormalizer is not supported"
            ),
            ("pre_tokenizer/type", string("Whitespace"), "pre-tokenizer type Whitespace is not supported"),
            ("pre_tokenizer/prepend_scheme", string("sometimes"), "unknown prepend_scheme 'sometimes'"),
            ("pre_tokenizer/add_prefix_space", .bool(false), "add_prefix_space does not match declared prepend_scheme"),
            ("decoder/type", string("WordPiece"), "decoder type WordPiece is not supported"),
            ("post_processor/type", string("RobertaProcessing"), "post-processor type RobertaProcessing is not supported"),
            ("post_processor/single/0/SpecialToken/id", string("<x>"), "special token '<x>' is not in special_tokens"),
            ("post_processor/single/1/Sequence/id", string("B"), "the single template can hold only sequence A, not B"),
            ("post_processor/special_tokens/<s>/ids/0", number("5000"), "special token id 5000 names no token of the vocabulary"),
        ] as [(String, JSONValue?, String)])
    func brokenFieldsAreNamed(_ path: String, _ replacement: JSONValue?, _ message: String) {
        let problem = Self.problem(Self.edited(path, replacement))
        #expect(problem?.contains(message) == true, "\(path): \(problem ?? "no error")")
    }

    @Test func unknownSplitPatternsAndRegularExpressionsAreRefused() throws {
        var json = try JSONParser.parse(
            String(decoding: Fixtures.bytes(Fixtures.path("tokenizers/llama3-bytelevel/tokenizer.json")), as: UTF8.self))
        json = Self.editing(json, ["pre_tokenizer", "pretokenizers", "0", "pattern", "Regex"], .string(#"\w+|\s+"#))
        #expect(Self.problem(Array(json.serialized(.compact).utf8))?.contains(#"unknown split pattern "\w+|\s+""#) == true)
        let replace = JSONValue.object([
            JSONMember(key: "type", value: .string("Replace")),
            JSONMember(key: "pattern", value: .object([JSONMember(key: "Regex", value: .string(" +"))])),
            JSONMember(key: "content", value: .string(" ")),
        ])
        #expect(Self.problem(Self.edited("normalizer", replace))?.contains("only literal {\"String\": …} patterns are supported") == true)
    }

    @Test(arguments: [
        ("{", "not a valid tokenizer file: expected a string key at byte 1"),
        ("[]", "expected a JSON object, found an array"),
        ("", "not a valid tokenizer file"),
        ("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"a\": 1}, \"merges\": []}}", "duplicate key \"a\""),
        (String(repeating: "[", count: 500), "nested too deeply"),
    ])
    func bytesThatAreNoTokenizer(_ text: String, _ message: String) {
        let problem = Self.problem(Array(text.utf8))
        #expect(problem?.contains(message) == true, "\(problem ?? "no error")")
    }

    @Test func invalidUTF8IsRefused() {
        let problem = Self.problem(Array("{\"model\": \"".utf8) + [0xFF, 0xFE] + Array("\"}".utf8))
        #expect(problem?.contains("invalid UTF-8") == true)
    }

    @Test func aBrokenConfigIsNamed() {
        let json = Fixtures.bytes(Self.base)
        #expect(Self.problem(json, config: Array("{\"bos_token\": 3".utf8))?.contains("not a valid tokenizer file") == true)
        #expect(Self.problem(json, config: Array("{\"bos_token\": 3}".utf8))?.contains("bos_token: expected a string") == true)
    }

    /// WordPiece, Unigram and WordLevel files saved by tokenizers.
    @Test(arguments: ["wordpiece": "WordPiece", "unigram": "Unigram", "wordlevel": "WordLevel"])
    func otherModelsAreRefusedByName(_ file: String, _ type: String) {
        let path = Fixtures.path("tokenizers/other/\(file).json")
        #expect {
            _ = try Tokenizer(path: path)
        } throws: { error in
            guard let error = error as? TokenizerError else { return false }
            return error.path == path && error.problem == "model: model type \(type) is not supported; qtool reads BPE tokenizers only"
        }
    }

    @Test func missingFilesAreNamed() {
        let folder = Fixtures.temporaryFolder()
        #expect(throws: TokenizerError.missingFile(path: folder, problem: "no tokenizer.json in this folder")) {
            _ = try Tokenizer(path: folder)
        }
        #expect(throws: TokenizerError.missingFile(path: folder + "/x.json", problem: "no such file or folder")) {
            _ = try Tokenizer(path: folder + "/x.json")
        }
    }
}
