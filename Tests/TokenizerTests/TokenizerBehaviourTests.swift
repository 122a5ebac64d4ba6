import Dispatch
import Synchronization
import TensorCore
import Testing
import TestSupport
import Tokenizer

/// Properties the goldens do not show one by one: both spellings of a character as different
/// tokens, unknown characters, and encoding from many threads at once.
struct TokenizerBehaviourTests {
    /// A BPE tokenizer.json with `vocab` and `merges` and nothing else.
    static func tokenizer(vocab: [(String, Int)], merges: [(String, String)], model extra: [JSONMember] = []) throws -> Tokenizer {
        let json = JSONValue.object([
            JSONMember(
                key: "model",
                value: .object(
                    [
                        JSONMember(key: "type", value: .string("BPE")),
                        JSONMember(key: "vocab", value: .object(vocab.map { JSONMember(key: $0.0, value: .integer($0.1)) })),
                        JSONMember(key: "merges", value: .array(merges.map { .array([.string($0.0), .string($0.1)]) })),
                    ] + extra))
        ])
        return try Tokenizer(json: Array(json.serialized(.compact).utf8), config: nil, path: "t.json")
    }

    /// "\u{E0}" and "a\u{300}" are one Swift string but two tokens.
    @Test func bothSpellingsAreDifferentTokens() throws {
        let tokenizer = try Self.tokenizer(
            vocab: [("<unk>", 0), ("a", 1), ("\u{300}", 2), ("\u{E0}", 3), ("a\u{300}", 4), ("b", 5), ("ab", 6)],
            merges: [("a", "\u{300}"), ("a", "b")], model: [JSONMember(key: "unk_token", value: .string("<unk>"))])
        #expect(tokenizer.encode("\u{E0}") == [3])
        #expect(tokenizer.encode("a\u{300}") == [4])
        #expect(tokenizer.encode("a\u{300}b\u{E0}ab") == [4, 5, 3, 6])
        #expect(tokenizer.token(3) == [0xC3, 0xA0])
        #expect(tokenizer.token(4) == [0x61, 0xCC, 0x80])
        #expect(tokenizer.id(of: [0x61, 0xCC, 0x80]) == 4)
        #expect(Array(tokenizer.decode([4, 3]).utf8) == [0x61, 0xCC, 0x80, 0x20, 0xC3, 0xA0])
    }

    /// The bundled Llama 2-style vocabulary learned both spellings (its goldens use them).
    @Test func theBundledVocabularyHoldsBothSpellings() throws {
        let tokenizer = try Tokenizer(path: Fixtures.path("tokenizers/llama2-metaspace"))
        let composed = try #require(tokenizer.id(of: Array("\u{E0}".utf8)))
        let decomposed = try #require(tokenizer.id(of: Array("a\u{300}".utf8)))
        #expect(composed != decomposed)
        #expect(tokenizer.encode("\u{E0}", addSpecialTokens: false) != tokenizer.encode("a\u{300}", addSpecialTokens: false))
    }

    /// Characters the vocabulary lacks: the unknown token, fused into one when `fuse_unk`;
    /// dropped when there is no unknown token.
    @Test func unknownCharacters() throws {
        let vocab = [("<unk>", 0), ("a", 1), ("b", 2)]
        let unknown = JSONMember(key: "unk_token", value: .string("<unk>"))
        #expect(try Self.tokenizer(vocab: vocab, merges: [], model: [unknown]).encode("axyb") == [1, 0, 0, 2])
        let fused = try Self.tokenizer(vocab: vocab, merges: [], model: [unknown, JSONMember(key: "fuse_unk", value: .bool(true))])
        #expect(fused.encode("axyb") == [1, 0, 2])
        let dropping = try Self.tokenizer(vocab: vocab, merges: [])
        #expect(dropping.encode("axyb") == [1, 2])
        // A word of nothing but unknown characters has no ids, the second time too (from the cache).
        #expect(dropping.encode("xy") == [] && dropping.encode("xy") == [])
    }

    /// A token made of spaces, inside the spaces the token before took in with rstrip: no crash
    /// (tokenizers panics on it), both tokens found.
    @Test func addedTokensInsideStrippedWhitespace() throws {
        let json = JSONValue.object([
            JSONMember(
                key: "added_tokens",
                value: .array([
                    .object([
                        JSONMember(key: "id", value: .integer(2)), JSONMember(key: "content", value: .string("<a>")),
                        JSONMember(key: "rstrip", value: .bool(true)), JSONMember(key: "normalized", value: .bool(false)),
                    ]),
                    .object([
                        JSONMember(key: "id", value: .integer(3)), JSONMember(key: "content", value: .string("  ")),
                        JSONMember(key: "lstrip", value: .bool(true)), JSONMember(key: "normalized", value: .bool(false)),
                    ]),
                ])),
            JSONMember(
                key: "model",
                value: .object([
                    JSONMember(key: "type", value: .string("BPE")),
                    JSONMember(
                        key: "vocab", value: .object([JSONMember(key: "x", value: .integer(0)), JSONMember(key: " ", value: .integer(1))])),
                    JSONMember(key: "merges", value: .array([])),
                ])),
        ])
        let tokenizer = try Tokenizer(json: Array(json.serialized(.compact).utf8), config: nil, path: "t.json")
        #expect(tokenizer.encode("<a>    x") == [2, 3, 3, 0])
    }

    /// One tokenizer shared by many threads gives each the same ids as alone.
    @Test func encodesFromManyThreadsAtOnce() throws {
        let tokenizer = try Tokenizer(path: Fixtures.path("tokenizers/llama3-bytelevel"))
        let text = String(decoding: Fixtures.bytes(Fixtures.path("text/corpus.txt")).prefix(20_000), as: UTF8.self)
        let expected = tokenizer.encode(text)
        let results = Mutex<[[Int]]>([])
        DispatchQueue.concurrentPerform(iterations: 8) { _ in
            let ids = tokenizer.encode(text)
            results.withLock { $0.append(ids) }
        }
        #expect(results.withLock { $0 }.allSatisfy { $0 == expected })
    }

    @Test func idsThatNameNoTokenAreLeftOutOfDecoding() throws {
        let tokenizer = try Tokenizer(path: Fixtures.path("tiny-llama"))
        let ids = tokenizer.encode("Hello world", addSpecialTokens: false)
        #expect(tokenizer.decode([-1] + ids + [1 << 40, tokenizer.vocabularySize]) == "Hello world")
        #expect(tokenizer.token(-5) == nil)
        #expect(tokenizer.isSpecial(0) && !tokenizer.isSpecial(ids[0]))
    }
}
