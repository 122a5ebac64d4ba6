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

    @Option(help: "Cast floating-point tensors to f32, f16 or bf16 (integer tensors are kept).")
    var dtype: String?

    @Option(help: "Largest shard of a folder output, e.g. 5GB, 500MB, 2GiB or bytes.")
    var maxShardSize: String?

    @Flag(help: "No progress bar.")
    var quiet = false

    @Flag(help: "Print a JSON summary.")
    var json = false

    func validate() throws {
        if let dtype {
            guard let parsed = DType(userName: dtype), [.f32, .f16, .bf16].contains(parsed) else {
                throw ValidationError("--dtype must be f32, f16 or bf16, not '\(dtype)'")
            }
        }
        if let maxShardSize {
            guard ShardedWriter.parseSize(maxShardSize) != nil else {
                throw ValidationError("--max-shard-size must be a size such as 5GB, 500MB or 2GiB, not '\(maxShardSize)'")
            }
            guard !output.hasSuffix(".safetensors") else {
                throw ValidationError("--max-shard-size needs a folder OUTPUT, not a .safetensors file")
            }
        }
    }

    func run() throws {
        let started = Date()
        let checkpoint = try Checkpoint.open(input)
        let target = dtype.flatMap { DType(userName: $0) }
        let items = checkpoint.tensors.entries.map { entry -> SafeTensorsWriter.Item in
            guard let target, entry.tensor.dtype.isFloatingPoint, let cast = CastTensor(entry.tensor, to: target) else {
                return SafeTensorsWriter.Item(name: entry.name, payload: entry.tensor)
            }
            return SafeTensorsWriter.Item(name: entry.name, payload: cast)
        }
        let totalBytes = items.reduce(0) { $0 + $1.payload.byteCount }
        let progress = ProgressBar(label: "convert", total: totalBytes, quiet: quiet)
        let tracked = items.map { SafeTensorsWriter.Item(name: $0.name, payload: ProgressPayload(base: $0.payload, progress: progress)) }

        let written: [String]
        if output.hasSuffix(".safetensors") {
            guard !FilePaths.isDirectory(output) else { throw CommandError(path: output, "is a folder, not a .safetensors file") }
            try SafeTensorsWriter.write(tracked, metadata: checkpoint.tensors.metadata, toFile: output)
            written = [output]
        } else {
            written = try writeFolder(tracked, checkpoint: checkpoint, target: target)
        }
        progress.finish()
        let seconds = Date().timeIntervalSince(started)
        if json {
            let report: JSONValue = .object([
                JSONMember(key: "input", value: .string(input)),
                JSONMember(key: "output", value: .string(output)),
                JSONMember(key: "files", value: .array(written.map(JSONValue.string))),
                JSONMember(key: "tensors", value: .integer(items.count)),
                JSONMember(key: "bytes", value: .integer(totalBytes)),
                JSONMember(key: "seconds", value: .double(seconds)),
            ])
            print(report.serialized())
        } else if !quiet {
            StandardError.write("wrote \(output): \(items.count) tensors, \(ProgressBar.formatBytes(Double(totalBytes))) in \(String(format: "%.2f", seconds)) s\n")
        }
    }

    private func writeFolder(_ items: [SafeTensorsWriter.Item], checkpoint: Checkpoint, target: DType?) throws -> [String] {
        let shards: [[SafeTensorsWriter.Item]]
        if let maxShardSize, let limit = ShardedWriter.parseSize(maxShardSize) {
            shards = ShardedWriter.planShards(byteCounts: items.map(\.payload.byteCount), maxShardSize: limit).map { $0.map { items[$0] } }
        } else if let groups = checkpoint.shardGroups {
            let byName = Dictionary(uniqueKeysWithValues: items.map { ($0.name, $0) })
            shards = groups.map { $0.tensors.map { byName[$0]! } }
        } else {
            shards = [items]
        }
        let transaction = try FolderOutputTransaction(folder: output)
        do {
            var names = try ShardedWriter.write(shards: shards, metadata: checkpoint.tensors.metadata, into: transaction)
            if let folder = checkpoint.modelFolder, FilePaths.canonical(folder) != FilePaths.canonical(output) {
                for name in try Checkpoint.companionFiles(of: folder) {
                    if name == "config.json", let target {
                        let text = try String(contentsOfFile: folder + "/" + name, encoding: .utf8)
                        try transaction.file(named: name).write(Array(ConfigDType.replacing(in: text, with: target).utf8))
                    } else {
                        try transaction.copyFile(from: folder + "/" + name, named: name)
                    }
                    names.append(name)
                }
            }
            // Weight files of an earlier save that this one does not replace would confuse loaders.
            let stale = try FilePaths.contents(of: output).filter(ShardedWriter.isModelWeightFile)
            try transaction.commit(removingStale: stale)
            return names
        } catch {
            transaction.abort()
            throw error
        }
    }
}

/// Keeps the dtype that config.json records in step with a cast.
enum ConfigDType {
    /// Replaces the value of every `"torch_dtype"` / `"dtype"` key naming a float type.
    static func replacing(in text: String, with dtype: DType) -> String {
        let pattern = #"("(?:torch_)?dtype"\s*:\s*)"(?:float32|float16|bfloat16|float64)""#
        guard let regex = try? NSRegularExpression(pattern: pattern) else { return text }
        let range = NSRange(text.startIndex..., in: text)
        return regex.stringByReplacingMatches(in: text, range: range, withTemplate: "$1\"\(dtype.torchName)\"")
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
