import ArgumentParser
import FineTune
import Foundation
import LanguageModel
import LoRAMerge
import SafetensorsFormat
import TensorCore
import Tokenizer

/// `qtool finetune`: QLoRA (or LoRA) training of a PEFT adapter over a frozen base on the CPU.
struct FinetuneCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "finetune",
        abstract: "Train a LoRA adapter (PEFT format) over a frozen NF4 or float base on the CPU.",
        discussion: """
            MODEL is a model folder (float weights are quantized to NF4 in memory — QLoRA — unless
            --no-quantize), a bitsandbytes 4-bit save, or a .nf4 file; it carries config.json and
            tokenizer.json. Llama-family models (llama, mistral, qwen2) only.

            --data FILE.jsonl: {"text": ...} lines (loss on every next token) or {"prompt": ...,
            "completion": ...} lines (loss on the completion and the EOS appended to it only).
            Each line is tokenized with the tokenizer's special tokens and cut to --seq-len.

            A step's loss is the total next-token NLL over the targets of its --grad-accum
            micro-batches divided by their count; AdamW, clipping and the schedules are torch's and
            transformers'. OUTPUT gets adapter_config.json + adapter_model.safetensors (what
            PeftModel.from_pretrained loads), training_log.jsonl, and checkpoint-STEP folders
            (--save-every) that --resume continues bit for bit. Ctrl-C saves a checkpoint and stops.

            Examples:
              qtool finetune fixtures/models/llama-gqa --data fixtures/finetune/train.jsonl --output out/lora --steps 30
              qtool finetune model.nf4 --data train.jsonl --output out --rank 16 --alpha 32 --epochs 2 --save-every 50
              qtool finetune model --data train.jsonl --output out --resume out/checkpoint-50 --epochs 2 --save-every 50
            """)

    @Argument(help: "A model folder or a .nf4 file.")
    var model: String

    @Option(help: "Training data: JSON Lines of {\"text\"} or {\"prompt\", \"completion\"}.")
    var data: String

    @Option(help: "The folder for the adapter, the log and the checkpoints.")
    var output: String

    @Option(help: "Modules to train: names among q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj, or all-linear.")
    var target = "all-linear"

    @Option(help: "LoRA rank r.")
    var rank = 8

    @Option(help: "LoRA alpha (the scale is alpha/r, or alpha/√r with --use-rslora).")
    var alpha: Double = 8

    @Option(help: "Dropout on each LoRA module's input.")
    var dropout: Double = 0

    @Flag(help: "rsLoRA scaling: alpha/√r.")
    var useRslora = false

    @Flag(help: "DoRA: a trained magnitude per output row.")
    var useDora = false

    @Option(help: "Start from this PEFT adapter (its config sets rank, alpha, targets, rsLoRA, DoRA).")
    var initAdapter: String?

    @Option(help: "Seed of the initial weights, the shuffling and the dropout masks.")
    var seed: UInt64 = 0

    @Option(help: "Peak learning rate.")
    var lr: Double = 1e-3

    @Option(help: "AdamW's decoupled weight decay.")
    var weightDecay: Double = 0.01

    @Option(help: "AdamW's beta1.")
    var beta1: Double = 0.9

    @Option(help: "AdamW's beta2.")
    var beta2: Double = 0.999

    @Option(help: "AdamW's epsilon.")
    var eps: Double = 1e-8

    @Option(help: "Clip the gradients' total norm to this (0: no clipping).")
    var maxGradNorm: Double = 1.0

    @Option(help: "Learning-rate schedule: constant, linear or cosine.")
    var schedule = "constant"

    @Option(help: "Steps of linear warmup from 0.")
    var warmupSteps = 0

    @Option(help: "Sequences per micro-batch.")
    var batchSize = 1

    @Option(help: "Micro-batches per optimizer step.")
    var gradAccum = 1

    @Option(help: "Tokens kept of each line.")
    var seqLen = 512

    @Option(help: "Optimizer steps to run (default: --epochs).")
    var steps: Int?

    @Option(help: "Passes over the data (default 1).")
    var epochs: Int?

    @Flag(help: "Keep the data in file order (default: shuffled from --seed each epoch).")
    var noShuffle = false

    @Flag(help: "Keep only each block's input; compute the block again in the backward pass.")
    var gradCheckpointing = false

    @Flag(help: "Train over the float weights as they are (plain LoRA) instead of quantizing them to NF4.")
    var noQuantize = false

    @Option(help: "JSON Lines of {\"text\"} to compute an eval loss on.")
    var evalData: String?

    @Option(help: "Steps between eval losses (default: at the end only).")
    var evalEvery: Int?

    @Option(help: "Steps between checkpoints (OUTPUT/checkpoint-STEP).")
    var saveEvery: Int?

    @Option(help: "Continue from OUTPUT/checkpoint-STEP of a run with the same settings.")
    var resume: String?

    @Option(help: "Print a line of the log on standard error every N steps (as a terminal-less job wants).")
    var logEvery: Int?

    @OptionGroup var inputOptions: InputOptions

    @OptionGroup var threading: ThreadOptions

    @OptionGroup var report: ReportOptions

    func validate() throws {
        try PathArguments.validate([("MODEL", model)])
        guard rank >= 1, rank <= LoRAAdapter.maximumRank else {
            throw ValidationError("--rank must be from 1 to \(LoRAAdapter.maximumRank), not \(rank)")
        }
        guard alpha.isFinite else { throw ValidationError("--alpha must be a finite number") }
        guard dropout >= 0, dropout < 1 else { throw ValidationError("--dropout must be in [0, 1), not \(dropout)") }
        guard lr.isFinite, lr >= 0 else { throw ValidationError("--lr must be a finite number ≥ 0") }
        guard weightDecay.isFinite, weightDecay >= 0 else { throw ValidationError("--weight-decay must be a finite number ≥ 0") }
        guard beta1 >= 0, beta1 < 1, beta2 >= 0, beta2 < 1 else { throw ValidationError("--beta1 and --beta2 must be in [0, 1)") }
        guard eps.isFinite, eps > 0 else { throw ValidationError("--eps must be a finite number > 0") }
        guard maxGradNorm.isFinite, maxGradNorm >= 0 else { throw ValidationError("--max-grad-norm must be a finite number ≥ 0") }
        guard LearningRateSchedule(rawValue: schedule) != nil else {
            throw ValidationError("--schedule must be constant, linear or cosine, not '\(schedule)'")
        }
        guard warmupSteps >= 0 else { throw ValidationError("--warmup-steps must be ≥ 0") }
        guard batchSize >= 1 else { throw ValidationError("--batch-size must be at least 1") }
        guard gradAccum >= 1 else { throw ValidationError("--grad-accum must be at least 1") }
        guard seqLen >= 2 else { throw ValidationError("--seq-len must be at least 2") }
        guard steps == nil || epochs == nil else { throw ValidationError("give --steps or --epochs, not both") }
        if let steps, steps < 1 { throw ValidationError("--steps must be at least 1") }
        if let epochs, epochs < 1 { throw ValidationError("--epochs must be at least 1") }
        if let evalEvery, evalEvery < 1 { throw ValidationError("--eval-every must be at least 1") }
        if evalEvery != nil && evalData == nil { throw ValidationError("--eval-every needs --eval-data") }
        if let saveEvery, saveEvery < 1 { throw ValidationError("--save-every must be at least 1") }
        if let logEvery, logEvery < 1 { throw ValidationError("--log-every must be at least 1") }
        if initAdapter != nil && (useDora || useRslora) {
            throw ValidationError("--init-adapter sets rsLoRA and DoRA from its adapter_config.json; leave out --use-rslora / --use-dora")
        }
    }

    func targets() throws -> [LoRATarget] {
        if target == "all-linear" { return LoRATarget.allCases }
        var out: [LoRATarget] = []
        for name in target.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) {
            guard let t = LoRATarget(name: name) else {
                throw CommandError(
                    path: model,
                    "--target \(name): the model's blocks have no such linear layer; qtool trains q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj (or all-linear)"
                )
            }
            if !out.contains(t) { out.append(t) }
        }
        guard !out.isEmpty else { throw CommandError(path: model, "--target names no module") }
        return out
    }

    func run() throws {
        threading.apply()
        let threads = ParallelismSettings.threadCount
        let started = Date()
        // Refuse an output that cannot be written before any work: nothing there is touched yet.
        let targets = try targets()
        try OutputFolder.prepare(output)
        let loaded = try LoadedModel.open(
            model, adapters: [], allowExternal: inputOptions.allowExternal, threads: threads, quantizeOnLoad: !noQuantize)
        let tokenizer = try loaded.tokenizer()
        let lm = loaded.model

        let dataset = try TrainingDataset.read(data, tokenizer: tokenizer, seqLen: seqLen, vocabulary: lm.config.vocabSize)
        if dataset.truncated > 0 {
            Report.warning(
                data, "\(dataset.truncated) of \(dataset.sequences.count) lines were longer than --seq-len \(seqLen) and were cut")
        }
        let evalSequences = try evalData.map {
            try TrainingDataset.read($0, tokenizer: tokenizer, seqLen: seqLen, vocabulary: lm.config.vocabSize, textOnly: true).sequences
        }

        // The modules: from an adapter, or new as PEFT makes them.
        let modules: [LoRAParameters]
        var adapterConfig: JSONValue
        let initial: String
        if let initAdapter {
            let adapter = try AdapterFolder.load(initAdapter)
            modules = try lm.loRAModules(from: adapter)
            adapterConfig = try JSONParser.parse(String(decoding: try TextInput.bytes(initAdapter + "/adapter_config.json"), as: UTF8.self))
            initial = "adapter " + String(XXH64.hash(try TextInput.bytes(initAdapter + "/adapter_model.safetensors")), radix: 16)
        } else {
            let settings = LoRASettings(rank: rank, alpha: alpha, rsLoRA: useRslora, doRA: useDora, targets: targets)
            modules = lm.newLoRAModules(settings, seed: seed)
            adapterConfig = Self.peftConfig(settings, dropout: dropout, base: model)
            initial = "seed \(seed)"
        }
        if dropout > 0 && modules.contains(where: { $0.magnitude != nil }) {
            throw CommandError(path: initAdapter ?? model, "DoRA with --dropout is not supported yet: give --dropout 0")
        }
        let training = LoRATraining(model: lm, modules: modules, dropout: Float(dropout), checkpointing: gradCheckpointing)
        let order = DataOrder(count: dataset.sequences.count, batchSize: batchSize, gradAccum: gradAccum, shuffle: !noShuffle, seed: seed)
        let totalSteps = steps ?? (epochs ?? 1) * order.stepsPerEpoch
        let settings = TrainerSettings(
            lr: lr, weightDecay: weightDecay, beta1: beta1, beta2: beta2, eps: eps, maxGradNorm: maxGradNorm,
            schedule: LearningRateSchedule(rawValue: schedule)!, warmupSteps: warmupSteps, batchSize: batchSize, gradAccum: gradAccum,
            totalSteps: totalSteps, shuffle: !noShuffle, seed: seed)
        let trainer = Trainer(training: training, sequences: dataset.sequences, settings: settings)
        let run = try runRecord(settings: settings, modules: modules, loaded: loaded, initial: initial)

        if let resume {
            try TrainingCheckpoint.restore(resume, into: trainer, run: run)
        }

        // Ctrl-C or SIGTERM: finish the step, save a checkpoint, stop.
        ProcessCleanup.deferTermination()
        let progress = ProgressBar(label: "finetune", total: totalSteps, unit: .steps, quiet: report.quiet)
        progress.update(trainer.step, detail: "")
        var trainedTokens = 0
        var trainingSeconds = 0.0
        var last: StepRecord?
        var evalLoss: Double?
        var stoppedBy: Int32?
        while trainer.step < totalSteps {
            var record = trainer.trainStep()
            trainedTokens += record.tokens
            trainingSeconds += record.seconds
            if let evalSequences, record.step == totalSteps || evalEvery.map({ record.step % $0 == 0 }) == true {
                record.evalLoss = trainer.evalLoss(evalSequences)
                evalLoss = record.evalLoss
            }
            trainer.record(record)
            last = record
            progress.update(
                record.step,
                detail: String(
                    format: "loss %.4f lr %.2e %.0f tokens/s", record.loss, record.lr, Double(trainedTokens) / max(trainingSeconds, 1e-9)))
            if let logEvery, record.step % logEvery == 0 || record.step == totalSteps {
                progress.clear()
                var line = String(
                    format: "step %d/%d  loss %.4f  lr %.3e  grad_norm %.4f  %.0f tokens/s", record.step, totalSteps, record.loss,
                    record.lr,
                    record.gradNorm, Double(record.tokens) / max(record.seconds, 1e-9))
                if let evalLoss = record.evalLoss { line += String(format: "  eval_loss %.4f", evalLoss) }
                Report.note(line)
            }
            stoppedBy = ProcessCleanup.stopRequested
            if stoppedBy != nil || saveEvery.map({ record.step % $0 == 0 }) == true {
                try TrainingCheckpoint.save(trainer, config: adapterConfig, run: run, output: output)
            }
            if stoppedBy != nil { break }
        }
        progress.finish()

        if let stoppedBy {
            let folder = output + "/checkpoint-\(trainer.step)"
            Report.note("stopped by signal \(stoppedBy) after step \(trainer.step) of \(totalSteps); checkpoint saved to \(folder)")
            Report.note("continue with the same options and --resume \(folder)")
            Foundation.exit(128 + stoppedBy)
        }
        try TrainingCheckpoint.writeAdapter(trainer, config: adapterConfig, output: output)

        let peak = ProcessMemory.peakResidentBytes()
        let rate = Double(trainedTokens) / max(trainingSeconds, 1e-9)
        if report.json {
            var members = [
                JSONMember(key: "output", value: .string(output)),
                JSONMember(key: "steps", value: .integer(trainer.step)),
                JSONMember(key: "tokens", value: .integer(trainedTokens)),
                JSONMember(key: "seconds", value: .double(trainingSeconds)),
                JSONMember(key: "tokens_per_second", value: .double(rate)),
                JSONMember(key: "loss", value: last.map { .double($0.loss) } ?? .null),
                JSONMember(key: "trainable_parameters", value: .integer(training.parameters.reduce(0) { $0 + $1.values.count })),
                JSONMember(key: "peak_rss_bytes", value: peak.map { .integer($0) } ?? .null),
                JSONMember(key: "wall_seconds", value: .double(Date().timeIntervalSince(started))),
            ]
            if let evalLoss { members.append(JSONMember(key: "eval_loss", value: .double(evalLoss))) }
            Report.printJSON(.object(members))
        } else {
            let first = trainer.logLines.first.flatMap { try? JSONParser.parse($0)["loss"]?.doubleValue }
            var line = "trained \(trainer.step) steps, \(trainedTokens) tokens"
            if let first, let last { line += String(format: ", loss %.4f → %.4f", first, last.loss) }
            if let evalLoss { line += String(format: ", eval loss %.4f", evalLoss) }
            print(line + "; adapter in \(output)")
            fflush(nil)
            if !report.quiet {
                Report.note(
                    String(format: "%.0f tokens/s", rate) + (peak.map { ", peak memory " + ProgressBar.formatBytes(Double($0)) } ?? ""))
            }
        }
    }

    /// What a checkpoint must agree with to be resumed by this run.
    private func runRecord(settings: TrainerSettings, modules: [LoRAParameters], loaded: LoadedModel, initial: String) throws
        -> [JSONMember]
    {
        let configBytes = try loaded.companion("config.json") ?? []
        var weights = XXH64()
        for entry in loaded.checkpoint.entries.sorted(by: { $0.name < $1.name }) {
            let line = "\(entry.name) \(entry.dtype.rawValue) \(entry.shape.dimensions) \(entry.quantization ?? "")\n"
            Array(line.utf8).withUnsafeBytes { weights.update($0) }
        }
        var members = settings.members
        members += [
            JSONMember(key: "model_config", value: .string(String(XXH64.hash(configBytes), radix: 16))),
            JSONMember(key: "model_tensors", value: .string(String(weights.finalize(), radix: 16))),
            JSONMember(key: "quantize", value: .bool(!noQuantize)),
            JSONMember(key: "data", value: .string(String(XXH64.hash(try TextInput.bytes(data)), radix: 16))),
            JSONMember(key: "seq_len", value: .integer(seqLen)),
            JSONMember(key: "dropout", value: .double(dropout)),
            JSONMember(key: "initial_adapter", value: .string(initial)),
            JSONMember(
                key: "modules",
                value: .array(modules.map { .string("\($0.moduleName) r\($0.rank) s\($0.scale)\($0.magnitude == nil ? "" : " dora")") })),
        ]
        return members
    }

    /// A LoraConfig as PEFT writes it for these settings.
    static func peftConfig(_ settings: LoRASettings, dropout: Double, base: String) -> JSONValue {
        .object([
            JSONMember(key: "alpha_pattern", value: .object([])),
            JSONMember(key: "base_model_name_or_path", value: .string(base)),
            JSONMember(key: "bias", value: .string("none")),
            JSONMember(key: "fan_in_fan_out", value: .bool(false)),
            JSONMember(key: "inference_mode", value: .bool(true)),
            JSONMember(key: "init_lora_weights", value: .bool(true)),
            JSONMember(key: "layers_pattern", value: .null),
            JSONMember(key: "layers_to_transform", value: .null),
            JSONMember(key: "lora_alpha", value: JSONValue.pythonFloat(settings.alpha)),
            JSONMember(key: "lora_dropout", value: JSONValue.pythonFloat(dropout)),
            JSONMember(key: "modules_to_save", value: .null),
            JSONMember(key: "peft_type", value: .string("LORA")),
            JSONMember(key: "r", value: .integer(settings.rank)),
            JSONMember(key: "rank_pattern", value: .object([])),
            JSONMember(key: "revision", value: .null),
            JSONMember(key: "target_modules", value: .array(settings.targets.sorted().map { .string($0.name) })),
            JSONMember(key: "task_type", value: .string("CAUSAL_LM")),
            JSONMember(key: "use_dora", value: .bool(settings.doRA)),
            JSONMember(key: "use_rslora", value: .bool(settings.rsLoRA)),
        ])
    }
}

