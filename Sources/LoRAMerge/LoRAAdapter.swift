import TensorCore

/// One adapted module: the low-rank factors of its delta and what scales or follows it.
///
/// The factors are kept as the adapter stores them (mapped, any float type) and widened to
/// float32 only while the module is merged.
public struct LoRAModule: Sendable {
    /// How the delta lies in the base tensor.
    public enum Orientation: Sendable, Equatable {
        /// `W [out, in] += s·B·A` (torch Linear).
        case outputsByInputs
        /// `W [in, out] += s·(B·A)ᵀ`: GPT-2's Conv1D (`fan_in_fan_out`) and embeddings
        /// (`[num_embeddings, dim]`).
        case inputsByOutputs
    }

    /// The module's name in the base model, e.g. `model.layers.0.self_attn.q_proj`.
    public let name: String
    /// The base tensor it changes: `<name>.weight`.
    public var weightName: String { name + ".weight" }
    public let orientation: Orientation
    /// PEFT's `A [r, in]` (or mlx-lm's `lora_a [in, r]` when `factorsTransposed`).
    public let a: Tensor
    /// PEFT's `B [out, r]` (or mlx-lm's `lora_b [r, out]`).
    public let b: Tensor
    /// mlx-lm stores the transposes of PEFT's factors.
    public let factorsTransposed: Bool
    public let rank: Int
    public let inFeatures: Int
    public let outFeatures: Int
    /// `lora_alpha / r`, `lora_alpha / √r` (rsLoRA) or mlx-lm's `scale`.
    public let scale: Float
    /// DoRA's magnitude `m [out]`.
    public let magnitude: Tensor?
    /// PEFT's `lora_bias`: `lora_B.bias [out]`, added to the base bias times the scale.
    public let biasB: Tensor?
    public let isEmbedding: Bool

    public var isDoRA: Bool { magnitude != nil }

    /// PEFT's `A [r, in]` and `B [out, r]` in float32, whatever the layout stored.
    public func peftFactors() -> (a: [Float], b: [Float]) {
        let (a, b) = floatFactors()
        guard factorsTransposed else { return (a, b) }
        func transposed(_ values: [Float], rows: Int, columns: Int) -> [Float] {
            var out = [Float](repeating: 0, count: values.count)
            for row in 0..<rows { for column in 0..<columns { out[column * rows + row] = values[row * columns + column] } }
            return out
        }
        return (transposed(a, rows: inFeatures, columns: rank), transposed(b, rows: rank, columns: outFeatures))
    }

    /// The factors in float32, PEFT's orientation or mlx-lm's as stored (`factorsTransposed`).
    public func floatFactors() -> (a: [Float], b: [Float]) {
        (LoRAModule.floats(a), LoRAModule.floats(b))
    }

    public static func floats(_ tensor: Tensor) -> [Float] {
        if tensor.dtype == .f32 { return tensor.values(as: Float.self) }
        return [Float](unsafeUninitializedCapacity: tensor.elementCount) { buffer, count in
            tensor.withBytes { raw in
                if let source = raw.baseAddress, let destination = buffer.baseAddress {
                    FloatConversion.decodeToFloat32(source, tensor.dtype, from: 0, count: tensor.elementCount, into: destination)
                }
            }
            count = tensor.elementCount
        }
    }
}

/// A LoRA adapter as PEFT or mlx-lm saves it: its modules, and the whole tensors it replaces in
/// the base (`modules_to_save`, trained biases, resized embeddings).
public struct LoRAAdapter: Sendable {
    public enum Layout: String, Sendable {
        case peft = "PEFT"
        case mlx = "mlx-lm"
    }

    public let path: String
    public let layout: Layout
    /// Adapted modules, in the order of the adapter file.
    public let modules: [LoRAModule]
    /// Base tensors the adapter stores whole, by base tensor name.
    public let replacements: [(name: String, tensor: Tensor)]

    static let peftPrefix = "base_model.model."

