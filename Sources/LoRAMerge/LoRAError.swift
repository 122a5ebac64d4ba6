import TensorCore

/// What can be wrong with an adapter, or with an adapter against a base. Every case names the
/// adapter folder (or base) and, where there is one, the module.
public enum LoRAError: FileError, Equatable {
    case missingFile(path: String, problem: String)
    /// A pickled `adapter_model.bin`: qtool never unpickles (loading a pickle runs code).
    case pickled(path: String)
    case invalidConfig(path: String, problem: String)
    case notLoRA(path: String, found: String)
    case unsupported(path: String, problem: String)
    case invalidTensor(path: String, tensor: String, problem: String)
    /// The adapter targets a module the base does not have.
    case moduleMissing(path: String, module: String)
    /// The adapter's factors do not fit the base's tensor (an adapter for another model).
    case shapeMismatch(path: String, module: String, problem: String)
    case invalidWeight(path: String, text: String)
    /// The merged tensor cannot be written as asked (its values, or its type).
    case cannotMerge(path: String, tensor: String, problem: String)

    public var path: String {
        switch self {
        case .missingFile(let path, _), .pickled(let path), .invalidConfig(let path, _), .notLoRA(let path, _),
            .unsupported(let path, _), .invalidTensor(let path, _, _), .moduleMissing(let path, _),
            .shapeMismatch(let path, _, _), .invalidWeight(let path, _), .cannotMerge(let path, _, _):
            path
        }
    }

    public var problem: String {
        switch self {
        case .missingFile(_, let problem): problem
        case .pickled:
            "holds only a pickled adapter_model.bin; qtool never unpickles (loading a pickle runs arbitrary code). "
                + "Save the adapter with safetensors (PEFT's default, save_pretrained(safe_serialization=True))"
        case .invalidConfig(_, let problem): "adapter_config.json: \(problem)"
        case .notLoRA(_, let found): "adapter_config.json: peft_type is \(found), not LORA; qtool merges LoRA adapters only"
        case .unsupported(_, let problem): problem
        case .invalidTensor(_, let tensor, let problem): "tensor '\(tensor)': \(problem)"
        case .moduleMissing(_, let module): "module '\(module)' is not in the base (an adapter for another model?)"
        case .shapeMismatch(_, let module, let problem): "module '\(module)': \(problem) (an adapter for another model?)"
        case .invalidWeight(_, let text): "adapter weight '\(text)' is not a number"
        case .cannotMerge(_, let tensor, let problem): "tensor '\(tensor)': \(problem)"
        }
    }
}
