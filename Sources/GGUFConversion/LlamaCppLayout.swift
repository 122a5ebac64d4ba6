import Foundation
import GGUFFormat
import LanguageModel
import TensorCore

/// How llama.cpp lays out the models qtool converts: the architecture names, tensor names and
/// the q/k row order of `convert_hf_to_gguf.py`.
public enum LlamaCppLayout {
    /// The GGUF architecture of a transformers `model_type` (Mistral is written as `llama`, as
    /// llama.cpp's converter does).
    public static func architecture(modelType: String) -> String? {
        switch modelType {
        case "llama", "mistral": "llama"
        case "qwen2": "qwen2"
        default: nil
        }
    }

    /// The transformers `model_type` and class of a GGUF architecture.
    public static func transformersModel(architecture: String) -> (modelType: String, className: String)? {
        switch architecture {
        case "llama": ("llama", "LlamaForCausalLM")
        case "qwen2": ("qwen2", "Qwen2ForCausalLM")
        default: nil
        }
    }

    static let layerNames: [(hf: String, gguf: String)] = [
        ("input_layernorm", "attn_norm"),
        ("self_attn.q_proj", "attn_q"),
        ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_output"),
        ("post_attention_layernorm", "ffn_norm"),
        ("mlp.gate_proj", "ffn_gate"),
        ("mlp.up_proj", "ffn_up"),
        ("mlp.down_proj", "ffn_down"),
    ]
    static let globalNames: [(hf: String, gguf: String)] = [
        ("model.embed_tokens", "token_embd"),
        ("model.norm", "output_norm"),
        ("lm_head", "output"),
    ]

    /// The GGUF name of a transformers tensor (`model.layers.3.self_attn.q_proj.weight` →
    /// `blk.3.attn_q.weight`); nil for a name llama.cpp has no tensor for.
    public static func ggufName(_ name: String) -> String? {
        for suffix in [".weight", ".bias"] where name.hasSuffix(suffix) {
            let stem = String(name.dropLast(suffix.count))
            if let global = globalNames.first(where: { $0.hf == stem }) { return global.gguf + suffix }
            let prefix = "model.layers."
            guard stem.hasPrefix(prefix) else { return nil }
            let rest = stem.dropFirst(prefix.count)
            guard let dot = rest.firstIndex(of: "."), let layer = Int(rest[..<dot]), String(layer) == rest[..<dot] else { return nil }
            let module = String(rest[rest.index(after: dot)...])
            guard let mapped = layerNames.first(where: { $0.hf == module }) else { return nil }
            return "blk.\(layer).\(mapped.gguf)\(suffix)"
        }
        return nil
    }

    /// The transformers name of a GGUF tensor; nil for one transformers has no tensor for
    /// (`rope_freqs`).
    public static func transformersName(_ name: String) -> String? {
        for suffix in [".weight", ".bias"] where name.hasSuffix(suffix) {
            let stem = String(name.dropLast(suffix.count))
            if let global = globalNames.first(where: { $0.gguf == stem }) { return global.hf + suffix }
            guard stem.hasPrefix("blk.") else { return nil }
            let rest = stem.dropFirst(4)
            guard let dot = rest.firstIndex(of: "."), let layer = Int(rest[..<dot]), String(layer) == rest[..<dot] else { return nil }
            let module = String(rest[rest.index(after: dot)...])
            guard let mapped = layerNames.first(where: { $0.gguf == module }) else { return nil }
            return "model.layers.\(layer).\(mapped.hf)\(suffix)"
        }
        return nil
    }

    /// Whether llama.cpp permutes this tensor's rows for `architecture` (q and k of `llama`,
    /// weights and biases), and with how many heads (`heads` for q, `kvHeads` for k).
    public static func permutedHeads(transformersName name: String, architecture: String, heads: Int, kvHeads: Int) -> Int? {
        guard architecture == "llama" else { return nil }
        if name.hasSuffix("self_attn.q_proj.weight") || name.hasSuffix("self_attn.q_proj.bias") { return heads }
        if name.hasSuffix("self_attn.k_proj.weight") || name.hasSuffix("self_attn.k_proj.bias") { return kvHeads }
        return nil
    }

    /// convert_hf_to_gguf's `permute`: within each head, rows `[first half; second half]` become
    /// interleaved pairs (`reshape(heads, 2, d/2, …).swapaxes(1, 2)`). Output row r takes the
    /// returned source row.
    public static func permutedRows(rows: Int, heads: Int) -> [Int]? {
        guard heads > 0, rows % (2 * heads) == 0 else { return nil }
        let headRows = rows / heads
        let half = headRows / 2
        var order = [Int](repeating: 0, count: rows)
        for head in 0..<heads {
            for i in 0..<half {
                for j in 0..<2 { order[head * headRows + 2 * i + j] = head * headRows + j * half + i }
            }
        }
        return order
    }

    /// The inverse of `permutedRows`: back from llama.cpp's order to transformers'.
    public static func unpermutedRows(rows: Int, heads: Int) -> [Int]? {
        guard let order = permutedRows(rows: rows, heads: heads) else { return nil }
        var inverse = [Int](repeating: 0, count: rows)
        for (output, source) in order.enumerated() { inverse[source] = output }
        return inverse
    }

    /// convert_hf_to_gguf's `rope_freqs` for Llama 3 rope scaling: the factor dividing each
    /// rotation frequency, computed as it does, in float32 tensor arithmetic.
    public static func llama3RopeFactors(config: ModelConfig) -> [Float]? {
        guard case .llama3(let factor, let low, let high, let original) = config.ropeScaling else { return nil }
        let base = Float(config.ropeTheta)
        let dim = config.headDim
        let lowWavelength = Float(Double(original) / low)
        let highWavelength = Float(Double(original) / high)
        return stride(from: 0, to: dim, by: 2).map { i -> Float in
            let frequency = 1 / powf(base, Float(i) / Float(dim))
            let wavelength = Float(2 * Double.pi) / frequency
            if wavelength < highWavelength { return 1 }
            if wavelength > lowWavelength { return Float(factor) }
            let smooth = (Float(original) / wavelength - Float(low)) / Float(high - low)
            return 1 / ((1 - smooth) / Float(factor) + smooth)
        }
    }
}
