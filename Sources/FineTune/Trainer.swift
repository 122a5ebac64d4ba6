import Foundation
import LanguageModel
import SafetensorsFormat
import TensorCore

/// What decides a training run's result, besides the model, the data and the initial adapter.
public struct TrainerSettings: Sendable, Equatable {
    public var lr: Double
    public var weightDecay: Double
    public var beta1: Double
    public var beta2: Double
    public var eps: Double
    public var maxGradNorm: Double
    public var schedule: LearningRateSchedule
    public var warmupSteps: Int
    public var batchSize: Int
    public var gradAccum: Int
    public var totalSteps: Int
    public var shuffle: Bool
    public var seed: UInt64

    public init(
        lr: Double, weightDecay: Double, beta1: Double, beta2: Double, eps: Double, maxGradNorm: Double, schedule: LearningRateSchedule,
        warmupSteps: Int, batchSize: Int, gradAccum: Int, totalSteps: Int, shuffle: Bool, seed: UInt64
    ) {
        self.lr = lr
        self.weightDecay = weightDecay
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.maxGradNorm = maxGradNorm
        self.schedule = schedule
        self.warmupSteps = warmupSteps
        self.batchSize = batchSize
        self.gradAccum = gradAccum
        self.totalSteps = totalSteps
        self.shuffle = shuffle
        self.seed = seed
    }

    /// The settings as named in a checkpoint's record (and as the command line spells them).
    public var members: [JSONMember] {
        [
            JSONMember(key: "lr", value: .double(lr)), JSONMember(key: "weight_decay", value: .double(weightDecay)),
            JSONMember(key: "beta1", value: .double(beta1)), JSONMember(key: "beta2", value: .double(beta2)),
            JSONMember(key: "eps", value: .double(eps)), JSONMember(key: "max_grad_norm", value: .double(maxGradNorm)),
            JSONMember(key: "schedule", value: .string(schedule.rawValue)), JSONMember(key: "warmup_steps", value: .integer(warmupSteps)),
            JSONMember(key: "batch_size", value: .integer(batchSize)), JSONMember(key: "grad_accum", value: .integer(gradAccum)),
            JSONMember(key: "steps", value: .integer(totalSteps)), JSONMember(key: "shuffle", value: .bool(shuffle)),
            JSONMember(key: "seed", value: .string(String(seed))),
        ]
    }
}

/// What one optimizer step did.
public struct StepRecord: Sendable {
    public let step: Int
    public let loss: Double
    public let lr: Double
    public let gradNorm: Double
    /// Input tokens of its micro-batches (padding aside) and the targets among them.
    public let tokens: Int
    public let targets: Int
    public let seconds: Double
    public var evalLoss: Double?

    /// Its line of training_log.jsonl.
    public var logLine: JSONValue {
        var members = [
            JSONMember(key: "step", value: .integer(step)), JSONMember(key: "loss", value: .double(loss)),
            JSONMember(key: "lr", value: .double(lr)), JSONMember(key: "grad_norm", value: .double(gradNorm)),
            JSONMember(key: "tokens_per_second", value: .double((Double(tokens) / max(seconds, 1e-9) * 10).rounded() / 10)),
        ]
        if let evalLoss { members.append(JSONMember(key: "eval_loss", value: .double(evalLoss))) }
        return .object(members)
    }
}

/// The training loop over a `LoRATraining`: micro-batches in `DataOrder`, the loss of a step as
/// the total NLL of its targets over their count, clipping, AdamW and the schedule.
public final class Trainer {
    public let training: LoRATraining
    public let sequences: [TrainingSequence]
    public let settings: TrainerSettings
    public let order: DataOrder
    public private(set) var optimizer: AdamW
    /// Steps done.
    public private(set) var step = 0
    /// training_log.jsonl so far, a line per step.
    public private(set) var logLines: [String] = []

    public init(training: LoRATraining, sequences: [TrainingSequence], settings: TrainerSettings) {
        precondition(!sequences.isEmpty)
        self.training = training
        self.sequences = sequences
        self.settings = settings
        order = DataOrder(
            count: sequences.count, batchSize: settings.batchSize, gradAccum: settings.gradAccum, shuffle: settings.shuffle,
            seed: settings.seed)
        optimizer = AdamW(
            parameters: training.parameters, beta1: settings.beta1, beta2: settings.beta2, eps: settings.eps,
            weightDecay: settings.weightDecay)
        training.dropoutSeed = settings.seed
        training.beginStep()
    }

    /// The learning rate step `step` (from 0) uses.
    public func learningRate(step: Int) -> Double {
        settings.lr * settings.schedule.factor(step: step, warmup: settings.warmupSteps, total: settings.totalSteps)
    }

