import ArgumentParser
import Foundation
import GGUFConversion
import GGUFFormat
import LanguageModel
import LoRAMerge
import TensorCore

/// `qtool convert`'s GGUF routes: a model to GGUF, a PEFT adapter to a GGUF LoRA adapter, and a
/// GGUF model back to a transformers folder.
extension ConvertCommand {
    func convertToGGUF(_ checkpoint: Checkpoint, started: Date) throws {
        let total = checkpoint.entries.reduce(0) { $0 + $1.storedBytes }
        let progress = ProgressBar(label: "convert", total: total, quiet: report.quiet)
        let output = GGUFModelOutput(
            path: self.output, checkpoint: checkpoint, source: input, type: floats.dtype?.ggmlType, report: report, progress: progress)
        let files = try output.write { index in
            switch try checkpoint.entries[index].load() {
            case .plain(let tensor): .plain(tensor)
            case .quantized(let q): .quantized(q)
            }
        }
        progress.finish()
        Report.written(
            report, input: input, output: self.output, files: files, tensors: checkpoint.entries.count, bytes: total,
            seconds: Date().timeIntervalSince(started))
    }

    /// A PEFT adapter as a llama.cpp LoRA adapter (`--lora`): `…weight.lora_a` `[r, in]` and
    /// `…weight.lora_b` `[out, r]` in torch order, q/k rows of `lora_b` permuted as the base's,
    /// `adapter.lora.alpha`; a module whose PEFT scale is not alpha/r (rsLoRA, rank or alpha
    /// patterns) has its B scaled so that llama.cpp's alpha/r gives PEFT's scale.
    func convertAdapterToGGUF(started: Date) throws {
        guard let base else {
            throw ValidationError("converting an adapter to GGUF needs --base BASE (the model it was trained on), for its architecture")
        }
        let adapter = try AdapterFolder.load(input)
        let baseCheckpoint = try Checkpoint.open(base, allowExternal: inputOptions.allowExternal)
        guard let configBytes = try baseCheckpoint.companions.first(where: { $0.name == "config.json" })?.read() else {
            throw CommandError(path: base, "the base has no config.json")
        }
        let config = try ModelConfig(json: configBytes, path: base + "/config.json")
        guard let architecture = LlamaCppLayout.architecture(modelType: config.modelType) else {
            throw CommandError(
                path: base, "model_type \"\(config.modelType)\" has no GGUF architecture qtool writes (llama, mistral, qwen2)")
        }
        let type = floats.dtype?.ggmlType ?? .f32
        guard !adapter.modules.isEmpty else { throw CommandError(path: input, "the adapter has no LoRA modules") }
        // A whole tensor the adapter saves (a PEFT `base_layer` of a targeted embedding, or
        // modules_to_save) is fine when it is the base's own (convert_lora_to_gguf.py skips
        // base layers); one that differs cannot be expressed by llama.cpp's A and B.
        for replaced in adapter.replacements {
            let same =
                try baseCheckpoint.entries.first { $0.name == replaced.name }.map { entry -> Bool in
                    guard case .plain(let tensor) = try entry.load(), tensor.shape == replaced.tensor.shape else { return false }
                    return LoRAModule.floats(tensor) == LoRAModule.floats(replaced.tensor)
                } ?? false
            guard same else {
                throw CommandError(
                    path: input,
                    "the adapter replaces '\(replaced.name)' whole with other values (modules_to_save or a resized embedding); "
                        + "llama.cpp's LoRA adapters hold only A and B")
            }
        }
        let adapterConfig = try? TextInput.bytes(input + "/" + AdapterFolder.configName).withUnsafeBytes { try JSONParser.parse($0) }
        let alpha = Float(adapterConfig?["lora_alpha"]?.doubleValue ?? Double(adapter.modules[0].scale * Float(adapter.modules[0].rank)))
        var items: [(plan: GGUFTensorPlan, values: [Float], rowOrder: [Int]?)] = []
        for module in adapter.modules.sorted(by: { Array($0.weightName.utf8).lexicographicallyPrecedes(Array($1.weightName.utf8)) }) {
            guard !module.isDoRA else {
                throw CommandError(path: input, "module '\(module.name)' is DoRA; llama.cpp's LoRA adapters have no magnitude vector")
            }
            guard module.biasB == nil else {
                throw CommandError(path: input, "module '\(module.name)' has a LoRA bias, which llama.cpp's adapters lack")
            }
            if config.tiedEmbeddings && module.weightName == "lm_head.weight" {
                throw CommandError(
                    path: input,
                    "the adapter targets lm_head, but the base ties it to the embedding (llama.cpp has no output tensor to adapt)")
            }
            guard let name = LlamaCppLayout.ggufName(module.weightName) else {
                throw CommandError(path: input, "module '\(module.name)' has no llama.cpp tensor")
            }
            var (a, b) = module.peftFactors()
            let r = module.rank
            // llama.cpp scales by alpha / r; fold any other PEFT scale into B.
            let correction = module.scale / (alpha / Float(r))
            if correction != 1 { b = b.map { $0 * correction } }
            // B's rows are the base's output rows: permuted as the base's q and k are.
            let order = LlamaCppLayout.permutedHeads(
                transformersName: module.weightName, architecture: architecture, heads: config.heads, kvHeads: config.kvHeads
            ).flatMap { LlamaCppLayout.permutedRows(rows: module.outFeatures, heads: $0) }
            if module.isEmbedding {
                // llama.cpp gathers rows of lora_a by token: A [r, vocab] is stored as its transpose.
                var transposed = [Float](repeating: 0, count: a.count)
                let vocab = module.inFeatures
                for i in 0..<r { for t in 0..<vocab { transposed[t * r + i] = a[i * vocab + t] } }
                items.append((GGUFTensorPlan(name: name + ".lora_a", shape: [vocab, r], type: type), transposed, nil))
            } else {
                items.append((GGUFTensorPlan(name: name + ".lora_a", shape: [r, module.inFeatures], type: type), a, nil))
            }
            items.append((GGUFTensorPlan(name: name + ".lora_b", shape: [module.outFeatures, r], type: type), b, order))
        }
        // A block type needs whole blocks per row; otherwise F16, as the converters fall back.
        items = items.map { item in
            guard type.isQuantized, (item.plan.dimensions.first ?? 0) % type.blockSize != 0 else { return item }
            return (GGUFTensorPlan(name: item.plan.name, dimensions: item.plan.dimensions, type: .f16), item.values, item.rowOrder)
        }
        var metadata = GGUFMetadata()
        metadata["general.architecture"] = .string(architecture)
        metadata["general.type"] = .string("adapter")
        metadata["adapter.type"] = .string("lora")
        metadata["general.name"] = .string(GGUFModelOutput.modelName(input, config: nil))
        metadata["adapter.lora.alpha"] = .float32(alpha)
        metadata["general.quantization_version"] = .uint32(2)
        let writer = try GGUFWriter(path: output, metadata: metadata, tensors: items.map(\.plan))
        do {
            for item in items {
                let source = Tensor(dtype: .f32, shape: Shape(item.plan.dimensions.reversed()), values: item.values)
                try writer.writeTensor(GGMLEncodedPayload(source, as: item.plan.type, rowOrder: item.rowOrder))
            }
            try writer.commit()
        } catch {
            writer.abort()
            throw error
        }
        Report.written(
            report, input: input, output: output, files: [output], tensors: items.count, bytes: items.reduce(0) { $0 + $1.plan.byteCount },
            seconds: Date().timeIntervalSince(started))
    }

