import TensorCore

/// One adapter's contribution to one base tensor.
public struct MergeTerm: Sendable {
    /// Position of the adapter on the command line.
    public let adapterIndex: Int
    public let module: LoRAModule
    /// The user's weight for the adapter (`--adapter DIR=WEIGHT`).
    public let weight: Float

    /// The factor applied to `B·A` (or to `lora_B.bias`).
    public var scale: Float { module.scale * weight }
}

/// How one base tensor changes: first replaced (when an adapter stores it whole), then the terms
/// applied in adapter order.
public struct TensorMerge: Sendable {
    /// The last adapter that stores the tensor whole, and its copy.
    public var replacement: (adapterIndex: Int, tensor: Tensor)?
    /// Weight deltas (for a weight) or `lora_B.bias` terms (for a bias).
    public var terms: [MergeTerm] = []
    /// Whether the tensor is a bias and `terms` add `scale · lora_B.bias`.
    public var isBias = false
    /// The folder of the last adapter that changes the tensor (errors name it).
    public var adapterPath = ""
}

/// Which base tensors the adapters change and how, checked against the base's names and shapes
/// before anything is written.
public struct MergePlan: Sendable {
    /// Base tensor name → its merge; tensors not listed are unchanged.
    public let changes: [String: TensorMerge]

    /// Matches `adapters` (applied in order, each delta times its weight) to a base described by
    /// its tensors' names, float types and shapes.
    public init(adapters: [(adapter: LoRAAdapter, weight: Float)], base: [(name: String, dtype: DType, shape: Shape)]) throws(LoRAError) {
        let shapes = Dictionary(base.map { ($0.name, $0.shape) }, uniquingKeysWith: { first, _ in first })
        let dtypes = Dictionary(base.map { ($0.name, $0.dtype) }, uniquingKeysWith: { first, _ in first })
        let resolver = NameResolver(names: base.map(\.name))
        var changes: [String: TensorMerge] = [:]
        for (index, (adapter, weight)) in adapters.enumerated() {
            for (name, tensor) in adapter.replacements {
                guard let target = resolver.resolve(name) else {
                    throw .moduleMissing(path: adapter.path, module: name)
                }
                guard shapes[target] == tensor.shape else {
                    throw .shapeMismatch(
                        path: adapter.path, module: name, problem: "stores \(tensor.shape), the base has \(shapes[target]!)")
                }
                // A whole tensor overwrites what earlier adapters added to it, as loading it does.
                changes[target] = TensorMerge(replacement: (index, tensor), adapterPath: adapter.path)
            }
            for module in adapter.modules {
                guard let target = resolver.resolve(module.weightName) else {
                    throw .moduleMissing(path: adapter.path, module: module.name)
                }
                let shape = shapes[target]!
                let expected =
                    module.orientation == .outputsByInputs
                    ? [module.outFeatures, module.inFeatures] : [module.inFeatures, module.outFeatures]
                guard shape.dimensions == expected else {
                    throw .shapeMismatch(
                        path: adapter.path, module: module.name,
                        problem: "its delta is \(Shape(expected)) but the base's '\(target)' is \(shape)")
                }
                guard let dtype = dtypes[target], FloatConversion.decodable.contains(dtype) else {
                    throw .shapeMismatch(
                        path: adapter.path, module: module.name,
                        problem:
                            "the base's '\(target)' is \(dtypes[target]!.rawValue), not a float type qtool can merge into (F64, F32, F16, BF16, F8)"
                    )
                }
                let term = MergeTerm(adapterIndex: index, module: module, weight: weight)
                guard term.scale.isFinite else {
                    throw .invalidConfig(
                        path: adapter.path,
                        problem: "module '\(module.name)': scale \(module.scale) times weight \(weight) overflows float32")
                }
                changes[target, default: TensorMerge()].terms.append(term)
                changes[target]!.adapterPath = adapter.path
                guard module.biasB != nil else { continue }
                let biasName = String(target.dropLast(".weight".count)) + ".bias"
                guard shapes[biasName] == Shape([module.outFeatures]) else {
                    throw .shapeMismatch(
                        path: adapter.path, module: module.name,
                        problem: "it has lora_B.bias but the base has no bias [\(module.outFeatures)]")
                }
                guard let biasType = dtypes[biasName], FloatConversion.decodable.contains(biasType) else {
                    throw .shapeMismatch(path: adapter.path, module: module.name, problem: "the base's '\(biasName)' is not a float tensor")
                }
                var merge = changes[biasName, default: TensorMerge()]
                merge.isBias = true
                merge.terms.append(term)
                merge.adapterPath = adapter.path
                changes[biasName] = merge
            }
        }
        self.changes = changes
    }
}

/// Finds the base tensor an adapter names: the same name, or else the one name that differs only
/// by leading module names (an adapter trained on `LlamaForCausalLM` against a `LlamaModel`
/// checkpoint, or a model nested in a larger one).
struct NameResolver {
    let names: Set<String>
    let ordered: [String]

    init(names: [String]) {
        self.names = Set(names)
        ordered = names
    }

    func resolve(_ name: String) -> String? {
        if names.contains(name) { return name }
        let candidates = ordered.filter { $0.hasSuffix("." + name) || name.hasSuffix("." + $0) }
        return candidates.count == 1 ? candidates[0] : nil
    }
}
