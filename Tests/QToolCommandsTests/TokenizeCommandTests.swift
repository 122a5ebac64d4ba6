import Foundation
import TensorCore
import Testing
import TestSupport

/// `qtool tokenize` run as a user runs it, against HF tokenizers' goldens.
struct TokenizeCommandTests {
    /// The golden case `name` of tokenizer `tokenizer` in fixtures/tokenizers/goldens.json.
    static func golden(_ tokenizer: String, _ name: String) throws -> JSONValue {
        let root = try JSONParser.parse(String(decoding: Fixtures.bytes(Fixtures.path("tokenizers/goldens.json")), as: UTF8.self))
        return try #require(root["tokenizers"]?[tokenizer]?["cases"]?.arrayValues?.first { $0["name"]?.stringValue == name })
    }

    @Test(arguments: [("llama3-bytelevel", "emoji", false), ("llama2-metaspace", "paragraph", true), ("qwen2-bytelevel", "crlf", false)])
    func jsonGivesTheReferenceIdsAndTokens(_ tokenizer: String, _ name: String, _ fromFile: Bool) throws {
        let golden = try Self.golden(tokenizer, name)
        let text = try #require(golden["text"]?.stringValue)
        var arguments = ["tokenize", Fixtures.path("tokenizers/" + tokenizer), "--json"]
        if fromFile {
            let file = Fixtures.temporaryFolder() + "/text.txt"
            try Data(text.utf8).write(to: URL(fileURLWithPath: file))
            arguments += ["--file", file]
        } else {
            arguments += ["--text", text]
        }
        for special in [true, false] {
            let result = try QToolBinary.run(arguments + (special ? [] : ["--no-special-tokens"]))
            #expect(result.status == 0, "\(result.stderr)")
            let report = try JSONParser.parse(result.stdout)
            #expect(report["ids"] == golden[special ? "ids" : "ids_without_special"])
            if special {
                let tokens = try #require(report["tokens"]?.arrayValues).map { Array($0.stringValue!.utf8) }
                #expect(tokens == golden["tokens"]?.arrayValues?.map { Array($0.stringValue!.utf8) })
            }
        }
    }

    @Test func theTableListsEachIdAndToken() throws {
        let result = try QToolBinary.run(["tokenize", Fixtures.path("tiny-llama/tokenizer.json"), "--text", "Hello\tworld"])
        #expect(result.status == 0, "\(result.stderr)")
        let lines = result.stdout.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
        #expect(lines.first == "\(lines.count - 1) tokens")
        #expect(lines[1] == "0  <|begin_of_text|>")
        // The tab, as the byte-level vocabulary spells it.
        #expect(lines.contains { $0.hasSuffix("  ĉ") })
    }

    @Test func badInputsExitWithStatus2() throws {
        let folder = Fixtures.temporaryFolder()
        let broken = folder + "/tokenizer.json"
        try Data("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a b\"]}}".utf8).write(
            to: URL(fileURLWithPath: broken))
        let notText = folder + "/bytes.bin"
        try Data([0x61, 0xFF, 0x62]).write(to: URL(fileURLWithPath: notText))
        let cases: [([String], String, String)] = [
            (
                [Fixtures.path("tokenizers/other/wordpiece.json"), "--text", "x"], Fixtures.path("tokenizers/other/wordpiece.json"),
                "model: model type WordPiece is not supported; qtool reads BPE tokenizers only"
            ),
            ([broken, "--text", "x"], broken, "model.merges[0]: token \"b\" is not in the vocabulary"),
            ([folder, "--text", "x"], broken, "model.merges[0]: token \"b\" is not in the vocabulary"),
            ([folder + "/none", "--text", "x"], folder + "/none", "no such file or folder"),
            ([Fixtures.path("tiny-llama"), "--file", notText], notText, "not UTF-8 text"),
            ([Fixtures.path("tiny-llama"), "--file", folder + "/none.txt"], folder + "/none.txt", "cannot open"),
        ]
        for (arguments, file, message) in cases {
            let result = try QToolBinary.run(["tokenize"] + arguments)
            #expect(result.status == 2, "\(arguments): \(result.stderr)")
            #expect(result.stderr.hasPrefix("error: \(file): "), "\(result.stderr)")
            #expect(result.stderr.contains(message), "\(result.stderr)")
            #expect(result.stdout.isEmpty)
        }
    }

    @Test func aTextIsNeededOnce() throws {
        let model = Fixtures.path("tiny-llama")
        for arguments in [["tokenize", model], ["tokenize", model, "--text", "a", "--file", "b"], ["tokenize", "", "--text", "a"]] {
            #expect(try QToolBinary.run(arguments).status == 64, "\(arguments)")
        }
    }
}
