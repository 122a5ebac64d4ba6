import GGUFFormat
import LanguageModel
import TensorCore

/// The model metadata llama.cpp reads (`general.*` and `{arch}.*`), from a transformers config,
/// and a transformers config.json back from it.
public enum GGUFModelMetadata {
    /// `general.*` and the hyperparameters, in the order convert_hf_to_gguf.py writes them
    /// (`configJSON` says which optional keys the config has: the converter writes only those).
    public static func metadata(
        config: ModelConfig, configJSON: JSONValue?, architecture: String, name: String, parameterCount: Int, fileType: GGUFFileType
    ) -> GGUFMetadata {
        var m = GGUFMetadata()
        m["general.architecture"] = .string(architecture)
        m["general.type"] = .string("model")
        m["general.name"] = .string(name)
        if parameterCount > 0 { m["general.size_label"] = .string(sizeLabel(parameterCount)) }
        let rope = configJSON?["rope_parameters"].flatMap { $0 == .null ? nil : $0 } ?? configJSON
        func has(_ key: String, in object: JSONValue? = configJSON) -> Bool { object?[key].map { $0 != .null } ?? false }
        let a = architecture
        m["\(a).block_count"] = .uint32(UInt32(config.layers))
        if has("max_position_embeddings") { m["\(a).context_length"] = .uint32(UInt32(config.maxPositions)) }
        m["\(a).embedding_length"] = .uint32(UInt32(config.hiddenSize))
        m["\(a).feed_forward_length"] = .uint32(UInt32(config.intermediateSize))
        m["\(a).attention.head_count"] = .uint32(UInt32(config.heads))
        if has("num_key_value_heads") { m["\(a).attention.head_count_kv"] = .uint32(UInt32(config.kvHeads)) }
        if case .linear(let factor) = config.ropeScaling {
            m["\(a).rope.scaling.type"] = .string("linear")
            m["\(a).rope.scaling.factor"] = .float32(Float(factor))
        }
        if has("rope_theta", in: rope) || has("rope_theta") { m["\(a).rope.freq_base"] = .float32(Float(config.ropeTheta)) }
        if has("rms_norm_eps") { m["\(a).attention.layer_norm_rms_epsilon"] = .float32(config.rmsNormEps) }
        if has("head_dim") {
            m["\(a).attention.key_length"] = .uint32(UInt32(config.headDim))
            m["\(a).attention.value_length"] = .uint32(UInt32(config.headDim))
        }
        m["general.file_type"] = .uint32(fileType.rawValue)
        if architecture == "llama" {
            m["\(a).vocab_size"] = .uint32(UInt32(config.vocabSize))
            m["\(a).rope.dimension_count"] = .uint32(UInt32(config.headDim))
        }
        m["general.quantization_version"] = .uint32(2)
        return m
    }

    /// gguf-py's `size_label`: the parameter count as "164K", "1.2B", "13M".
    public static func sizeLabel(_ count: Int) -> String {
        let value = Double(count)
        let (scaled, suffix): (Double, String) =
            value > 1e12
            ? (value * 1e-12, "T") : value > 1e9 ? (value * 1e-9, "B") : value > 1e6 ? (value * 1e-6, "M") : (value * 1e-3, "K")
        // Python's round() (halves to even), then the digits before the point, leading zeros aside.
        let rounded = scaled.rounded(.toNearestOrEven)
        let digits = rounded == 0 ? 0 : String(Int(rounded)).count
        let fix = max(2 - digits, 0)
        return String(format: "%.\(fix)f", scaled) + suffix
    }

    /// gguf-py's `Metadata.id_to_title`: words split at spaces and hyphens, each all-lowercase
    /// word title-cased unless it is a version or starts with a digit.
    public static func title(_ id: String) -> String {
        id.replacingOccurrences(of: "-", with: " ").split(separator: " ").map { word -> String in
            let text = String(word)
            let cased = text.filter { $0.isLetter && ($0.isLowercase || $0.isUppercase) }
            let isLower = !cased.isEmpty && cased.allSatisfy(\.isLowercase)
            let isVersion =
                text.first?.isNumber == true
                || (text.first == "v" && text.dropFirst().split(separator: ".").allSatisfy { !$0.isEmpty && $0.allSatisfy(\.isNumber) }
                    && text.count > 1)
            guard isLower, !isVersion else { return text }
            var out = ""
            var previousCased = false
            for character in text {
                let isCased = character.isLetter && (character.isLowercase || character.isUppercase)
                out += isCased ? (previousCased ? character.lowercased() : character.uppercased()) : String(character)
                previousCased = isCased
            }
            return out
        }.joined(separator: " ")
    }