    /// Runs the next optimizer step.
    public func trainStep() -> StepRecord {
        let started = Date()
        let micro = order.microBatches(step: step).map { $0.map { sequences[$0] } }
        let targets = micro.reduce(0) { $0 + $1.reduce(0) { $0 + $1.targetCount } }
        let tokens = micro.reduce(0) { $0 + $1.reduce(0) { $0 + $1.tokens.count } }
        training.zeroGradients()
        var nll = 0.0
        for (index, batch) in micro.enumerated() {
            let stream = UInt64(step) &* UInt64(settings.gradAccum) &+ UInt64(index)
            nll += training.accumulateGradients(batch, normaliser: Double(max(1, targets)), stream: stream).nll
        }
        let parameters = training.parameters
        let norm = clipGradientNorm(parameters, maxNorm: settings.maxGradNorm)
        let lr = learningRate(step: step)
        optimizer.update(parameters, lr: lr)
        training.beginStep()
        step += 1
        return StepRecord(
            step: step, loss: nll / Double(max(1, targets)), lr: lr, gradNorm: norm, tokens: tokens, targets: targets,
            seconds: Date().timeIntervalSince(started))
    }

    /// Records a finished step's line in the log.
    public func record(_ record: StepRecord) {
        logLines.append(record.logLine.serialized(.compact))
    }

    /// The mean next-token NLL of `sequences` with the current adapter, `batchSize` at a time.
    public func evalLoss(_ sequences: [TrainingSequence]) -> Double {
        var sum = 0.0
        var count = 0
        var start = 0
        while start < sequences.count {
            let batch = Array(sequences[start..<min(sequences.count, start + settings.batchSize)])
            let (nll, targets) = training.loss(batch)
            sum += nll
            count += targets
            start += batch.count
        }
        return sum / Double(max(1, count))
    }

    // MARK: Files

    /// The adapter's tensors as PEFT saves them (float32, its key names).
    public func adapterItems() -> [SafeTensorsWriter.Item] {
        training.parameters.map {
            SafeTensorsWriter.Item(name: $0.name, payload: Tensor(dtype: .f32, shape: Shape($0.shape), values: $0.values))
        }
    }

    /// AdamW's state: each tensor's `exp_avg` and `exp_avg_sq` under its name.
    public func optimizerItems() -> [SafeTensorsWriter.Item] {
        training.parameters.enumerated().flatMap { index, tensor in
            [
                SafeTensorsWriter.Item(
                    name: tensor.name + ".exp_avg",
                    payload: Tensor(dtype: .f32, shape: Shape(tensor.shape), values: optimizer.firstMoments[index])),
                SafeTensorsWriter.Item(
                    name: tensor.name + ".exp_avg_sq",
                    payload: Tensor(dtype: .f32, shape: Shape(tensor.shape), values: optimizer.secondMoments[index])),
            ]
        }
    }

    /// Continues from a checkpoint: the adapter's values, AdamW's state and the steps done.
    /// `adapter` and `moments` map tensor names to float32 values; every tensor must be there
    /// with its size.
    public func restore(
        step: Int, adapter: [String: [Float]], moments: [String: [Float]], logLines: [String], path: String
    ) throws(ModelError) {
        guard step >= 0, step <= settings.totalSteps else {
            throw ModelError(path: path, "the checkpoint is at step \(step), past this run's \(settings.totalSteps) steps")
        }
        var first: [[Float]] = []
        var second: [[Float]] = []
        let parameters = training.parameters
        guard adapter.count == parameters.count else {
            throw ModelError(path: path, "the checkpoint's adapter has \(adapter.count) tensors; this run trains \(parameters.count)")
        }
        for tensor in parameters {
            guard let values = adapter[tensor.name], values.count == tensor.values.count else {
                throw ModelError(path: path, "the checkpoint's adapter lacks '\(tensor.name)' of \(tensor.shape)")
            }
            guard let m = moments[tensor.name + ".exp_avg"], let v = moments[tensor.name + ".exp_avg_sq"], m.count == values.count,
                v.count == values.count
            else {
                throw ModelError(path: path, "the checkpoint's optimizer state lacks '\(tensor.name)'")
            }
            guard values.allSatisfy(\.isFinite), m.allSatisfy(\.isFinite), v.allSatisfy({ $0.isFinite && $0 >= 0 }) else {
                throw ModelError(path: path, "the checkpoint's values for '\(tensor.name)' hold NaN, infinite or negative second moments")
            }
            tensor.values = values
            first.append(m)
            second.append(v)
        }
        optimizer.restore(step: step, firstMoments: first, secondMoments: second)
        self.step = step
        self.logLines = Array(logLines.prefix(step))
        training.beginStep()
    }
}
