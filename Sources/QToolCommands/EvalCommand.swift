import ArgumentParser
import Foundation
import LanguageModel
import TensorCore
import Tokenizer

/// `qtool eval`: the loss and perplexity of a model on a dataset, as transformers computes them,
/// or on a text file by llama.cpp's perplexity method.
struct EvalCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "eval",
        abstract: "Loss and perplexity of a model (float, 4-bit, with adapters) on a dataset or a text.",
        discussion: """
            MODEL is a model folder (safetensors or a bitsandbytes 4-bit save) or a .nf4 file that
            carries config.json and tokenizer.json. Llama-family models (llama, mistral, qwen2)
            run in float32 on the CPU; 4-bit weights are dequantized a tile at a time.

            --data FILE.jsonl: each line {"text": ...} is tokenized alone (with the tokenizer's
            special tokens) and cut to --max-seq-len tokens; loss = total next-token negative
            log-likelihood / predicted tokens, perplexity = exp(loss) — what transformers gives.

            --text FILE.txt --ctx N: llama.cpp's llama-perplexity method: the whole file tokenized,
            chunks of N tokens each starting with BOS, the second half of each chunk scored.

            Examples:
              qtool eval fixtures/models/llama-gqa --data fixtures/models/eval.jsonl
              qtool eval model.nf4 --text wiki.test.raw --ctx 512 --json
              qtool eval fixtures/models/llama-gqa --data data.jsonl --adapter out/lora
            """)

    @Argument(help: "A model folder or a .nf4 file.")
    var model: String

    @Option(help: "A JSON Lines file, one {\"text\": ...} per line.")
    var data: String?

    @Option(help: "A plain text file, scored by llama.cpp's perplexity method (with --ctx).")
    var text: String?

    @Option(help: "Chunk length in tokens for --text.")
    var ctx: Int?

    @Option(help: "Tokens kept of each --data line (default: the model's max_position_embeddings).")
    var maxSeqLen: Int?

    @Option(help: "Sequences run together.")
    var batchSize = 4

    @OptionGroup var modelOptions: ModelOptions

    @OptionGroup var report: ReportOptions

    func validate() throws {
        try PathArguments.validate([("MODEL", model)])
        guard (data == nil) != (text == nil) else { throw ValidationError("give either --data FILE.jsonl or --text FILE.txt") }
        if text != nil {
            guard let ctx else { throw ValidationError("--text needs --ctx N (the chunk length in tokens)") }
            guard ctx >= 2 else { throw ValidationError("--ctx must be at least 2, not \(ctx)") }
        } else if ctx != nil {
            throw ValidationError("--ctx applies to --text")
        }
        if let maxSeqLen, maxSeqLen < 2 { throw ValidationError("--max-seq-len must be at least 2, not \(maxSeqLen)") }
        guard batchSize >= 1 else { throw ValidationError("--batch-size must be at least 1, not \(batchSize)") }
    }

    func run() throws {
        let loaded = try modelOptions.load(model)
        let tokenizer = try loaded.tokenizer()
        let lm = loaded.model
        let started = Date()
        if let data {
            let sequences = try Self.sequences(
                data, tokenizer: tokenizer, limit: maxSeqLen ?? lm.config.maxPositions, vocabulary: lm.config.vocabSize)
            let predicted = sequences.reduce(0) { $0 + max(0, $1.count - 1) }
            guard predicted > 0 else { throw CommandError(path: data, "no line has two tokens or more: nothing to predict") }
            let progress = ProgressBar(label: "eval", total: sequences.reduce(0) { $0 + $1.count }, unit: .tokens, quiet: report.quiet)
            var sum = 0.0
            var tokens = 0
            var start = 0
            while start < sequences.count {
                let batch = Array(sequences[start..<min(sequences.count, start + batchSize)])
                let result = lm.negativeLogLikelihood(batch)
                sum += result.sum
                tokens += result.tokens
                progress.advance(by: batch.reduce(0) { $0 + $1.count })
                start += batch.count
            }
            progress.finish()
            let seconds = Date().timeIntervalSince(started)
            let processed = sequences.reduce(0) { $0 + $1.count }
            printResult(
                loss: sum / Double(tokens), tokens: tokens,
                extra: [JSONMember(key: "sequences", value: .integer(sequences.count))],
                summary: "\(sequences.count) sequences", processed: processed, seconds: seconds)
        } else if let text, let ctx {
            let tokens = try Self.textTokens(text, tokenizer: tokenizer, vocabulary: lm.config.vocabSize, ctx: ctx)
            let chunks = tokens.count / ctx
            let bos = Self.chunkBOS(tokenizer)
            let progress = ProgressBar(label: "eval", total: chunks * ctx, unit: .tokens, quiet: report.quiet)
            let result = lm.chunkedNegativeLogLikelihood(tokens, context: ctx, bos: bos, batch: batchSize) { progress.advance(by: $0) }
            progress.finish()
            let seconds = Date().timeIntervalSince(started)
            printResult(
                loss: result.sum / Double(result.scored), tokens: result.scored,
                extra: [JSONMember(key: "chunks", value: .integer(result.chunks)), JSONMember(key: "ctx", value: .integer(ctx))],
                summary: "\(result.chunks) chunks of \(ctx)", processed: chunks * ctx, seconds: seconds)
        }
    }

    private func printResult(loss: Double, tokens: Int, extra: [JSONMember], summary: String, processed: Int, seconds: Double) {
        let rate = Double(processed) / max(seconds, 1e-9)
        if report.json {
            Report.printJSON(
                .object(
                    [
                        JSONMember(key: "loss", value: .double(loss)),
                        JSONMember(key: "perplexity", value: .double(Foundation.exp(loss))),
                        JSONMember(key: "tokens", value: .integer(tokens)),
                    ] + extra + [JSONMember(key: "tokens_per_second", value: .double(rate))]))
        } else {
            print(String(format: "loss %.6f, perplexity %.4f over %d predicted tokens (%@)", loss, Foundation.exp(loss), tokens, summary))
            if !report.quiet { Report.note(String(format: "%.0f tokens/s", rate)) }
        }
    }

    /// The token ids of each `{"text"}` line (with the tokenizer's special tokens), cut to `limit`.
    static func sequences(_ path: String, tokenizer: Tokenizer, limit: Int, vocabulary: Int) throws -> [[Int]] {
        try readJSONLines(path).map { try checked(Array(tokenizer.encode($0).prefix(limit)), path, vocabulary: vocabulary) }
    }

    /// A text file's token ids, at least one chunk of `ctx`.
    static func textTokens(_ path: String, tokenizer: Tokenizer, vocabulary: Int, ctx: Int) throws -> [Int] {
        let tokens = try checked(tokenizer.encode(try TextInput.string(path)), path, vocabulary: vocabulary)
        guard tokens.count >= ctx else { throw CommandError(path: path, "holds \(tokens.count) tokens, fewer than one chunk of \(ctx)") }
        return tokens
    }

    /// llama.cpp puts BOS first in each chunk when its tokenizer adds one.
    static func chunkBOS(_ tokenizer: Tokenizer) -> Int? {
        tokenizer.bosTokenID.flatMap { id in tokenizer.encode("").first == id ? id : nil }
    }

    static func checked(_ ids: [Int], _ path: String, vocabulary: Int) throws -> [Int] {
        if let bad = ids.first(where: { $0 >= vocabulary }) {
            throw CommandError(path: path, "token id \(bad) is beyond the model's vocabulary (\(vocabulary))")
        }
        return ids
    }

    /// The `text` of each line of a JSON Lines file (blank lines skipped). A line that is not a
    /// JSON object with a string `text` is an error naming its number.
    static func readJSONLines(_ path: String) throws -> [String] {
        try JSONLines.read(path).map { number, value in
            guard let text = value["text"]?.stringValue else {
                throw CommandError(path: path, "line \(number): not an object with a string \"text\"")
            }
            return text
        }
    }
}

/// JSON Lines files.
enum JSONLines {
    /// Each non-blank line parsed, with its number (from 1). A line that is not JSON is an error
    /// naming it; a file without lines is an error.
    static func read(_ path: String) throws -> [(line: Int, value: JSONValue)] {
        let bytes = try TextInput.bytes(path)
        var values: [(line: Int, value: JSONValue)] = []
        var lineNumber = 0
        for line in bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            lineNumber += 1
            guard !line.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }) else { continue }
            do {
                values.append((lineNumber, try Array(line).withUnsafeBytes { try JSONParser.parse($0) }))
            } catch {
                throw CommandError(path: path, "line \(lineNumber): not JSON (\(error))")
            }
        }
        guard !values.isEmpty else { throw CommandError(path: path, "holds no lines") }
        return values
    }
}