/// A training data file read into sequences by the fine-tune rules.
struct TrainingDataset {
    var sequences: [TrainingSequence] = []
    /// Lines longer than the sequence length.
    var truncated = 0

    /// `{"text"}`: the tokens with the tokenizer's special tokens, every next token a target.
    /// `{"prompt", "completion"}`: the prompt's tokens (with special tokens), the completion's
    /// (without) and the EOS token; only the completion and the EOS are targets. Each cut to
    /// `seqLen`. A chat line (`messages`), a line of neither form, or one left without targets
    /// is an error naming its number.
    static func read(_ path: String, tokenizer: Tokenizer, seqLen: Int, vocabulary: Int, textOnly: Bool = false) throws -> TrainingDataset {
        var dataset = TrainingDataset()
        for (number, value) in try JSONLines.read(path) {
            var tokens: [Int]
            var firstTarget = 1
            if let text = value["text"]?.stringValue {
                tokens = tokenizer.encode(text)
            } else if !textOnly, let prompt = value["prompt"]?.stringValue, let completion = value["completion"]?.stringValue {
                tokens = tokenizer.encode(prompt)
                firstTarget = tokens.count
                tokens += tokenizer.encode(completion, addSpecialTokens: false)
                guard let eos = tokenizer.eosTokenIDs.first else {
                    throw CommandError(path: path, "line \(number): the tokenizer has no EOS token to end a completion with")
                }
                tokens.append(eos)
            } else if value["messages"] != nil {
                throw CommandError(
                    path: path,
                    "line \(number): chat lines (\"messages\") are not supported yet; give {\"text\"} or {\"prompt\", \"completion\"}")
            } else {
                throw CommandError(
                    path: path,
                    textOnly
                        ? "line \(number): not an object with a string \"text\""
                        : "line \(number): not an object with a string \"text\", or strings \"prompt\" and \"completion\"")
            }
            if tokens.count > seqLen {
                tokens = Array(tokens.prefix(seqLen))
                dataset.truncated += 1
            }
            if let bad = tokens.first(where: { $0 >= vocabulary }) {
                throw CommandError(path: path, "line \(number): token id \(bad) is beyond the model's vocabulary (\(vocabulary))")
            }
            let sequence = TrainingSequence(tokens: tokens, firstTarget: firstTarget)
            guard sequence.targetCount > 0 else {
                throw CommandError(
                    path: path,
                    firstTarget > 1
                        ? "line \(number): no completion token is left within --seq-len \(seqLen) (the prompt has \(firstTarget) tokens)"
                        : "line \(number): fewer than two tokens, nothing to predict")
            }
            dataset.sequences.append(sequence)
        }
        return dataset
    }
}

/// The output folder of a training run.
enum OutputFolder {
    /// Creates the folder (and its parents) when missing and checks that files can be made in
    /// it; a file in its place, or a folder that refuses writes, is an error before any work.
    static func prepare(_ path: String) throws {
        var info = stat()
        if stat(path, &info) == 0 {
            guard info.st_mode & S_IFMT == S_IFDIR else { throw CommandError(path: path, "exists and is not a folder") }
        } else {
            do {
                try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
            } catch {
                throw CommandError(path: path, "cannot create the folder: \(systemErrorText())")
            }
        }
        let probe = path + "/.qtool-write-test-\(getpid())"
        let fd = open(probe, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw CommandError(path: path, "cannot write in the folder: \(systemErrorText())") }
        close(fd)
        unlink(probe)
    }
}

/// Peak resident memory of this process (VmHWM), nil where /proc does not tell.
enum ProcessMemory {
    static func peakResidentBytes() -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("VmHWM:") {
            let digits = line.dropFirst(6).filter(\.isNumber)
            return Int(digits).map { $0 * 1024 }
        }
        return nil
    }
}
