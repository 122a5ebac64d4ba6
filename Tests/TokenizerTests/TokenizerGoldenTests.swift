import TensorCore
import Testing
import TestSupport
import Tokenizer

/// HF tokenizers' own output (fixtures/tokenizers/goldens.json, made by
/// fixtures/generate/tokenizer_goldens.py) for each bundled tokenizer and each awkward text.
/// Text is compared by its bytes: Swift's `==` on strings would call "à" and "a\u{300}" equal.
struct TokenizerGoldenTests {
    struct Golden: Sendable {
        var name: String
        var text: String
        var ids: [Int]
        var idsWithoutSpecial: [Int]
        var tokens: [String]
        var decoded: String
        var decodedSkippingSpecial: String
        var decodedEach: [String]?
    }

    struct Reference: Sendable, CustomTestStringConvertible {
        var name: String
        var path: String
        var vocabularySize: Int
        var bosTokenID: Int?
        var eosTokenID: Int?
        var cases: [Golden]
        var testDescription: String { name }
    }

    static let references: [Reference] = {
        let root = try! JSONParser.parse(String(decoding: Fixtures.bytes(Fixtures.path("tokenizers/goldens.json")), as: UTF8.self))
        func ints(_ value: JSONValue?) -> [Int] { value!.arrayValues!.map { $0.integerValue! } }
        func strings(_ value: JSONValue?) -> [String] { value!.arrayValues!.map { $0.stringValue! } }
        return root["tokenizers"]!.objectMembers!.map { member in
            let entry = member.value
            return Reference(
                name: member.key, path: entry["path"]!.stringValue!, vocabularySize: entry["vocab_size"]!.integerValue!,
                bosTokenID: entry["bos_token_id"]!.integerValue, eosTokenID: entry["eos_token_id"]!.integerValue,
                cases: entry["cases"]!.arrayValues!.map { item in
                    Golden(
                        name: item["name"]!.stringValue!, text: item["text"]!.stringValue!, ids: ints(item["ids"]),
                        idsWithoutSpecial: ints(item["ids_without_special"]), tokens: strings(item["tokens"]),
                        decoded: item["decoded"]!.stringValue!, decodedSkippingSpecial: item["decoded_skipping_special"]!.stringValue!,
                        decodedEach: item["decoded_each"].map { strings($0) })
                })
        }
    }()

    static func load(_ reference: Reference) throws -> Tokenizer {
        try Tokenizer(path: Fixtures.path(reference.path))
    }

    @Test func everyTokenizerHasGoldens() {
        #expect(
            Set(Self.references.map(\.name)) == [
                "gpt2-bytelevel", "llama3-bytelevel", "qwen2-bytelevel", "qwen35-bytelevel", "llama2-metaspace", "llama2-legacy",
                "tiny-llama", "gpt2-prefix-space", "llama2-metaspace-split",
            ])
        #expect(Self.references.allSatisfy { $0.cases.count >= 40 })
    }

    @Test(arguments: references)
    func encodesAsTheReference(_ reference: Reference) throws {
        let tokenizer = try Self.load(reference)
        for golden in reference.cases {
            #expect(tokenizer.encode(golden.text) == golden.ids, "\(reference.name) \(golden.name)")
            #expect(tokenizer.encode(golden.text, addSpecialTokens: false) == golden.idsWithoutSpecial, "\(reference.name) \(golden.name)")
        }
    }

    @Test(arguments: references)
    func spellsTokensAsTheReference(_ reference: Reference) throws {
        let tokenizer = try Self.load(reference)
        for golden in reference.cases {
            let tokens = golden.ids.map { tokenizer.token($0) ?? [] }
            #expect(tokens == golden.tokens.map { Array($0.utf8) }, "\(reference.name) \(golden.name)")
        }
    }

    @Test(arguments: references)
    func decodesAsTheReference(_ reference: Reference) throws {
        let tokenizer = try Self.load(reference)
        for golden in reference.cases {
            #expect(Array(tokenizer.decode(golden.ids).utf8) == Array(golden.decoded.utf8), "\(reference.name) \(golden.name)")
            #expect(
                Array(tokenizer.decode(golden.ids, skipSpecialTokens: true).utf8) == Array(golden.decodedSkippingSpecial.utf8),
                "\(reference.name) \(golden.name)")
            // One id at a time: a byte-level token may hold part of a character (U+FFFD then).
            if let each = golden.decodedEach {
                let decoded = golden.idsWithoutSpecial.map { Array(tokenizer.decode([$0]).utf8) }
                #expect(decoded == each.map { Array($0.utf8) }, "\(reference.name) \(golden.name)")
            }
        }
    }

    /// decode(encode(x)) gives x back wherever the reference's does.
    @Test(arguments: references)
    func roundTripsWhereTheReferenceDoes(_ reference: Reference) throws {
        let tokenizer = try Self.load(reference)
        var roundTrips = 0
        for golden in reference.cases where Array(golden.decodedSkippingSpecial.utf8) == Array(golden.text.utf8) {
            let ids = tokenizer.encode(golden.text, addSpecialTokens: false)
            #expect(
                Array(tokenizer.decode(ids, skipSpecialTokens: true).utf8) == Array(golden.text.utf8), "\(reference.name) \(golden.name)")
            roundTrips += 1
        }
        #expect(roundTrips >= 5)
    }

    @Test(arguments: references)
    func knowsItsVocabularyAndSpecialTokens(_ reference: Reference) throws {
        let tokenizer = try Self.load(reference)
        #expect(tokenizer.vocabularySize == reference.vocabularySize)
        #expect(tokenizer.bosTokenID == reference.bosTokenID)
        #expect(tokenizer.eosTokenIDs == (reference.eosTokenID.map { [$0] } ?? []))
    }
}