    /// Which tool wrote `tensors`: mlx-lm's `lora_a`/`lora_b` or PEFT's `lora_A`/`lora_B`.
    public static func layout(of tensors: NamedTensors) -> Layout? {
        if tensors.names.contains(where: { $0.hasSuffix(".lora_a") || $0.hasSuffix(".lora_b") }) { return .mlx }
        if tensors.names.contains(where: { $0.contains(".lora_A.") || $0.contains(".lora_B.") || $0.contains(".lora_embedding_") }) {
            return .peft
        }
        return nil
    }

    /// Reads an adapter from its parsed `adapter_config.json` and its tensors.
    public init(path: String, config: JSONValue, tensors: NamedTensors, layout: Layout) throws(LoRAError) {
        self.path = path
        self.layout = layout
        guard config.objectMembers != nil else { throw .invalidConfig(path: path, problem: "not a JSON object") }
        for (name, tensor) in tensors.entries where FloatConversion.decodable.contains(tensor.dtype) {
            guard tensor.isAllFinite else { throw .invalidTensor(path: path, tensor: name, problem: "holds NaN or infinite values") }
        }
        switch layout {
        case .peft:
            let settings = try PEFTSettings(config, path: path)
            (modules, replacements) = try Self.peftModules(tensors, settings: settings, path: path)
        case .mlx:
            let settings = try MLXSettings(config, path: path)
            (modules, replacements) = try Self.mlxModules(tensors, settings: settings, path: path)
        }
        guard !modules.isEmpty || !replacements.isEmpty else {
            throw .invalidTensor(path: path, tensor: tensors.names.first ?? "", problem: "the adapter holds no LoRA weights")
        }
    }

    // MARK: PEFT

    /// The largest rank qtool takes from a config (far above any real adapter's; it keeps a
    /// hostile number from overflowing the arithmetic that follows).
    public static let maximumRank = 1 << 20

    /// The parts of PEFT's LoraConfig that decide a merge.
    struct PEFTSettings {
        var rank = 8
        var alpha = 8.0
        var rsLoRA = false
        var doRA = false
        var fanInFanOut = false
        var rankPattern: [(key: String, pattern: ModulePattern, value: Int)] = []
        var alphaPattern: [(key: String, pattern: ModulePattern, value: Double)] = []

        init(_ config: JSONValue, path: String) throws(LoRAError) {
            guard let type = config["peft_type"] else {
                throw .invalidConfig(path: path, problem: "no peft_type: not a PEFT adapter config")
            }
            guard type.stringValue == "LORA" else { throw .notLoRA(path: path, found: type.stringValue ?? type.kindName) }
            func number(_ key: String) throws(LoRAError) -> Double? {
                guard let value = config[key], value != .null else { return nil }
                guard let number = value.doubleValue, number.isFinite else {
                    throw .invalidConfig(path: path, problem: "\(key) must be a number, not \(value.kindName)")
                }
                return number
            }
            func flag(_ key: String) throws(LoRAError) -> Bool {
                guard let value = config[key], value != .null else { return false }
                guard let flag = value.boolValue else { throw .invalidConfig(path: path, problem: "\(key) must be true or false") }
                return flag
            }
            // PEFT's defaults for a config that leaves them out.
            if let r = try number("r") {
                guard r == r.rounded(), r >= 1, r <= Double(LoRAAdapter.maximumRank) else {
                    throw .invalidConfig(path: path, problem: "r must be a positive integer up to \(LoRAAdapter.maximumRank), not \(r)")
                }
                rank = Int(r)
            }
            alpha = try number("lora_alpha") ?? 8
            rsLoRA = try flag("use_rslora")
            doRA = try flag("use_dora")
            fanInFanOut = try flag("fan_in_fan_out")
            for key in ["use_qalora"] where try flag(key) {
                throw .unsupported(path: path, problem: "adapter_config.json: \(key) is set; qtool cannot merge such adapters")
            }
            for key in ["layer_replication", "target_parameters", "alora_invocation_tokens", "arrow_config", "trainable_token_indices"] {
                if let value = config[key], value != .null, value != .array([]), value != .object([]) {
                    throw .unsupported(path: path, problem: "adapter_config.json: \(key) is set; qtool cannot merge such adapters")
                }
            }
            rankPattern = try Self.patterns(config["rank_pattern"], key: "rank_pattern", path: path).map { entry throws(LoRAError) in
                guard entry.value == entry.value.rounded(), entry.value >= 1, entry.value <= Double(LoRAAdapter.maximumRank) else {
                    throw .invalidConfig(
                        path: path, problem: "rank_pattern '\(entry.key)' must be a positive integer up to \(LoRAAdapter.maximumRank)")
                }
                return (entry.key, entry.pattern, Int(entry.value))
            }
            alphaPattern = try Self.patterns(config["alpha_pattern"], key: "alpha_pattern", path: path)
        }

