import Foundation
import LoRAMerge
import TensorCore

/// The linear layers of a decoder block LoRA can train, by the names PEFT targets them with.
public enum LoRATarget: Int, CaseIterable, Sendable, Comparable {
    case q, k, v, o, gate, up, down

    public var name: String { ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"][rawValue] }

    public init?(name: String) {
        guard let target = LoRATarget.allCases.first(where: { $0.name == name }) else { return nil }
        self = target
    }

    /// The module's name in the model, as transformers names it.
    public func moduleName(layer: Int) -> String {
        "model.layers.\(layer)." + (rawValue < 4 ? "self_attn." : "mlp.") + name
    }

    /// The layer and target of a module name (`model.layers.3.mlp.up_proj`), nil for any other.
    public static func parse(_ module: String) -> (layer: Int, target: LoRATarget)? {
        let parts = module.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 5, parts[0] == "model", parts[1] == "layers", let layer = Int(parts[2]), layer >= 0,
            String(parts[2]) == String(layer), let target = LoRATarget(name: String(parts[4])),
            parts[3] == (target.rawValue < 4 ? "self_attn" : "mlp")
        else { return nil }
        return (layer, target)
    }

    public static func < (a: LoRATarget, b: LoRATarget) -> Bool { a.rawValue < b.rawValue }
}

/// A trainable tensor: its values, the gradient accumulated for them, and its name in PEFT's
/// adapter_model.safetensors.
public final class ParameterTensor: @unchecked Sendable {
    public let name: String
    public let shape: [Int]
    public var values: [Float]
    public var gradient: [Float]

    init(name: String, shape: [Int], values: [Float]) {
        precondition(values.count == shape.reduce(1, *))
        self.name = name
        self.shape = shape
        self.values = values
        gradient = [Float](repeating: 0, count: values.count)
    }
}

/// One LoRA module being trained: `y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ` on a frozen `W` (DoRA: the rows then
/// rescaled by `m / ‖W + s·B·A‖`, the norm taken as a constant, as PEFT does).
public final class LoRAParameters: @unchecked Sendable {
    public let layer: Int
    public let target: LoRATarget
    public let rank: Int
    public let inFeatures: Int
    public let outFeatures: Int
    public let scale: Float
    /// `[rank, in]`, `[out, rank]`, and DoRA's `[out]`.
    public let a: ParameterTensor
    public let b: ParameterTensor
    public let magnitude: ParameterTensor?
    /// DoRA's `‖W + s·B·A‖` per row, for the current A and B (`LoRATraining.beginStep`).
    var rowNorms: [Float] = []

    public var moduleName: String { target.moduleName(layer: layer) }
    public var tensors: [ParameterTensor] { [a, b] + (magnitude.map { [$0] } ?? []) }

    public init(
        layer: Int, target: LoRATarget, rank: Int, inFeatures: Int, outFeatures: Int, scale: Float, a: [Float], b: [Float],
        magnitude: [Float]?
    ) {
        self.layer = layer
        self.target = target
        self.rank = rank
        self.inFeatures = inFeatures
        self.outFeatures = outFeatures
        self.scale = scale
        let prefix = "base_model.model." + target.moduleName(layer: layer)
        self.a = ParameterTensor(name: prefix + ".lora_A.weight", shape: [rank, inFeatures], values: a)
        self.b = ParameterTensor(name: prefix + ".lora_B.weight", shape: [outFeatures, rank], values: b)
        self.magnitude = magnitude.map { ParameterTensor(name: prefix + ".lora_magnitude_vector", shape: [outFeatures], values: $0) }
    }
}

/// How new LoRA modules are made: PEFT's LoraConfig fields that `qtool finetune` sets.
public struct LoRASettings: Sendable, Equatable {
    public var rank: Int
    public var alpha: Double
    public var rsLoRA: Bool
    public var doRA: Bool
    public var targets: [LoRATarget]

    public init(rank: Int, alpha: Double, rsLoRA: Bool, doRA: Bool, targets: [LoRATarget]) {
        self.rank = rank
        self.alpha = alpha
        self.rsLoRA = rsLoRA
        self.doRA = doRA
        self.targets = targets
    }

    /// PEFT's `scaling`: `alpha / r`, or `alpha / √r` with rsLoRA.
    public var scale: Float { Float(alpha / (rsLoRA ? Double(rank).squareRoot() : Double(rank))) }
}

extension LanguageModel {
    /// The frozen linear layer a target names.
    func linear(layer: Int, target: LoRATarget) -> Linear {
        let l = layers[layer]
        switch target {
        case .q: return l.q
        case .k: return l.k
        case .v: return l.v
        case .o: return l.o
        case .gate: return l.gate
        case .up: return l.up
        case .down: return l.down
        }
    }

