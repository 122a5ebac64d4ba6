import ArgumentParser
import Foundation
import LanguageModel
import LoRAMerge
import Quantization
import TensorCore
import Tokenizer

/// A model folder (safetensors, bitsandbytes 4-bit) or a `.nf4` container opened for the model
/// stage: its config, its weights bound to the decoder, and its companion files (the tokenizer).
struct LoadedModel {
    let model: LanguageModel
    let checkpoint: Checkpoint

    /// Opens `path` with LoRA `adapters` (`DIR` or `DIR=WEIGHT`) applied un-merged. With
    /// `quantizeOnLoad`, float weights of the linear layers (what bitsandbytes' `load_in_4bit`
    /// quantizes: 2-D weights other than embeddings and the output head) become NF4 in memory,
    /// blocksize 64 with double quantization, one tensor at a time.
    static func open(_ path: String, adapters: [String], allowExternal: Bool, threads: Int, quantizeOnLoad: Bool = false) throws
        -> LoadedModel
    {
        let checkpoint = try Checkpoint.open(path, allowExternal: allowExternal)
        guard let configFile = checkpoint.companions.first(where: { $0.name == "config.json" }) else {
            throw CommandError(path: path, "no config.json beside the weights (give the model folder or a .nf4 that carries it)")
        }
        let config = try ModelConfig(json: try configFile.read(), path: checkpoint.isFolder ? path + "/config.json" : path)
        var tensors: [String: StoredTensor] = [:]
        for entry in checkpoint.entries {
            var tensor = try entry.load()
            if quantizeOnLoad, case .plain(let plain) = tensor,
                TensorSelection().shouldQuantize(name: entry.name, dtype: plain.dtype, shape: plain.shape)
            {
                tensor = .quantized(
                    try QuantizedTensor.quantize(plain, type: .nf4, blocksize: 64, doubleQuantization: true, threads: threads))
            }
            tensors[entry.name] = tensor
        }
        let loaded = try adapters.map(AdapterFolder.parseSpec).map { (adapter: try AdapterFolder.load($0.path), weight: $0.weight) }
        let model = try LanguageModel(config: config, tensors: tensors, adapters: loaded, path: path, threads: threads)
        return LoadedModel(model: model, checkpoint: checkpoint)
    }

    /// The model's tokenizer: tokenizer.json (and tokenizer_config.json) beside its weights.
    func tokenizer() throws -> Tokenizer {
        guard let json = try companion("tokenizer.json") else {
            throw CommandError(path: checkpoint.path, "no tokenizer.json beside the model")
        }
        let path = checkpoint.isFolder ? checkpoint.path + "/tokenizer.json" : checkpoint.path
        return try Tokenizer(json: json, config: try companion("tokenizer_config.json"), path: path)
    }

    /// A companion file's bytes (tokenizer.json, tokenizer_config.json), nil when absent.
    func companion(_ name: String) throws -> [UInt8]? {
        try checkpoint.companions.first { $0.name == name }?.read()
    }
}

extension Checkpoint {
    /// Whether the checkpoint is a folder (its config.json is a file inside it).
    var isFolder: Bool { FilePaths.isDirectory(path) }
}

/// What the commands that run a model share: adapters, external HDF5 data, threads.
struct ModelOptions: ParsableArguments {
    @Option(help: "A LoRA adapter folder (PEFT or mlx-lm), DIR or DIR=WEIGHT; repeatable.")
    var adapter: [String] = []

    @OptionGroup var inputOptions: InputOptions

    @OptionGroup var threading: ThreadOptions

    func validate() throws {
        for spec in adapter { _ = try AdapterFolder.parseSpec(spec) }
    }

    /// Sets the thread count and opens `model` with the adapters.
    func load(_ model: String) throws -> LoadedModel {
        threading.apply()
        return try LoadedModel.open(
            model, adapters: adapter, allowExternal: inputOptions.allowExternal, threads: ParallelismSettings.threadCount)
    }
}
