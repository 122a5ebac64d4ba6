import ArgumentParser
import Foundation
import GGUFFormat
import Quantization
import TensorCore

struct DequantizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dequantize",
        abstract: "Restore a 4-bit checkpoint (.nf4, bitsandbytes folder or GGUF) to floats in safetensors.",
        discussion: """
            Every tensor of the source is written: quantized ones dequantized as bitsandbytes'
            dequantize_4bit does, to their original dtype or to --dtype; the others as they are
            (cast too when --dtype is given). OUTPUT ending in .safetensors is one file, anything
            else a model folder (config.json without quantization_config, tokenizer files).
            A GGUF file's tensors keep their GGUF names and come out as gguf-py's dequantize
            gives them (float32, or --dtype).

            Examples:
              qtool dequantize tiny.nf4 out/tiny-restored
              qtool dequantize out/tiny-bnb tiny-f32.safetensors --dtype f32
            """)

    @Argument(help: "A .nf4 file, a bitsandbytes model folder or a GGUF file.")
    var input: String

    @Argument(help: "A .safetensors file or a model folder.")
    var output: String

    @OptionGroup var inputOptions: InputOptions

    @OptionGroup var floats: FloatOutputOptions

    @OptionGroup var threading: ThreadOptions

    @OptionGroup var report: ReportOptions

    func validate() throws {
        try PathArguments.validate([("INPUT", input), ("OUTPUT", output)])
        guard !output.hasSuffix(".nf4") && !output.hasSuffix(".gguf") else {
            throw ValidationError("OUTPUT must be a .safetensors file or a folder")
        }
        try floats.validate(output: output)
    }

    func run() throws {
        threading.apply()
        let started = Date()
        let checkpoint = try Checkpoint.open(input, allowExternal: inputOptions.allowExternal)
        guard checkpoint.isQuantized || checkpoint.format == .gguf else { throw CommandError(path: input, "holds no quantized tensors") }
        let target = floats.targetDType
        let total = checkpoint.entries.reduce(0) { $0 + $1.storedBytes }
        let progress = ProgressBar(label: "dequantize", total: total, quiet: report.quiet)
        var writer = CheckpointWriter(
            target: OutputTarget(output), metadata: checkpoint.metadata, companions: checkpoint.companions, progress: progress)
        writer.maxShardSize = floats.shardLimit
        writer.castDType = target
        var outputBytes = 0
        let written = try writer.write(names: checkpoint.entries.map(\.name)) { index in
            let entry = checkpoint.entries[index]
            // GGUF block types: dequantized as the writer streams them (never the whole model at once).
            if let file = checkpoint.ggufFile, file.tensors[index].type.isQuantized || target != nil,
                let payload = GGUFDequantizedPayload(file, file.tensors[index], dtype: target ?? .f32)
            {
                outputBytes += payload.byteCount
                return .plain(payload)
            }
            switch try entry.load() {
            case .quantized(let q):
                let payload = q.dequantizedPayload(to: target ?? (q.originalDType == .f64 ? .f32 : q.originalDType))
                outputBytes += payload.byteCount
                return .plain(payload)
            case .plain(let tensor):
                outputBytes += tensor.byteCount
                guard let target, tensor.dtype.isFloatingPoint, let cast = CastTensor(tensor, to: target) else { return .plain(tensor) }
                return .plain(cast)
            }
        }
        progress.finish()
        let seconds = Date().timeIntervalSince(started)
        Report.written(
            report, input: input, output: output, files: written, tensors: checkpoint.entries.count, bytes: outputBytes, seconds: seconds)
    }
}