    /// The model's name as convert_hf_to_gguf.py finds it: config.json's `_name_or_path` when it
    /// is a model id, else the folder's name; title-cased.
    public static func modelName(configJSON: JSONValue?, folderName: String) -> String {
        if let id = configJSON?["_name_or_path"]?.stringValue, !id.isEmpty, id.filter({ $0 == "/" }).count <= 1 {
            if id.contains(" ") { return id }
            let parts = id.split(separator: "/", maxSplits: 1)
            let model = parts.count == 2 && !parts[0].hasPrefix(".") ? String(parts[1]) : (parts.count == 2 ? String(parts[1]) : id)
            return title(model)
        }
        return title(folderName)
    }

    /// A transformers config.json (as transformers 5 writes one) from a GGUF file's metadata;
    /// `vocabularyRows` is the embedding's row count, `tied` whether the file has no output.
    public static func transformersConfig(
        _ metadata: GGUFMetadata, path: String, vocabularyRows: Int, tied: Bool, dtype: DType
    ) throws -> JSONValue {
        guard let architecture = metadata["general.architecture"]?.string else {
            throw GGUFError.invalidMetadata(path: path, key: "general.architecture", detail: "missing")
        }
        guard let model = LlamaCppLayout.transformersModel(architecture: architecture) else {
            throw GGUFError.invalidMetadata(
                path: path, key: "general.architecture",
                detail: "architecture \"\(architecture)\" is not supported for conversion to transformers (llama and qwen2 are)")
        }
        func integer(_ key: String, _ fallback: Int? = nil) throws -> Int {
            guard let value = metadata["\(architecture).\(key)"] else {
                if let fallback { return fallback }
                throw GGUFError.invalidMetadata(path: path, key: "\(architecture).\(key)", detail: "missing")
            }
            guard let int = value.integer, int > 0, int < 1 << 40 else {
                throw GGUFError.invalidMetadata(path: path, key: "\(architecture).\(key)", detail: "not a positive integer")
            }
            return int
        }
        func number(_ key: String, _ fallback: Double) throws -> Double {
            guard let value = metadata["\(architecture).\(key)"] else { return fallback }
            guard let number = value.number, number.isFinite else {
                throw GGUFError.invalidMetadata(path: path, key: "\(architecture).\(key)", detail: "not a finite number")
            }
            return number
        }
        let hidden = try integer("embedding_length")
        let heads = try integer("attention.head_count")
        let headDim = try integer("attention.key_length", try integer("rope.dimension_count", hidden / heads))
        var members: [JSONMember] = []
        func add(_ key: String, _ value: JSONValue) { members.append(JSONMember(key: key, value: value)) }
        add("architectures", .array([.string(model.className)]))
        if architecture == "llama" { add("attention_bias", .bool(false)) }
        add("attention_dropout", .number("0.0"))
        let special: [(String, String)] = [("bos", "bos_token_id"), ("eos", "eos_token_id"), ("padding", "pad_token_id")]
        for (kind, key) in special {
            if let id = metadata["tokenizer.ggml.\(kind)_token_id"]?.integer { add(key, .number("\(id)")) }
        }
        add("dtype", .string(dtype.torchName))
        add("head_dim", .number("\(headDim)"))
        add("hidden_act", .string("silu"))
        add("hidden_size", .number("\(hidden)"))
        add("initializer_range", .number("0.02"))
        add("intermediate_size", .number("\(try integer("feed_forward_length"))"))
        add("max_position_embeddings", .number("\(try integer("context_length", 2048))"))
        if architecture == "llama" { add("mlp_bias", .bool(false)) }
        add("model_type", .string(model.modelType))
        add("num_attention_heads", .number("\(heads)"))
        add("num_hidden_layers", .number("\(try integer("block_count"))"))
        add("num_key_value_heads", .number("\(try integer("attention.head_count_kv", heads))"))
        // float32 values as their shortest decimal (1e-05, not 9.999999747378752e-06).
        func float(_ value: Double) -> JSONValue {
            let text = Float(value).description
            return .number(text.contains(".") || text.contains("e") ? text : text + ".0")
        }
        add("rms_norm_eps", float(try number("attention.layer_norm_rms_epsilon", 1e-5)))
        var rope: [JSONMember] = []
        let scaling = metadata["\(architecture).rope.scaling.type"]?.string
        if let scaling, scaling != "none" {
            guard scaling == "linear", let factor = metadata["\(architecture).rope.scaling.factor"]?.number else {
                throw GGUFError.invalidMetadata(
                    path: path, key: "\(architecture).rope.scaling.type", detail: "rope scaling \"\(scaling)\" is not supported (linear is)"
                )
            }
            rope.append(JSONMember(key: "factor", value: float(factor)))
        }
        rope.append(JSONMember(key: "rope_theta", value: float(try number("rope.freq_base", 10000))))
        rope.append(JSONMember(key: "rope_type", value: .string(scaling == "linear" ? "linear" : "default")))
        add("rope_parameters", .object(rope))
        add("tie_word_embeddings", .bool(tied))
        add("use_cache", .bool(true))
        add("vocab_size", .number("\(vocabularyRows)"))
        return .object(members)
    }
}
