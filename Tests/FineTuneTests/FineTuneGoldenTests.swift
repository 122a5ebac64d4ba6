import FineTune
import Foundation
import LanguageModel
import LoRAMerge
import Quantization
import SafetensorsFormat
import TensorCore
import Testing
import TestSupport

/// LoRA gradients and one AdamW step against PyTorch autograd + PEFT (+ bitsandbytes), on the
/// goldens of fixtures/generate/finetune_goldens.py.
struct FineTuneGoldenTests {
    static let goldens: JSONValue = try! JSONParser.parse(
        String(decoding: Fixtures.bytes(Fixtures.path("finetune/goldens/goldens.json")), as: UTF8.self))

    static func model(_ name: String, threads: Int = 2) throws -> LanguageModel {
        let folder = Fixtures.path("models/" + name)
        let config = try ModelConfig(json: Fixtures.bytes(folder + "/config.json"), path: folder)
        let tensors = try SafeTensorsModel(path: folder).tensors()
        let stored = Dictionary(
            try BitsandbytesLayout.storedTensors(tensors).map { ($0.name, $0.tensor) }, uniquingKeysWith: { _, last in last })
        return try LanguageModel(config: config, tensors: stored, path: folder, threads: threads)
    }

    static func adapter(_ path: String) throws -> LoRAAdapter {
        let json = try JSONParser.parse(String(decoding: Fixtures.bytes(path + "/adapter_config.json"), as: UTF8.self))
        let weights = try SafeTensorsFile(path: path + "/adapter_model.safetensors").tensors()
        return try LoRAAdapter(path: path, config: json, tensors: weights, layout: .peft)
    }

    static func floats(_ file: String) throws -> [String: [Float]] {
        let tensors = try SafeTensorsFile(path: Fixtures.path("finetune/goldens/" + file)).tensors()
        return Dictionary(uniqueKeysWithValues: tensors.entries.map { ($0.name, LoRAModule.floats($0.tensor)) })
    }

    /// The batch of a gradient case: its ids, the first target of each from its mask (the mask
    /// must be 0 then 1 to the end, as the data rules make it).
    static func batch(_ entry: JSONValue) -> [TrainingSequence] {
        let ids = entry["ids"]!.arrayValues!.map { $0.arrayValues!.map { $0.integerValue! } }
        let masks = entry["target_mask"]!.arrayValues!.map { $0.arrayValues!.map { $0.integerValue! } }
        return zip(ids, masks).map { ids, mask in
            let first = mask.firstIndex(of: 1) ?? ids.count
            #expect(mask[first...].allSatisfy { $0 == 1 } && mask[..<first].allSatisfy { $0 == 0 })
            return TrainingSequence(tokens: ids, firstTarget: first)
        }
    }

    /// The largest difference as a share of the reference tensor's largest magnitude.
    static func relativeError(_ actual: [Float], _ expected: [Float]) -> Double {
        let scale = Double(expected.map { abs($0) }.max() ?? 0)
        let worst = zip(actual, expected).map { abs(Double($0) - Double($1)) }.max() ?? 0
        return worst / max(scale, 1e-30)
    }

    static func training(for entry: JSONValue) throws -> LoRATraining {
        let base = try model(entry["base"]!.stringValue!)
        let modules = try base.loRAModules(from: try adapter(Fixtures.path("models/" + entry["adapter"]!.stringValue!)))
        let training = LoRATraining(model: base, modules: modules, dropout: 0, checkpointing: false)
        training.beginStep()
        return training
    }

    static let gradientCases = goldens["grad"]!.objectMembers!.map(\.key)

    @Test func everyCaseIsThere() {
        #expect(Set(Self.gradientCases) == ["f32-lora", "nf4-lora", "f32-rslora", "f32-dora", "f32-lora-completion"])
    }