        /// Pattern keys as PEFT matches them: `re.match(rf"(.*\.)?({key})$", module_name)`, the
        /// first key in the config's order that matches.
        static func patterns(_ value: JSONValue?, key: String, path: String) throws(LoRAError)
            -> [(key: String, pattern: ModulePattern, value: Double)]
        {
            guard let value, value != .null else { return [] }
            guard let members = value.objectMembers else { throw .invalidConfig(path: path, problem: "\(key) must be an object") }
            var out: [(String, ModulePattern, Double)] = []
            for member in members {
                guard let number = member.value.doubleValue, number.isFinite else {
                    throw .invalidConfig(path: path, problem: "\(key) '\(member.key)' must be a number")
                }
                let pattern: ModulePattern
                do {
                    pattern = try ModulePattern(peftKey: member.key)
                } catch {
                    throw .invalidConfig(path: path, problem: "\(key) '\(member.key)': \(error.message)")
                }
                out.append((member.key, pattern, number))
            }
            return out
        }

        func rank(of module: String) -> Int {
            rankPattern.first { $0.pattern.matches(module) }?.value ?? rank
        }

        func alpha(of module: String) -> Double {
            alphaPattern.first { $0.pattern.matches(module) }?.value ?? alpha
        }

        /// PEFT's `scaling`: `lora_alpha / r`, or `lora_alpha / √r` with rsLoRA; nil when it is
        /// not a finite float32.
        func scale(of module: String) -> Float? {
            let r = Double(rank(of: module))
            let scale = Float(alpha(of: module) / (rsLoRA ? r.squareRoot() : r))
            return scale.isFinite ? scale : nil
        }
    }

    /// What a PEFT key stores.
    enum PEFTPart: Equatable {
        case a, b, biasB, magnitude, embeddingA, embeddingB
    }

    static let peftSuffixes: [(suffix: String, part: PEFTPart)] = [
        (".lora_A.weight", .a), (".lora_B.weight", .b), (".lora_B.bias", .biasB),
        (".lora_magnitude_vector.weight", .magnitude), (".lora_magnitude_vector", .magnitude),
        (".lora_embedding_A", .embeddingA), (".lora_embedding_B", .embeddingB),
    ]

