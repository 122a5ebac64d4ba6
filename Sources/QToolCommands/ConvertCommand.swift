import ArgumentParser
import Foundation
import SafetensorsFormat
import TensorCore

struct ConvertCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "convert",
        abstract: "Convert a checkpoint: rewrite, cast float tensors, shard.",
        discussion: """
            Lossless by default. OUTPUT ending in .safetensors is one file; anything else is a
            model folder (model.safetensors, or shards and an index with --max-shard-size; a
            sharded input keeps its sharding), and config.json and tokenizer files of an input
            folder are copied along. Output is written atomically: on any error nothing is left.

            Examples:
              qtool convert model.safetensors model-bf16.safetensors --dtype bf16
              qtool convert fixtures/tiny-llama out/tiny --max-shard-size 1MB
            """)

    @Argument(help: "A checkpoint file or model folder.")
    var input: String

    @Argument(help: "A .safetensors file, or a model folder.")
    var output: String

    @OptionGroup var floats: FloatOutputOptions
    @OptionGroup var report: ReportOptions

    func validate() throws { try floats.validate(output: output) }

    func run() throws {
        let started = Date()
        let checkpoint = try Checkpoint.open(input)
        let target = floats.targetDType
        let totalBytes = checkpoint.entries.reduce(0) { $0 + $1.storedBytes }
        let progress = ProgressBar(label: "convert", total: totalBytes, quiet: report.quiet)
        var writer = CheckpointWriter(
            target: OutputTarget(output), metadata: checkpoint.metadata, companions: checkpoint.companions, progress: progress)
        writer.maxShardSize = floats.shardLimit
        writer.shardGroups = checkpoint.shardGroups
        writer.castDType = target
        let written = try writer.write(names: checkpoint.entries.map(\.name)) { index in
            switch try checkpoint.entries[index].load() {
            case .quantized(let q):
                progress.advance(by: q.storedBytes)
                return .quantized(q)
            case .plain(let tensor):
                guard let target, tensor.dtype.isFloatingPoint, let cast = CastTensor(tensor, to: target) else { return .plain(tensor) }
                return .plain(cast)
            }
        }
        progress.finish()
        let seconds = Date().timeIntervalSince(started)
        if report.json {
            let report: JSONValue = .object([
                JSONMember(key: "input", value: .string(input)),
                JSONMember(key: "output", value: .string(output)),
                JSONMember(key: "files", value: .array(written.map(JSONValue.string))),
                JSONMember(key: "tensors", value: .integer(checkpoint.entries.count)),
                JSONMember(key: "bytes", value: .integer(totalBytes)),
                JSONMember(key: "seconds", value: .double(seconds)),
            ])
            print(report.serialized())
        } else if !report.quiet {
            StandardError.write("wrote \(output): \(checkpoint.entries.count) tensors, \(ProgressBar.formatBytes(Double(totalBytes))) in \(String(format: "%.2f", seconds)) s\n")
        }
    }
}

/// Passes a payload through, reporting the bytes streamed to a progress bar.
struct ProgressPayload: TensorPayload {
    let base: any TensorPayload
    let progress: ProgressBar

    var dtype: DType { base.dtype }
    var shape: Shape { base.shape }
    var byteCount: Int { base.byteCount }

    func stream(chunkBytes: Int, into sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        try base.stream(chunkBytes: chunkBytes) { piece in
            try sink(piece)
            progress.advance(by: piece.count)
        }
    }
}