    @Test(arguments: gradientCases)
    func gradientsMatchPyTorch(_ name: String) throws {
        let entry = Self.goldens["grad"]![name]!
        let training = try Self.training(for: entry)
        let batch = Self.batch(entry)
        let targets = batch.reduce(0) { $0 + $1.targetCount }
        #expect(targets == entry["targets"]!.integerValue!)
        training.zeroGradients()
        let (nll, counted) = training.accumulateGradients(batch, normaliser: Double(targets), stream: 0)
        #expect(counted == targets)
        let loss = entry["loss"]!.doubleValue!
        #expect(abs(nll / Double(targets) - loss) <= 1e-5 * loss, "loss \(nll / Double(targets)) vs \(loss)")
        let expected = try Self.floats(entry["golden"]!.stringValue!)
        #expect(expected.count == training.parameters.count)
        var worst = 0.0
        for tensor in training.parameters {
            guard let reference = expected[tensor.name] else {
                Issue.record("no golden for \(tensor.name)")
                continue
            }
            let error = Self.relativeError(tensor.gradient, reference)
            worst = max(worst, error)
            #expect(error <= 1e-4, "\(name): \(tensor.name) differs by \(error) of its largest value")
        }
        let norm = clipGradientNorm(training.parameters, maxNorm: 0)
        #expect(abs(norm - entry["grad_norm"]!.doubleValue!) <= 1e-4 * norm)
    }

    /// One clipped AdamW step from the f32-lora gradients: the update is ±lr where the gradient is
    /// clear of zero, so the comparison is against lr (the gradients agree to 1e-4 of their scale).
    @Test func oneAdamWStepMatchesTorch() throws {
        let step = Self.goldens["adamw_step"]!
        let entry = Self.goldens["grad"]![step["from_case"]!.stringValue!]!
        let training = try Self.training(for: entry)
        let batch = Self.batch(entry)
        let targets = batch.reduce(0) { $0 + $1.targetCount }
        training.zeroGradients()
        _ = training.accumulateGradients(batch, normaliser: Double(targets), stream: 0)
        let betas = step["betas"]!.arrayValues!.map { $0.doubleValue! }
        let norm = clipGradientNorm(training.parameters, maxNorm: step["max_grad_norm"]!.doubleValue!)
        #expect(abs(norm - step["total_norm"]!.doubleValue!) <= 1e-4 * norm)
        var optimizer = AdamW(
            parameters: training.parameters, beta1: betas[0], beta2: betas[1], eps: step["eps"]!.doubleValue!,
            weightDecay: step["weight_decay"]!.doubleValue!)
        let lr = step["lr"]!.doubleValue!
        optimizer.update(training.parameters, lr: lr)
        let expected = try Self.floats(step["golden"]!.stringValue!)
        var differing = 0, total = 0
        for tensor in training.parameters {
            let reference = expected[tensor.name]!
            for (a, b) in zip(tensor.values, reference) {
                total += 1
                // Where the gradient is within its error of zero the sign of the step may differ.
                if abs(Double(a) - Double(b)) > 1e-3 * lr { differing += 1 }
                #expect(abs(Double(a) - Double(b)) <= 2 * lr + 1e-7)
            }
        }
        #expect(Double(differing) <= 0.001 * Double(total), "\(differing) of \(total) values differ by more than 1e-3·lr")
    }

    /// transformers' schedules at the steps the golden run logged.
    @Test(arguments: ["run-f32", "run-nf4"])
    func scheduleMatchesTransformers(_ run: String) throws {
        let settings = Self.goldens["run"]!
        let schedule = LearningRateSchedule(rawValue: settings["schedule"]!.stringValue!)!
        let lr = settings["lr"]!.doubleValue!
        for line in Self.goldens[run]!["log"]!.arrayValues! {
            let step = line["step"]!.integerValue! - 1
            let factor = schedule.factor(
                step: step, warmup: settings["warmup_steps"]!.integerValue!, total: settings["steps"]!.integerValue!)
            #expect(abs(lr * factor - line["lr"]!.doubleValue!) <= 1e-12)
        }
    }

    @Test func dataOrderCoversEveryEpochOnce() {
        let order = DataOrder(count: 7, batchSize: 2, gradAccum: 3, shuffle: true, seed: 5)
        #expect(order.microBatchesPerEpoch == 4 && order.stepsPerEpoch == 2)
        for epoch in 0..<3 {
            let seen = (0..<2).flatMap { order.microBatches(step: epoch * 2 + $0).flatMap { $0 } }
            #expect(seen.sorted() == Array(0..<7))
            #expect(seen == order.order(epoch: epoch))
        }
        #expect(order.order(epoch: 0) != order.order(epoch: 1))
        #expect(DataOrder(count: 7, batchSize: 2, gradAccum: 3, shuffle: false, seed: 5).microBatches(step: 1) == [[6]])
    }
}
