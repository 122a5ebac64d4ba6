import Testing

@testable import TensorCore

struct JSONParserTests {
    @Test func keepsMemberOrderAndNumberText() throws {
        let value = try JSONParser.parse(#" {"b": 1, "a": [1.50, -0, 2e3], "c": {"x": null, "y": true}, "s": "\u00fc\n\ud83e\udd99"} "#)
        #expect(value.objectMembers?.map(\.key) == ["b", "a", "c", "s"])
        #expect(value["a"] == .array([.number("1.50"), .number("-0"), .number("2e3")]))
        #expect(value["b"]?.integerValue == 1)
        #expect(value["a"]?.arrayValues?[2].integerValue == nil, "an exponent is not an integer")
        #expect(value["s"]?.stringValue == "ü\n🦙")
        #expect(value["c"]?["y"] == .bool(true))
    }

    @Test(arguments: [
        ("{\"a\":1,}", "expected a string key"),
        ("[1,]", "unexpected character"),
        ("{\"a\" 1}", "expected ':'"),
        ("01", "leading zero"),
        ("1.", "invalid number"),
        ("NaN", "unexpected character"),
        ("\"abc", "unterminated string"),
        ("\"a\u{01}\"", "control character"),
        ("\"\\x\"", "invalid escape"),
        ("\"\\ud800\"", "unpaired surrogate"),
        ("{} x", "unexpected text after"),
        ("", "unexpected end"),
        ("tru", "invalid literal"),
    ])
    func rejects(_ text: String, _ message: String) {
        #expect {
            _ = try JSONParser.parse(text)
        } throws: { error in
            (error as? JSONParseError)?.message.contains(message) == true
        }
    }

    @Test func reportsDuplicateKeysByName() {
        #expect {
            _ = try JSONParser.parse(#"{"a": 1, "b": {"c": 1, "c": 2}}"#)
        } throws: { error in
            (error as? JSONParseError)?.duplicateKey == "c"
        }
    }

    /// "à" and "a" + U+0300 are equal Swift strings but different keys (vocabularies hold both).
    @Test func tellsKeysApartByTheirBytes() throws {
        let members = try #require(try JSONParser.parse("{\"\u{E0}\": 1, \"a\u{300}\": 2}").objectMembers)
        #expect(members.map { Array($0.key.utf8) } == [[0xC3, 0xA0], [0x61, 0xCC, 0x80]])
        #expect {
            _ = try JSONParser.parse("{\"a\u{300}\": 1, \"a\\u0300\": 2}")
        } throws: { error in
            (error as? JSONParseError)?.message.contains("duplicate key") == true
        }
    }

    @Test func limitsNestingDepth() {
        let deep = String(repeating: "[", count: 1000) + String(repeating: "]", count: 1000)
        #expect(throws: JSONParseError.self) { _ = try JSONParser.parse(deep) }
        let fine = String(repeating: "[", count: 100) + String(repeating: "]", count: 100)
        #expect(throws: Never.self) { _ = try JSONParser.parse(fine) }
    }

    @Test func quotesLikeSerdeAndPython() {
        let text = "a\"\\\n\u{01}\u{7F}ü🦙"
        #expect(JSONStyle.serde.quoted(text) == "\"a\\\"\\\\\\n\\u0001\u{7F}ü🦙\"")
        #expect(JSONStyle.python.quoted(text) == "\"a\\\"\\\\\\n\\u0001\\u007f\\u00fc\\ud83e\\udd99\"")
    }
}
