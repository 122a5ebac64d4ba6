import GGUFConversion
import GGUFFormat
import LanguageModel
import TensorCore
import Tokenizer

/// Writes a checkpoint as a llama.cpp GGUF model: the model's config and tokenizer (companion
/// files) give the metadata; tensors are renamed, permuted and encoded a tensor at a time.
struct GGUFModelOutput {
    /// The GGUF to write.
    let path: String
    /// The source checkpoint (named in errors about its config and tokenizer).
    let source: String
    /// The requested type of weight matrices; nil picks as convert_hf_to_gguf's `auto` does.
    let type: GGMLType?
    /// The model's name (`general.name`).
    let name: String
    let companions: [(name: String, read: @Sendable () throws -> [UInt8])]
    /// The source tensors' shapes, in `names` order.
    let shapes: [Shape]
    /// Whether the source is 4-bit (the default type is then Q8_0).
    let sourceIsQuantized: Bool
    /// The float type of the source's first matrix (for the `auto` type).
    let firstMatrixDType: DType?
    /// Tensor names grouped by shard file (a sharded input): written shard by shard.
    var shardGroups: [(file: String, tensors: [String])]? = nil
    let progress: ProgressBar

    /// The type written for `--dtype` (or its absence).
    var chosenType: GGMLType {
        if let type { return type }
        if sourceIsQuantized { return .q8_0 }
        return firstMatrixDType == .bf16 ? .bf16 : .f16
    }

    func companion(_ name: String) throws -> [UInt8]? { try companions.first { $0.name == name }?.read() }

    /// The order convert_hf_to_gguf.py writes tensors in: shard by shard (file-name order), each
    /// shard's tensors in name order (safetensors headers list them sorted).
    func sourceOrder(names: [String]) -> [Int] {
        var shard: [String: Int] = [:]
        for (index, group) in (shardGroups ?? []).sorted(by: { $0.file < $1.file }).enumerated() {
            for name in group.tensors { shard[name] = index }
        }
        return names.indices.sorted { a, b in
            let (sa, sb) = (shard[names[a]] ?? 0, shard[names[b]] ?? 0)
            return sa != sb ? sa < sb : Array(names[a].utf8).lexicographicallyPrecedes(Array(names[b].utf8))
        }
    }

    /// The export plan: metadata and the output tensors (`source` indexes `names`).
    func plan(names: [String]) throws -> GGUFModelExport {
        guard let configBytes = try companion("config.json") else {
            throw CommandError(path: source, "the source has no config.json, which a GGUF model's metadata comes from")
        }
        let config: ModelConfig
        do {
            config = try ModelConfig(json: configBytes, path: "config.json")
        } catch {
            throw CommandError(path: source, "config.json: \(error.problem)")
        }
        guard let tokenizerBytes = try companion("tokenizer.json") else {
            throw CommandError(path: source, "the source has no tokenizer.json; llama.cpp needs the tokenizer in the GGUF")
        }
        let tokenizerConfigBytes = try companion("tokenizer_config.json")
        let tokenizer = try Tokenizer(json: tokenizerBytes, config: tokenizerConfigBytes, path: "tokenizer.json")
        func json(_ bytes: [UInt8]?) -> JSONValue? { bytes.flatMap { b in try? b.withUnsafeBytes { try JSONParser.parse($0) } } }
        let template = try companion("chat_template.jinja").map { String(decoding: $0, as: UTF8.self) }
        guard let tokenizerJSON = json(tokenizerBytes) else { throw CommandError(path: source, "tokenizer.json is not JSON") }
        do {
            return try GGUFModelExport(
                sources: sourceOrder(names: names).map { GGUFModelExport.Source(name: names[$0], shape: shapes[$0], index: $0) },
                config: config, tokenizer: tokenizer,
                tokenizerJSON: tokenizerJSON, tokenizerConfig: json(tokenizerConfigBytes), modelConfig: json(configBytes),
                chatTemplateFile: template, type: chosenType,
                name: name)
        } catch {
            throw CommandError(path: source, error.description)
        }
    }

    /// Writes every tensor, asking `produce` for source tensor i when its turn comes.
    func write(names: [String], produce: (Int) throws -> OutputItem) throws -> (files: [String], notes: [String]) {
        let export = try plan(names: names)
        let writer = try GGUFWriter(path: path, metadata: export.metadata, tensors: export.items.map(\.plan))
        do {
            for item in export.items {
                if let values = item.values {
                    try writer.writeTensor(Tensor(dtype: .f32, shape: [values.count], values: values))
                    continue
                }
                let source: Tensor
                switch try produce(item.source!) {
                case .plain(let payload): source = try (payload as? Tensor) ?? payload.materialized()
                case .quantized(let q): source = q.dequantized(to: .f32)
                }
                guard source.dtype.isFloatingPoint, FloatConversion.decodable.contains(source.dtype) else {
                    throw CommandError(
                        path: self.source, "tensor '\(names[item.source!])' is \(source.dtype.rawValue), not a float type GGUF stores")
                }
                try writer.writeTensor(
                    ProgressPayload(base: GGMLEncodedPayload(source, as: item.plan.type, rowOrder: item.rowOrder), progress: progress))
                source.releaseResidentPages()
            }
            try writer.commit()
        } catch {
            writer.abort()
            throw error
        }
        return ([path], export.notes)
    }
}
