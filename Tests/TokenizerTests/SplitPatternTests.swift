import TensorCore
import Testing
import TestSupport

@testable import Tokenizer

/// The hand-written scanners against Oniguruma as tokenizers runs it (its Split pre-tokenizer):
/// fixtures/tokenizers/split-goldens.json holds how each pattern cuts the test texts and 600
/// random strings of awkward characters.
struct SplitPatternTests {
    struct PatternGolden: Sendable, CustomTestStringConvertible {
        var name: String
        var pattern: String
        var splits: [(text: String, pieces: [String])]
        var testDescription: String { name }
    }

    static let goldens: [PatternGolden] = {
        let root = try! JSONParser.parse(String(decoding: Fixtures.bytes(Fixtures.path("tokenizers/split-goldens.json")), as: UTF8.self))
        return root.objectMembers!.map { member in
            PatternGolden(
                name: member.key, pattern: member.value["pattern"]!.stringValue!,
                splits: member.value["splits"]!.arrayValues!.map { item in
                    let pair = item.arrayValues!
                    return (pair[0].stringValue!, pair[1].arrayValues!.map { $0.stringValue! })
                })
        }
    }()

    static func pieces(_ pattern: SplitPattern, _ text: String) -> [[UInt8]] {
        let bytes = Array(text.utf8)
        var out: [[UInt8]] = []
        bytes.withUnsafeBufferPointer { buffer in pattern.split(buffer) { out.append(Array(buffer[$0])) } }
        return out
    }

    @Test(arguments: goldens)
    func cutsTextAsOniguruma(_ golden: PatternGolden) throws {
        let pattern = try #require(SplitPattern.recognize(golden.pattern))
        #expect(golden.splits.count > 600)
        for (text, pieces) in golden.splits {
            #expect(Self.pieces(pattern, text) == pieces.map { Array($0.utf8) }, "\(golden.name): \(Array(text.unicodeScalars))")
        }
    }

    /// The shortcuts (ASCII by ranges, White_Space by its list) agree with Swift's Unicode
    /// properties on every scalar.
    @Test func classShortcutsAgreeWithTheUnicodeProperties() {
        for value in UInt32(0)...0x10FFFF {
            guard let scalar = Unicode.Scalar(value) else { continue }
            if ScalarClass.isWhitespace(value) != scalar.properties.isWhitespace {
                Issue.record("White_Space of U+\(String(value, radix: 16))")
            }
        }
        for value in UInt32(0)..<0x80 {
            let properties = Unicode.Scalar(value)!.properties
            let expected: UInt8 =
                (properties.isAlphabetic ? ScalarClass.letter : 0) | (properties.numericType == .decimal ? ScalarClass.number : 0)
                | (properties.isWhitespace ? ScalarClass.whitespace : 0)
            #expect(ScalarClass.of(value) == expected, "U+\(String(value, radix: 16))")
        }
    }

    @Test func recognisesTheFourPatternsOnly() {
        #expect(SplitPattern.recognize(SplitPattern.gpt2Pattern) == .gpt2)
        #expect(Set(SplitPattern.known.map(\.name)) == ["GPT-2", "Llama 3", "Qwen2", "Qwen3.5"])
        #expect(SplitPattern.recognize(#"\s+"#) == nil)
        #expect(SplitPattern.recognize(SplitPattern.gpt2Pattern + "|x") == nil)
    }
}
