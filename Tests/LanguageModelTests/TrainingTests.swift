import Foundation
import LanguageModel
import LoRAMerge
import Quantization
import SafetensorsFormat
import TensorCore
import Testing
import TestSupport

/// The LoRA backward pass: against finite differences of its own loss, and its invariants (thread
/// count, gradient checkpointing).
struct TrainingGradientTests {
    static func adapter(_ name: String) throws -> LoRAAdapter {
        let path = Fixtures.path("models/" + name)
        let json = try JSONParser.parse(String(decoding: Fixtures.bytes(path + "/adapter_config.json"), as: UTF8.self))
        let weights = try SafeTensorsFile(path: path + "/adapter_model.safetensors").tensors()
        return try LoRAAdapter(path: path, config: json, tensors: weights, layout: .peft)
    }

    static func training(
        model: String = "llama-gqa", adapter name: String = "llama-gqa-lora", threads: Int = 2, dropout: Float = 0,
        checkpointing: Bool = false
    ) throws -> LoRATraining {
        let base = try ModelGoldenTests.load(model: model, adapter: nil, threads: threads)
        let modules = try base.loRAModules(from: try adapter(name))
        let training = LoRATraining(model: base, modules: modules, dropout: dropout, checkpointing: checkpointing)
        training.dropoutSeed = 7
        training.beginStep()
        return training
    }

    /// Two sequences of different lengths, the second scored from its fourth token.
    static let batch = [
        TrainingSequence(tokens: [1, 17, 300, 45, 9, 211, 77, 5, 402, 33, 88], firstTarget: 0),
        TrainingSequence(tokens: [1, 260, 12, 97, 140, 3, 51], firstTarget: 3),
    ]

    static func gradients(_ training: LoRATraining, stream: UInt64 = 0) -> [String: [Float]] {
        training.zeroGradients()
        let targets = batch.reduce(0) { $0 + $1.targetCount }
        _ = training.accumulateGradients(batch, normaliser: Double(targets), stream: stream)
        return Dictionary(uniqueKeysWithValues: training.parameters.map { ($0.name, $0.gradient) })
    }

    /// The loss as the training pass sees it (with the same dropout masks), without gradients.
    static func loss(_ training: LoRATraining, stream: UInt64 = 0) -> Double {
        let targets = batch.reduce(0) { $0 + $1.targetCount }
        let (nll, _) = training.accumulateGradients(batch, normaliser: Double(targets), stream: stream)
        return nll / Double(targets)
    }

    /// Central differences on the coordinates with the largest gradients of several tensors. In
    /// float32 a loss near 6 is known to ~1e-6, so h is large and the check is on the leading digits.
    /// DoRA's row norms stay those of the unperturbed A and B: PEFT treats them as constants.
    @Test(arguments: ["llama-gqa-lora", "llama-gqa-rslora", "llama-gqa-dora"])
    func gradientsMatchFiniteDifferences(_ adapterName: String) throws {
        let training = try Self.training(adapter: adapterName)
        let analytic = Self.gradients(training)
        var checked = 0
        for tensor in training.parameters
        where tensor.name.contains("layers.0.self_attn.q_proj") || tensor.name.contains("layers.1.mlp.down_proj")
            || tensor.name.contains("layers.0.self_attn.v_proj") || tensor.name.contains("layers.1.mlp.gate_proj")
        {
            let g = analytic[tensor.name]!
            let index = g.indices.max { abs(g[$0]) < abs(g[$1]) }!
            let h: Float = 2e-2 * max(0.05, abs(tensor.values[index]))
            let original = tensor.values[index]
            tensor.values[index] = original + h
            let plus = Self.loss(training)
            tensor.values[index] = original - h
            let minus = Self.loss(training)
            tensor.values[index] = original
            let numeric = (plus - minus) / Double(2 * h)
            let error = abs(numeric - Double(g[index]))
            #expect(error <= 0.02 * abs(Double(g[index])) + 2e-4, "\(tensor.name)[\(index)]: analytic \(g[index]), numeric \(numeric)")
            checked += 1
        }
        #expect(checked >= 4)
    }

    @Test func dropoutGradientsMatchFiniteDifferences() throws {
        let training = try Self.training(dropout: 0.25)
        let analytic = Self.gradients(training, stream: 3)
        for tensor in training.parameters
        where tensor.name.contains("layers.1.self_attn.k_proj") || tensor.name.contains("layers.0.mlp.up_proj") {
            let g = analytic[tensor.name]!
            let index = g.indices.max { abs(g[$0]) < abs(g[$1]) }!
            let h: Float = 2e-2 * max(0.05, abs(tensor.values[index]))
            let original = tensor.values[index]
            tensor.values[index] = original + h
            let plus = Self.loss(training, stream: 3)
            tensor.values[index] = original - h
            let minus = Self.loss(training, stream: 3)
            tensor.values[index] = original
            let numeric = (plus - minus) / Double(2 * h)
            #expect(abs(numeric - Double(g[index])) <= 0.02 * abs(Double(g[index])) + 2e-4, "\(tensor.name): \(g[index]) vs \(numeric)")
        }
        // Another stream draws other masks.
        #expect(Self.gradients(training, stream: 4) != analytic)
    }

    @Test func threadCountAndCheckpointingDoNotChangeABit() throws {
        let reference = Self.gradients(try Self.training(threads: 2))
        #expect(Self.gradients(try Self.training(threads: 1)) == reference)
        #expect(Self.gradients(try Self.training(threads: 2, checkpointing: true)) == reference)
        let dora = Self.gradients(try Self.training(adapter: "llama-gqa-dora", threads: 2, dropout: 0.1))
        #expect(Self.gradients(try Self.training(adapter: "llama-gqa-dora", threads: 1, dropout: 0.1, checkpointing: true)) == dora)
    }
}
