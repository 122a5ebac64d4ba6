import TensorCore

/// What is wrong with a model: its config, its weights against the config, or its input.
public struct ModelError: FileError, Equatable {
    public let path: String
    public let problem: String

    public init(path: String, _ problem: String) {
        self.path = path
        self.problem = problem
    }
}

/// How positions are turned into rotation frequencies (transformers' `rope_parameters`, or the
/// older `rope_theta` + `rope_scaling`).
public enum RopeScaling: Equatable, Sendable {
    case none
    /// Every frequency divided by `factor`.
    case linear(factor: Double)
    /// Llama 3.1's: low frequencies divided by `factor`, high ones kept, a blend between.
    case llama3(factor: Double, lowFrequencyFactor: Double, highFrequencyFactor: Double, originalMaxPositions: Int)
}

/// A Llama-family decoder's shape, read from config.json as transformers reads it.
public struct ModelConfig: Equatable, Sendable {
    /// The architectures qtool runs: Llama 2/3, Mistral and Qwen2 share one decoder.
    public static let supportedTypes = ["llama", "mistral", "qwen2"]

    public var modelType: String
    public var hiddenSize: Int
    public var intermediateSize: Int
    public var layers: Int
    public var heads: Int
    public var kvHeads: Int
    public var headDim: Int
    public var vocabSize: Int
    public var maxPositions: Int
    public var rmsNormEps: Float
    public var ropeTheta: Double
    public var ropeScaling: RopeScaling
    public var tiedEmbeddings: Bool
    /// q/k/v projections carry biases (Qwen2; Llama with `attention_bias`, which adds o too).
    public var qkvBias: Bool
    public var outputBias: Bool
    public var mlpBias: Bool
    /// Keys at most this many positions back are attended to (Mistral; Qwen2 with
    /// `use_sliding_window`); nil attends to every earlier position.
    public var slidingWindow: Int?
    public var bosTokenID: Int?
    public var eosTokenIDs: [Int]

