import ArgumentParser
import Foundation
import HDF5Format
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

            HDF5 goes both ways (Keras 3 .weights.h5, legacy Keras .h5, any tree of datasets), told
            by its signature; an OUTPUT ending in .h5 or .hdf5 is written as HDF5, and a file that
            came from HDF5 is written back with the same groups and attributes. --layout torch
            transposes Keras Dense kernels [in, out] to torch's [out, in]; --layout keras undoes it.

            GGUF (llama.cpp): an OUTPUT ending in .gguf writes a Llama, Mistral or Qwen2 model
            (HF folder, .nf4 or bitsandbytes folder, with config.json and tokenizer.json) as
            llama.cpp's convert_hf_to_gguf.py does; --dtype f32|f16|bf16|q8_0|q4_0 (default: the
            source's float type, Q8_0 for a 4-bit source). A PEFT adapter folder with --base
            BASE becomes a GGUF LoRA adapter. A .gguf INPUT with a folder OUTPUT becomes a
            transformers model again (config.json and tokenizer.json rebuilt).

            Examples:
              qtool convert model.safetensors model-bf16.safetensors --dtype bf16
              qtool convert fixtures/tiny-llama out/tiny --max-shard-size 1MB
              qtool convert fixtures/hdf5/keras3.weights.h5 keras.safetensors
              qtool convert keras.safetensors restored.weights.h5
              qtool convert fixtures/models/llama-gqa model.gguf --dtype q8_0
              qtool convert adapter/ adapter.gguf --base fixtures/models/llama-gqa
              qtool convert model.gguf restored/
            """)

    @Argument(help: "A checkpoint file or model folder (or a PEFT adapter folder, with --base, for a .gguf OUTPUT).")
    var input: String

    @Argument(help: "A .safetensors file, a model folder, an .h5/.hdf5 file or a .gguf file.")
    var output: String

    @OptionGroup var inputOptions: InputOptions

    @OptionGroup var floats: FloatOutputOptions

    @Option(help: "torch: transpose Keras Dense kernels to [out, in]; keras: back to [in, out].")
    var layout: KernelLayout?

    @Option(help: "The base model of an adapter converted to a GGUF LoRA adapter (ADAPTER_DIR adapter.gguf --base BASE).")
    var base: String?
    @OptionGroup var report: ReportOptions

    func validate() throws {
        try PathArguments.validate([("INPUT", input), ("OUTPUT", output)])
        try floats.validate(output: output)
    }

    /// The metadata key recording which way Keras kernels lie after `--layout`.
    static let kernelLayoutKey = "keras_kernel_layout"

    func run() throws {
        let started = Date()
        if output.hasSuffix(".gguf") && FilePaths.isDirectory(input) && FilePaths.exists(input + "/" + AdapterFolder.configName) {
            return try convertAdapterToGGUF(started: started)
        }
        let checkpoint = try Checkpoint.open(input, allowExternal: inputOptions.allowExternal)
        if output.hasSuffix(".gguf") { return try convertToGGUF(checkpoint, started: started) }
        if checkpoint.format == .gguf { return try convertFromGGUF(checkpoint, started: started) }
        let target = floats.targetDType
        let totalBytes = checkpoint.entries.reduce(0) { $0 + $1.storedBytes }
        let progress = ProgressBar(label: "convert", total: totalBytes, quiet: report.quiet)
        // Kernels are transposed only when they are not already in the asked layout.
        let recorded = checkpoint.metadata?.first { $0.key == Self.kernelLayoutKey }?.value ?? "keras"
        let transpose = layout != nil && layout?.rawValue != recorded
        var metadata = checkpoint.metadata
        if let layout {
            metadata = (metadata ?? []).filter { $0.key != Self.kernelLayoutKey } + [(Self.kernelLayoutKey, layout.rawValue)]
        }
        var writer = CheckpointWriter(
            target: OutputTarget(output), metadata: metadata, companions: checkpoint.companions, progress: progress)
        writer.maxShardSize = floats.shardLimit
        writer.shardGroups = checkpoint.shardGroups
        writer.castDType = target
        let written = try writer.write(names: checkpoint.entries.map(\.name)) { index in
            switch try checkpoint.entries[index].load() {
            case .quantized(let q):
                progress.advance(by: q.storedBytes)
                return .quantized(q)
            case .plain(var tensor):
                if transpose, KerasKernels.isDenseKernel(name: checkpoint.entries[index].name, shape: tensor.shape) {
                    tensor = KerasKernels.transposed(tensor)
                }
                guard let target, tensor.dtype.isFloatingPoint, let cast = CastTensor(tensor, to: target) else { return .plain(tensor) }
                return .plain(cast)
            }
        }
        progress.finish()
        let seconds = Date().timeIntervalSince(started)
        Report.written(
            report, input: input, output: output, files: written, tensors: checkpoint.entries.count, bytes: totalBytes, seconds: seconds)
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
