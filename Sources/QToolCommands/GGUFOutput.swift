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
    /// The checkpoint written, and its path (named in errors about its config and tokenizer).
    let checkpoint: Checkpoint
    let source: String
    /// The requested type of weight matrices; nil picks as convert_hf_to_gguf's `auto` does.
    let type: GGMLType?
    let report: ReportOptions
    let progress: ProgressBar

    var companions: [(name: String, read: @Sendable () throws -> [UInt8])] { checkpoint.companions }

    /// The type written for `--dtype` (or its absence): Q8_0 for a 4-bit source; else the
    /// source's first matrix's type, bf16, or f16.
    var chosenType: GGMLType {
        if let type { return type }
        if checkpoint.isQuantized { return .q8_0 }
        return checkpoint.entries.first { $0.shape.rank >= 2 && $0.quantization == nil }?.dtype == .bf16 ? .bf16 : .f16
    }

    /// The name convert_hf_to_gguf.py gives a model: config's `_name_or_path`, else the folder's.
    static func modelName(_ path: String, config: [UInt8]?) -> String {
        let json = config.flatMap { bytes in try? bytes.withUnsafeBytes { try JSONParser.parse($0) } }
        var folder = FilePaths.lastComponent(of: path.hasSuffix("/") ? String(path.dropLast()) : path)
        for suffix in [".nf4", ".safetensors"] where folder.hasSuffix(suffix) { folder = String(folder.dropLast(suffix.count)) }
        return GGUFModelMetadata.modelName(configJSON: json, folderName: folder)
    }

    func companion(_ name: String) throws -> [UInt8]? { try companions.first { $0.name == name }?.read() }

    /// The order convert_hf_to_gguf.py writes tensors in: shard by shard (file-name order), each
    /// shard's tensors in name order (safetensors headers list them sorted).
    func sourceOrder() -> [Int] {
        let names = checkpoint.entries.map(\.name)
        var shard: [String: Int] = [:]
        for (index, group) in (checkpoint.shardGroups ?? []).sorted(by: { $0.file < $1.file }).enumerated() {
            for name in group.tensors { shard[name] = index }
        }
        return names.indices.sorted { a, b in
            let (sa, sb) = (shard[names[a]] ?? 0, shard[names[b]] ?? 0)
            return sa != sb ? sa < sb : Array(names[a].utf8).lexicographicallyPrecedes(Array(names[b].utf8))
        }
    }

    /// The export plan: metadata and the output tensors (`source` indexes the checkpoint's entries).
    func plan() throws -> GGUFModelExport {
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
                sources: sourceOrder().map {
                    GGUFModelExport.Source(name: checkpoint.entries[$0].name, shape: checkpoint.entries[$0].shape, index: $0)
                },
                config: config, tokenizer: tokenizer,
                tokenizerJSON: tokenizerJSON, tokenizerConfig: json(tokenizerConfigBytes), modelConfig: json(configBytes),
                chatTemplateFile: template, type: chosenType,
                name: Self.modelName(source, config: configBytes))
        } catch {
            throw CommandError(path: source, error.description)
        }
    }

    /// Writes every tensor, asking `produce` for the checkpoint's entry i when its turn comes;
    /// says (unless quiet or --json) when a 4-bit source goes to Q8_0 and which tensors fell back.
    func write(produce: (Int) throws -> OutputItem) throws -> [String] {
        let speaks = !report.quiet && !report.json
        if type == nil && checkpoint.isQuantized && speaks {
            Report.note(
                "note: NF4/FP4 has no GGUF equivalent; the 4-bit weights are dequantized and written as Q8_0 (--dtype picks another type)")
        }
        let export = try plan()
        let names = checkpoint.entries.map(\.name)
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
        if speaks { for note in export.notes { Report.note("note: \(note)") } }
        return [path]
    }
}