    /// Reads config.json's text; `path` names it in errors.
    public init(json bytes: [UInt8], path: String) throws(ModelError) {
        let root: JSONValue
        do {
            root = try bytes.withUnsafeBytes { raw throws(JSONParseError) in try JSONParser.parse(raw) }
        } catch {
            throw ModelError(path: path, "not valid JSON (\(error))")
        }
        guard root.objectMembers != nil else { throw ModelError(path: path, "is not a JSON object") }
        func fail(_ problem: String) -> ModelError { ModelError(path: path, problem) }
        func integer(_ key: String, _ fallback: Int? = nil, in object: JSONValue? = nil) throws(ModelError) -> Int {
            guard let value = (object ?? root)[key], value != .null else {
                if let fallback { return fallback }
                throw fail("\"\(key)\" is missing")
            }
            guard let int = value.integerValue, int >= 0, int <= 1 << 40 else { throw fail("\"\(key)\" is not a non-negative integer") }
            return int
        }
        func number(_ key: String, _ fallback: Double? = nil, in object: JSONValue? = nil) throws(ModelError) -> Double {
            guard let value = (object ?? root)[key], value != .null else {
                if let fallback { return fallback }
                throw fail("\"\(key)\" is missing")
            }
            guard let double = value.doubleValue, double.isFinite else { throw fail("\"\(key)\" is not a finite number") }
            return double
        }
        func flag(_ key: String, _ fallback: Bool) throws(ModelError) -> Bool {
            guard let value = root[key], value != .null else { return fallback }
            guard let bool = value.boolValue else { throw fail("\"\(key)\" is not true or false") }
            return bool
        }

        guard let type = root["model_type"]?.stringValue else { throw fail("\"model_type\" is missing") }
        guard Self.supportedTypes.contains(type) else {
            throw fail("model_type \"\(type)\" is not supported (qtool runs \(Self.supportedTypes.joined(separator: ", ")))")
        }
        modelType = type
        hiddenSize = try integer("hidden_size")
        intermediateSize = try integer("intermediate_size")
        layers = try integer("num_hidden_layers")
        heads = try integer("num_attention_heads")
        kvHeads = try integer("num_key_value_heads", heads)
        vocabSize = try integer("vocab_size")
        guard hiddenSize > 0, intermediateSize > 0, layers > 0, heads > 0, kvHeads > 0, vocabSize > 0 else {
            throw fail("sizes must be positive")
        }
        headDim = try integer("head_dim", hiddenSize / heads)
        guard headDim > 0, headDim % 2 == 0 else { throw fail("head_dim \(headDim) is not a positive even number") }
        guard heads % kvHeads == 0 else { throw fail("num_attention_heads \(heads) is not a multiple of num_key_value_heads \(kvHeads)") }
        maxPositions = try integer("max_position_embeddings", 2048)
        let eps = try number("rms_norm_eps", 1e-6)
        guard eps >= 0 else { throw fail("rms_norm_eps is negative") }
        rmsNormEps = Float(eps)
        tiedEmbeddings = try flag("tie_word_embeddings", false)

        // transformers 5 writes rope_parameters (theta and scaling inside); older files write
        // rope_theta and rope_scaling.
        let parameters = root["rope_parameters"].flatMap { $0 == .null ? nil : $0 }
        let scaling = parameters ?? root["rope_scaling"].flatMap { $0 == .null ? nil : $0 }
        ropeTheta = try number("rope_theta", try number("rope_theta", 10000, in: root), in: parameters ?? root)
        guard ropeTheta > 0 else { throw fail("rope_theta must be positive") }
        if let scaling {
            guard scaling.objectMembers != nil else { throw fail("rope scaling is not an object") }
            let kind = scaling["rope_type"]?.stringValue ?? scaling["type"]?.stringValue ?? "default"
            switch kind {
            case "default": ropeScaling = .none
            case "linear": ropeScaling = .linear(factor: try number("factor", in: scaling))
            case "llama3":
                ropeScaling = .llama3(
                    factor: try number("factor", in: scaling), lowFrequencyFactor: try number("low_freq_factor", in: scaling),
                    highFrequencyFactor: try number("high_freq_factor", in: scaling),
                    originalMaxPositions: try integer("original_max_position_embeddings", in: scaling))
            default: throw fail("rope scaling \"\(kind)\" is not supported (default, linear and llama3 are)")
            }
            if case .linear(let factor) = ropeScaling, factor <= 0 { throw fail("rope scaling factor must be positive") }
            if case .llama3(let factor, let low, let high, let original) = ropeScaling,
                factor <= 0 || low <= 0 || high <= low || original <= 0
            {
                throw fail("llama3 rope scaling needs factor > 0, 0 < low_freq_factor < high_freq_factor, original positions > 0")
            }
        } else {
            ropeScaling = .none
        }
        let attentionBias = try flag("attention_bias", false)
        qkvBias = type == "qwen2" || attentionBias
        outputBias = type != "qwen2" && attentionBias
        mlpBias = try flag("mlp_bias", false)
        let window = root["sliding_window"].flatMap { $0 == .null ? nil : $0 }
        let qwenWindow = try flag("use_sliding_window", false)
        let useWindow = type == "mistral" || (type == "qwen2" && qwenWindow)
        if useWindow, let window {
            guard let size = window.integerValue, size > 0 else { throw fail("\"sliding_window\" is not a positive integer") }
            slidingWindow = size
        } else {
            slidingWindow = nil
        }
        bosTokenID = root["bos_token_id"]?.integerValue
        if let eos = root["eos_token_id"] {
            eosTokenIDs = eos.integerValue.map { [$0] } ?? (eos.arrayValues ?? []).compactMap(\.integerValue)
        } else {
            eosTokenIDs = []
        }
    }

    public var kvDim: Int { kvHeads * headDim }
    public var qDim: Int { heads * headDim }
}