    /// A GGUF model back to a transformers checkpoint: names, q/k rows and config.json and
    /// tokenizer files rebuilt from the metadata; block types dequantized to float32 (or --dtype).
    func convertFromGGUF(_ checkpoint: Checkpoint, started: Date) throws {
        guard let file = checkpoint.ggufFile else { return }
        let metadata = file.metadata
        let architecture = metadata["general.architecture"]?.string ?? "(none)"
        if metadata["general.type"]?.string == "adapter" {
            throw CommandError(path: input, "a GGUF LoRA adapter, not a model; qtool converts GGUF models to transformers")
        }
        guard LlamaCppLayout.transformersModel(architecture: architecture) != nil else {
            throw CommandError(
                path: input, "architecture \"\(architecture)\" is not supported for conversion to transformers (llama and qwen2 are)")
        }
        func count(_ key: String) -> Int? { metadata["\(architecture).\(key)"]?.integer }
        let heads = count("attention.head_count") ?? 0
        let kvHeads = count("attention.head_count_kv") ?? heads
        var entries: [(name: String, info: GGUFTensorInfo, heads: Int?)] = []
        for info in file.tensors {
            if info.name == "rope_freqs.weight" {
                throw CommandError(
                    path: input, "Llama 3 rope scaling factors (rope_freqs) cannot be turned back into transformers' rope_parameters")
            }
            guard let name = LlamaCppLayout.transformersName(info.name) else {
                throw CommandError(path: input, "tensor '\(info.name)' has no transformers name for \(architecture)")
            }
            let permutedHeads = LlamaCppLayout.permutedHeads(
                transformersName: name, architecture: architecture, heads: heads, kvHeads: kvHeads)
            entries.append((name, info, permutedHeads))
        }
        guard let embedding = entries.first(where: { $0.name == "model.embed_tokens.weight" }) else {
            throw CommandError(path: input, "no token_embd.weight tensor")
        }
        let tied = !entries.contains { $0.name == "lm_head.weight" }
        let stored = entries.first { $0.info.shape.rank >= 2 }?.info.type.plainDType ?? .f32
        let dtype = floats.targetDType ?? (stored == .f16 || stored == .bf16 ? stored : .f32)
        let configJSON = try GGUFModelMetadata.transformersConfig(
            metadata, path: input, vocabularyRows: embedding.info.shape.dimensions.first ?? 0, tied: tied,
            dtype: dtype)
        let tokenizer = try GGUFTokenizerFiles.files(metadata, path: input, contextLength: count("context_length"))
        let configBytes = Array((configJSON.serialized(.pythonDumps()) + "\n").utf8)
        let companions: [(name: String, read: @Sendable () throws -> [UInt8])] = [
            ("config.json", { configBytes }), ("tokenizer.json", { tokenizer.tokenizer }), ("tokenizer_config.json", { tokenizer.config }),
        ]
        let total = entries.reduce(0) { $0 + $1.info.byteCount }
        let progress = ProgressBar(label: "convert", total: total, quiet: report.quiet)
        let writer = CheckpointWriter(
            target: OutputTarget(output), metadata: [("format", "pt")], companions: companions, progress: progress)
        let written = try writer.write(names: entries.map(\.name)) { index in
            let entry = entries[index]
            var order: [Int]? = nil
            if let heads = entry.heads {
                guard let rows = LlamaCppLayout.unpermutedRows(rows: entry.info.shape.dimensions.first ?? 0, heads: heads) else {
                    throw CommandError(path: input, "tensor '\(entry.info.name)' does not split into \(heads) heads of row pairs")
                }
                order = rows
            }
            progress.advance(by: entry.info.byteCount)
            // Stored as the output type and in order: the mapped bytes as they are.
            if order == nil, entry.info.type.plainDType == dtype { return .plain(try file.tensor(entry.info)) }
            // Otherwise decoded (and reordered) as the writer streams it.
            guard let payload = GGUFDequantizedPayload(file, entry.info, dtype: dtype, rowOrder: order) else {
                throw CommandError(path: input, "tensor '\(entry.info.name)' is \(entry.info.type), not a float type")
            }
            return .plain(payload)
        }
        progress.finish()
        Report.written(
            report, input: input, output: output, files: written, tensors: entries.count, bytes: total,
            seconds: Date().timeIntervalSince(started))
    }
}