    static func peftModules(_ tensors: NamedTensors, settings: PEFTSettings, path: String) throws(LoRAError)
        -> ([LoRAModule], [(name: String, tensor: Tensor)])
    {
        var order: [String] = []
        var parts: [String: [PEFTPart: (key: String, tensor: Tensor)]] = [:]
        var replacements: [(name: String, tensor: Tensor)] = []
        for (key, tensor) in tensors.entries {
            let name = key.hasPrefix(peftPrefix) ? String(key.dropFirst(peftPrefix.count)) : key
            if let match = peftSuffixes.first(where: { name.hasSuffix($0.suffix) }) {
                let module = String(name.dropLast(match.suffix.count))
                if parts[module] == nil { order.append(module) }
                parts[module, default: [:]][match.part] = (key, tensor)
            } else if name.contains("lora_") {
                throw .invalidTensor(
                    path: path, tensor: key, problem: "not a LoRA weight qtool knows (LoRA with a named adapter or another PEFT method?)")
            } else {
                // A whole tensor (modules_to_save, a trained bias, a saved embedding): it replaces
                // the base's. PEFT saves a wrapped layer's weight under `base_layer`.
                replacements.append((name.replacing(".base_layer.", with: "."), tensor))
            }
        }
        var modules: [LoRAModule] = []
        for module in order {
            let found = parts[module]!
            let isEmbedding = found[.embeddingA] != nil || found[.embeddingB] != nil
            guard let (keyA, a) = isEmbedding ? found[.embeddingA] : found[.a] else {
                throw .invalidTensor(path: path, tensor: found.values.first!.key, problem: "has no matching lora_A")
            }
            guard let (keyB, b) = isEmbedding ? found[.embeddingB] : found[.b] else {
                throw .invalidTensor(path: path, tensor: keyA, problem: "has no matching lora_B")
            }
            guard a.shape.rank == 2, b.shape.rank == 2 else {
                throw .unsupported(
                    path: path, problem: "module '\(module)': LoRA on convolution layers is not supported (factors of rank \(a.shape.rank))"
                )
            }
            try Self.checkFactorTypes(
                [(keyA, a), (keyB, b)] + (found[.magnitude].map { [$0] } ?? []) + (found[.biasB].map { [$0] } ?? []), path: path)
            let rank = a.shape.dimensions[0]
            guard b.shape.dimensions[1] == rank else {
                throw .invalidTensor(path: path, tensor: keyB, problem: "shape \(b.shape) does not pair with lora_A \(a.shape)")
            }
            guard rank == settings.rank(of: module) else {
                throw .invalidTensor(
                    path: path, tensor: keyA, problem: "rank \(rank), but adapter_config.json gives r = \(settings.rank(of: module))")
            }
            let magnitude = found[.magnitude]?.tensor
            if isEmbedding && magnitude != nil {
                throw .unsupported(path: path, problem: "module '\(module)': DoRA on embedding layers is not supported")
            }
            guard magnitude == nil || settings.doRA else {
                throw .invalidConfig(path: path, problem: "module '\(module)' has a DoRA magnitude but use_dora is false")
            }
            guard magnitude != nil || !settings.doRA || isEmbedding else {
                throw .invalidTensor(path: path, tensor: keyA, problem: "use_dora is true but the module has no lora_magnitude_vector")
            }
            let out = b.shape.dimensions[0]
            if let magnitude, magnitude.shape != Shape([out]) {
                throw .invalidTensor(
                    path: path, tensor: module + ".lora_magnitude_vector", problem: "shape \(magnitude.shape), expected [\(out)]")
            }
            let biasB = found[.biasB]?.tensor
            if let biasB, biasB.shape != Shape([out]) {
                throw .invalidTensor(path: path, tensor: module + ".lora_B.bias", problem: "shape \(biasB.shape), expected [\(out)]")
            }
            guard let scale = settings.scale(of: module) else {
                throw .invalidConfig(
                    path: path,
                    problem: "module '\(module)': lora_alpha / r = \(settings.alpha(of: module)) / \(rank) is not a finite float32 scale")
            }
            modules.append(
                LoRAModule(
                    name: module, orientation: isEmbedding || settings.fanInFanOut ? .inputsByOutputs : .outputsByInputs,
                    a: a, b: b, factorsTransposed: false, rank: rank, inFeatures: a.shape.dimensions[1], outFeatures: out,
                    scale: scale, magnitude: magnitude, biasB: biasB, isEmbedding: isEmbedding))
        }
        return (modules, replacements)
    }

    // MARK: mlx-lm

    /// mlx-lm's `adapter_config.json`: `fine_tune_type` and `lora_parameters.{rank, scale}`.
    struct MLXSettings {
        var scale: Float = 20  // mlx-lm's default
        var doRA = false

