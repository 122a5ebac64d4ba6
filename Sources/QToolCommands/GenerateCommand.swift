import ArgumentParser
import Foundation
import LanguageModel
import TensorCore
import Tokenizer

/// `qtool generate`: a continuation of a prompt, streamed as it is produced.
struct GenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Continue a prompt with a model (greedy or sampled), streaming the text.",
        discussion: """
            The prompt is tokenized with the tokenizer's special tokens (as transformers'
            tokenizer(prompt) does) and continued one token at a time with a key/value cache, until
            --max-tokens, an end-of-sequence token (config.json's and the tokenizer's) or the
            model's max_position_embeddings. --temperature 0 (the default) picks the most likely
            token, as transformers' generate(do_sample=False); above 0 it samples, from the
            smallest set of tokens whose probability reaches --top-p, with --seed.

            Examples:
              qtool generate fixtures/models/llama-gqa --prompt "The function returns"
              qtool generate model.nf4 --prompt "Once" --temperature 0.8 --top-p 0.95 --seed 7
            """)

    @Argument(help: "A model folder or a .nf4 file.")
    var model: String

    @Option(help: "The text to continue.")
    var prompt: String

    @Option(help: "New tokens at most.")
    var maxTokens = 128

    @Option(help: "0 picks the most likely token; above 0 samples.")
    var temperature: Float = 0

    @Option(help: "Sample only from the most likely tokens whose probability reaches this.")
    var topP: Float = 1

    @Option(help: "Seed of the sampler.")
    var seed: UInt64 = 0

    @OptionGroup var modelOptions: ModelOptions

    @OptionGroup var report: ReportOptions

    func validate() throws {
        try PathArguments.validate([("MODEL", model)])
        guard maxTokens >= 1 else { throw ValidationError("--max-tokens must be at least 1, not \(maxTokens)") }
        guard temperature >= 0, temperature.isFinite else { throw ValidationError("--temperature must be 0 or more") }
        guard topP > 0, topP <= 1 else { throw ValidationError("--top-p must be above 0 and at most 1") }
    }

    func run() throws {
        let loaded = try modelOptions.load(model)
        let tokenizer = try loaded.tokenizer()
        let lm = loaded.model
        let promptIDs = tokenizer.encode(prompt)
        guard !promptIDs.isEmpty else { throw ValidationError("the prompt gives no tokens") }
        if let bad = promptIDs.first(where: { $0 >= lm.config.vocabSize }) {
            throw CommandError(path: model, "the tokenizer gives id \(bad), beyond the model's vocabulary (\(lm.config.vocabSize))")
        }
        let room = lm.config.maxPositions - promptIDs.count
        guard room > 0 else {
            throw CommandError(
                path: model, "the prompt's \(promptIDs.count) tokens fill max_position_embeddings (\(lm.config.maxPositions))")
        }
        let stop = Set(lm.config.eosTokenIDs + tokenizer.eosTokenIDs)
        let started = Date()
        var shown = ""
        var produced: [Int] = []
        let streaming = !report.json
        let output = lm.generate(
            prompt: promptIDs, maxTokens: min(maxTokens, room), stop: stop,
            sampler: Sampler(temperature: temperature, topP: topP, seed: seed)
        ) { token in
            produced.append(token)
            guard streaming, !stop.contains(token), !Self.isByteToken(token, tokenizer) else { return true }
            // The text so far, printed from where the last print ended. A run of byte-fallback
            // tokens is decoded as a whole (invalid UTF-8 becomes U+FFFD for every byte of it), so
            // it waits for the token after it; so does a character still incomplete.
            let text = tokenizer.decode(produced, skipSpecialTokens: true)
            if !text.hasSuffix("\u{FFFD}"), text.hasPrefix(shown) {
                Self.write(String(text.dropFirst(shown.count)))
                shown = text
            }
            return true
        }
        let seconds = Date().timeIntervalSince(started)
        let finalText = tokenizer.decode(output, skipSpecialTokens: true)
        let stoppedAtEOS = output.last.map(stop.contains) ?? false
        if report.json {
            Report.printJSON(
                .object([
                    JSONMember(key: "prompt", value: .string(prompt)),
                    JSONMember(key: "prompt_ids", value: .array(promptIDs.map(JSONValue.integer))),
                    JSONMember(key: "ids", value: .array(output.map(JSONValue.integer))),
                    JSONMember(key: "text", value: .string(finalText)),
                    JSONMember(key: "stopped_at_eos", value: .bool(stoppedAtEOS)),
                    JSONMember(key: "tokens_per_second", value: .double(Double(output.count) / max(seconds, 1e-9))),
                ]))
            return
        }
        if finalText.hasPrefix(shown) { Self.write(String(finalText.dropFirst(shown.count))) }
        Self.write("\n")
        if !report.quiet {
            Report.note(
                String(
                    format: "%d tokens in %.2f s (%.1f tokens/s)%@", output.count, seconds, Double(output.count) / max(seconds, 1e-9),
                    stoppedAtEOS ? ", stopped at end of sequence" : ""))
        }
    }

    /// A byte-fallback token, `<0xNN>`.
    static func isByteToken(_ id: Int, _ tokenizer: Tokenizer) -> Bool {
        guard let bytes = tokenizer.token(id), bytes.count == 6 else { return false }
        return bytes.starts(with: Array("<0x".utf8)) && bytes[5] == UInt8(ascii: ">")
            && bytes[3...4].allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x46) }
    }

    /// Standard output, flushed at once (the text streams).
    static func write(_ text: String) {
        FileHandle.standardOutput.write(Data(text.utf8))
    }
}