    /// New modules initialised as PEFT does (`init_lora_weights=True`): A from Kaiming-uniform
    /// with a = √5 (uniform in ±1/√in), B zero, DoRA's magnitude the rows' norms of W. The
    /// uniform draws come from `seed` (SplitMix64, a stream per module), not torch's generator.
    public func newLoRAModules(_ settings: LoRASettings, seed: UInt64) -> [LoRAParameters] {
        var modules: [LoRAParameters] = []
        for layer in 0..<config.layers {
            for target in settings.targets.sorted() {
                let linear = linear(layer: layer, target: target)
                let inputs = linear.inFeatures, outputs = linear.outFeatures
                var random = SplitMix64(seed: seed ^ (UInt64(layer) &* 0x9E37_79B9_7F4A_7C15) ^ (UInt64(target.rawValue + 1) << 56))
                let bound = 1 / Float(inputs).squareRoot()
                let a = (0..<(settings.rank * inputs)).map { _ in (random.nextUnit() * 2 - 1) * bound }
                let magnitude =
                    settings.doRA ? Linear.rowNorms(weight: linear.weight, terms: [], threads: threads) : nil
                modules.append(
                    LoRAParameters(
                        layer: layer, target: target, rank: settings.rank, inFeatures: inputs, outFeatures: outputs,
                        scale: settings.scale, a: a, b: [Float](repeating: 0, count: outputs * settings.rank), magnitude: magnitude))
            }
        }
        return modules
    }

    /// The modules of an existing PEFT adapter, to train further. Every module must be a plain
    /// linear LoRA on one of the blocks' linear layers of this model.
    public func loRAModules(from adapter: LoRAAdapter) throws(ModelError) -> [LoRAParameters] {
        guard adapter.replacements.isEmpty else {
            throw ModelError(
                path: adapter.path,
                "the adapter replaces '\(adapter.replacements[0].name)' (modules_to_save or a trained bias); qtool trains LoRA modules only"
            )
        }
        var modules: [LoRAParameters] = []
        var seen = Set<String>()
        for module in adapter.modules {
            guard let (layer, target) = LoRATarget.parse(module.name), layer < config.layers else {
                throw ModelError(path: adapter.path, "module '\(module.name)' is not a linear layer of this model's blocks")
            }
            guard module.orientation == .outputsByInputs, !module.isEmbedding, module.biasB == nil else {
                throw ModelError(path: adapter.path, "module '\(module.name)' is not a plain linear LoRA")
            }
            let linear = linear(layer: layer, target: target)
            guard module.inFeatures == linear.inFeatures, module.outFeatures == linear.outFeatures else {
                throw ModelError(
                    path: adapter.path,
                    "module '\(module.name)' is [\(module.outFeatures), \(module.inFeatures)]; the model's layer is [\(linear.outFeatures), \(linear.inFeatures)]"
                )
            }
            guard seen.insert(module.name).inserted else { throw ModelError(path: adapter.path, "module '\(module.name)' appears twice") }
            let (a, b) = module.peftFactors()
            modules.append(
                LoRAParameters(
                    layer: layer, target: target, rank: module.rank, inFeatures: module.inFeatures, outFeatures: module.outFeatures,
                    scale: module.scale, a: a, b: b, magnitude: module.magnitude.map { LoRAModule.floats($0) }))
        }
        return modules.sorted { ($0.layer, $0.target) < ($1.layer, $1.target) }
    }
}

/// SplitMix64: a small generator whose whole state is one number (shuffles, initial weights,
/// dropout masks), the same on every machine.
public struct SplitMix64: Sendable {
    public var state: UInt64
    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        return SplitMix64.mix(state)
    }

    /// A float in [0, 1) with 24 random bits.
    public mutating func nextUnit() -> Float { Float(next() >> 40) * 0x1p-24 }

    /// A number in `0..<bound`, without modulo bias.
    public mutating func next(below bound: Int) -> Int {
        precondition(bound > 0)
        let limit = UInt64.max - UInt64.max % UInt64(bound)
        while true {
            let value = next()
            if value < limit { return Int(value % UInt64(bound)) }
        }
    }

    /// The finaliser alone: a hash of one 64-bit number (counter-based randomness).
    @inlinable public static func mix(_ value: UInt64) -> UInt64 {
        var z = value
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
