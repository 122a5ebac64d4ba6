import GGUFFormat
import LanguageModel
import TensorCore
import Tokenizer

/// What to write for a transformers checkpoint as a llama.cpp GGUF: the metadata and, for each
/// output tensor, where it comes from and how it is stored, following convert_hf_to_gguf.py.
public struct GGUFModelExport {
    /// A tensor of the source checkpoint, described without its data.
    public struct Source: Sendable {
        public let name: String
        public let shape: Shape
        /// The caller's index of the tensor (what `Item.source` gives back).
        public let index: Int
        public init(name: String, shape: Shape, index: Int) {
            self.name = name
            self.shape = shape
            self.index = index
        }
    }

    /// One tensor of the output.
    public struct Item: Sendable {
        public let plan: GGUFTensorPlan
        /// The source tensor's `Source.index` (nil for `rope_freqs`, made from the config).
        public let source: Int?
        /// For llama's q and k: output row r takes source row `rowOrder[r]`.
        public let rowOrder: [Int]?
        /// Values computed here (`rope_freqs`).
        public let values: [Float]?
    }

    public let metadata: GGUFMetadata
    public let items: [Item]
    /// Things the user should know (a tensor stored as F16 because Q8_0 does not fit its rows).
    public let notes: [String]

    /// `type` is the requested type of the weight matrices; 1-D tensors and norms are F32, and a
    /// matrix whose rows are not whole blocks of a quantized type falls back to F16, as
    /// convert_hf_to_gguf.py does. `fileType` is recorded as `general.file_type`.
    public init(
        sources: [Source], config: ModelConfig, tokenizer: Tokenizer, tokenizerJSON: JSONValue, tokenizerConfig: JSONValue?,
        modelConfig: JSONValue?,
        chatTemplateFile: String?, type: GGMLType, name: String
    ) throws(GGUFVocabulary.Refusal) {
        guard let architecture = LlamaCppLayout.architecture(modelType: config.modelType) else {
            throw GGUFVocabulary.Refusal(description: "model_type \"\(config.modelType)\" has no GGUF architecture qtool writes")
        }
        var items: [Item] = []
        var notes: [String] = []
        if let factors = LlamaCppLayout.llama3RopeFactors(config: config) {
            items.append(
                Item(
                    plan: GGUFTensorPlan(name: "rope_freqs.weight", dimensions: [factors.count], type: .f32), source: nil, rowOrder: nil,
                    values: factors))
        }
        var embeddingRows: Int? = nil
        for source in sources {
            if source.name.hasSuffix(".rotary_emb.inv_freq") { continue }
            if config.tiedEmbeddings && source.name == "lm_head.weight" { continue }
            guard let ggufName = LlamaCppLayout.ggufName(source.name) else {
                throw GGUFVocabulary.Refusal(description: "tensor '\(source.name)' has no llama.cpp name for \(architecture)")
            }
            if ggufName == "token_embd.weight" { embeddingRows = source.shape.dimensions.first }
            var rowOrder: [Int]? = nil
            if let heads = LlamaCppLayout.permutedHeads(
                transformersName: source.name, architecture: architecture, heads: config.heads, kvHeads: config.kvHeads)
            {
                guard let order = LlamaCppLayout.permutedRows(rows: source.shape.dimensions.first ?? 0, heads: heads) else {
                    throw GGUFVocabulary.Refusal(
                        description: "tensor '\(source.name)' of shape \(source.shape) does not split into \(heads) heads of row pairs")
                }
                rowOrder = order
            }
            let rank = source.shape.rank
            var stored = type
            if rank <= 1 || ggufName.hasSuffix("_norm.weight") || !ggufName.hasSuffix(".weight") {
                stored = .f32
            } else if type.isQuantized, (source.shape.dimensions.last ?? 0) % type.blockSize != 0 {
                notes.append("\(ggufName): rows of \(source.shape.dimensions.last ?? 0) are not whole \(type) blocks; stored as F16")
                stored = .f16
            }
            guard (1...4).contains(rank), source.shape.checkedElementCount != nil else {
                throw GGUFVocabulary.Refusal(description: "tensor '\(source.name)' of shape \(source.shape) cannot be stored in GGUF")
            }
            items.append(
                Item(
                    plan: GGUFTensorPlan(name: ggufName, shape: source.shape, type: stored), source: source.index, rowOrder: rowOrder,
                    values: nil))
        }
        guard let rows = embeddingRows else { throw GGUFVocabulary.Refusal(description: "no model.embed_tokens.weight tensor") }
        let parameters = items.reduce(0) { $0 + $1.plan.dimensions.reduce(1, *) }
        var metadata = GGUFModelMetadata.metadata(
            config: config, configJSON: modelConfig, architecture: architecture, name: name, parameterCount: parameters,
            fileType: GGUFFileType(type) ?? .mostlyF16)
        for (key, value) in try GGUFVocabulary.metadata(
            tokenizer: tokenizer, tokenizerJSON: tokenizerJSON, rows: rows, tokenizerConfig: tokenizerConfig, modelConfig: modelConfig,
            chatTemplateFile: chatTemplateFile, architecture: architecture)
        {
            metadata[key] = value
        }
        self.metadata = metadata
        self.items = items
        self.notes = notes
    }
}
