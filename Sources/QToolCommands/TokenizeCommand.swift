import ArgumentParser
import TensorCore
import Tokenizer

/// `qtool tokenize`: a text's token ids and tokens, as Hugging Face tokenizers gives them.
struct TokenizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tokenize",
        abstract: "Encode a text with a model's tokenizer.json, as Hugging Face tokenizers does.",
        discussion: """
            MODEL is a model folder holding tokenizer.json (and tokenizer_config.json, for the bos
            and eos tokens) or a tokenizer.json file. BPE tokenizers only: byte-level ones (GPT-2,
            Llama 3, Qwen2) and byte-fallback ones (Llama 2, Mistral, TinyLlama).

            Tokens are printed as the vocabulary spells them (byte-level vocabularies write a
            space as Ġ, Llama 2 as ▁).

            Examples:
              qtool tokenize fixtures/tiny-llama --text "Hello world"
              qtool tokenize model/ --file prompt.txt --json --no-special-tokens
            """)

    @Argument(help: "A model folder with tokenizer.json, or a tokenizer.json file.")
    var model: String

    @Option(help: "The text to encode.")
    var text: String?

    @Option(help: "A UTF-8 file whose whole content is encoded.")
    var file: String?

    @Flag(help: "Leave out the special tokens the tokenizer adds (add_special_tokens=False).")
    var noSpecialTokens = false

    @Flag(help: "Print {\"ids\": [...], \"tokens\": [...]} on standard output.")
    var json = false

    /// For the benchmark: the number of tokens and the seconds the encoding took, so that the
    /// encoding is what is timed.
    @Flag(help: .hidden)
    var count = false

    func validate() throws {
        try PathArguments.validate([("MODEL", model)] + (file.map { [("--file", $0)] } ?? []))
        guard (text == nil) != (file == nil) else { throw ValidationError("give the text with either --text or --file") }
    }

    func run() throws {
        let tokenizer = try Tokenizer(path: model)
        let input = try text ?? TextInput.string(file!)
        let started = ContinuousClock.now
        let ids = tokenizer.encode(input, addSpecialTokens: !noSpecialTokens)
        if count {
            let elapsed = ContinuousClock.now - started
            print(ids.count, Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18)
            return
        }
        // Each distinct token spelled once.
        var spelled: [Int: String] = [:]
        let tokens = ids.map { id in
            if let known = spelled[id] { return known }
            let text = String(decoding: tokenizer.token(id) ?? [], as: UTF8.self)
            spelled[id] = text
            return text
        }
        if json {
            Report.printJSON(
                .object([
                    JSONMember(key: "ids", value: .array(ids.map(JSONValue.integer))),
                    JSONMember(key: "tokens", value: .array(tokens.map(JSONValue.string))),
                ]))
            return
        }
        // One line a token: its id and its spelling, escaped for the terminal.
        var out = "\(ids.count) token\(ids.count == 1 ? "" : "s")\n"
        let width = String(ids.max() ?? 0).count
        for (id, token) in zip(ids, tokens) {
            out += String(id).leftPadded(to: width) + "  " + TerminalText.escaped(token) + "\n"
        }
        print(out, terminator: "")
    }
}