        init(_ config: JSONValue, path: String) throws(LoRAError) {
            if let type = config["fine_tune_type"], type != .null {
                guard let text = type.stringValue, ["lora", "dora", "full"].contains(text) else {
                    throw .invalidConfig(path: path, problem: "fine_tune_type must be lora, dora or full")
                }
                doRA = text == "dora"
            } else if config["use_dora"]?.boolValue == true {
                doRA = true
            }
            guard let parameters = config["lora_parameters"], parameters != .null else { return }
            guard parameters.objectMembers != nil else { throw .invalidConfig(path: path, problem: "lora_parameters must be an object") }
            if let value = parameters["scale"] {
                guard let scale = value.doubleValue, scale.isFinite else {
                    throw .invalidConfig(path: path, problem: "lora_parameters.scale must be a number, not \(value.kindName)")
                }
                guard Float(scale).isFinite else {
                    throw .invalidConfig(path: path, problem: "lora_parameters.scale \(scale) is beyond float32's range")
                }
                self.scale = Float(scale)
            }
        }
    }

    static func mlxModules(_ tensors: NamedTensors, settings: MLXSettings, path: String) throws(LoRAError)
        -> ([LoRAModule], [(name: String, tensor: Tensor)])
    {
        var modules: [LoRAModule] = []
        var replacements: [(name: String, tensor: Tensor)] = []
        let names = Set(tensors.names)
        for (key, tensor) in tensors.entries {
            if key.hasSuffix(".lora_b") || (key.hasSuffix(".m") && names.contains(String(key.dropLast(2)) + ".lora_a")) { continue }
            guard key.hasSuffix(".lora_a") else {
                replacements.append((key, tensor))
                continue
            }
            let module = String(key.dropLast(".lora_a".count))
            guard let b = tensors[module + ".lora_b"] else {
                throw .invalidTensor(path: path, tensor: key, problem: "has no matching lora_b")
            }
            let a = tensor
            try Self.checkFactorTypes(
                [(key, a), (module + ".lora_b", b)] + (tensors[module + ".m"].map { [(module + ".m", $0)] } ?? []), path: path)
            guard a.shape.rank == 2, b.shape.rank == 2, a.shape.dimensions[1] == b.shape.dimensions[0] else {
                throw .invalidTensor(
                    path: path, tensor: module + ".lora_b", problem: "shape \(b.shape) does not pair with lora_a \(a.shape)")
            }
            let magnitude = tensors[module + ".m"]
            guard magnitude == nil || settings.doRA else {
                throw .invalidConfig(path: path, problem: "module '\(module)' has a DoRA magnitude but fine_tune_type is not dora")
            }
            guard magnitude != nil || !settings.doRA else {
                throw .invalidTensor(path: path, tensor: key, problem: "fine_tune_type is dora but the module has no magnitude 'm'")
            }
            let out = b.shape.dimensions[1]
            if let magnitude, magnitude.shape != Shape([out]) {
                throw .invalidTensor(path: path, tensor: module + ".m", problem: "shape \(magnitude.shape), expected [\(out)]")
            }
            modules.append(
                LoRAModule(
                    name: module, orientation: .outputsByInputs, a: a, b: b, factorsTransposed: true, rank: a.shape.dimensions[1],
                    inFeatures: a.shape.dimensions[0], outFeatures: out, scale: settings.scale, magnitude: magnitude, biasB: nil,
                    isEmbedding: false))
        }
        return (modules, replacements)
    }

    /// LoRA factors, magnitudes and biases are real numbers qtool can widen to float32.
    static func checkFactorTypes(_ tensors: [(key: String, tensor: Tensor)], path: String) throws(LoRAError) {
        for (key, tensor) in tensors where !FloatConversion.decodable.contains(tensor.dtype) {
            throw .invalidTensor(
                path: path, tensor: key,
                problem: "is \(tensor.dtype.rawValue); LoRA factors must be floating point (F64, F32, F16, BF16 or F8)")
        }
    }
}
