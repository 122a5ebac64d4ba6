import Foundation
import SafetensorsFormat
import TensorCore
import Testing
import TestSupport

/// `qtool finetune` end to end: PEFT's 30-step runs (fixtures/finetune/goldens), resuming and
/// thread counts bit for bit, a signal mid-run, and the refusals.
struct FinetuneCommandTests {
    static let goldens: JSONValue = try! JSONParser.parse(
        String(decoding: Fixtures.bytes(Fixtures.path("finetune/goldens/goldens.json")), as: UTF8.self))
    static let root = Fixtures.path("..")
    let finetune = Fixtures.path("finetune")
    let models = Fixtures.path("models")

    static func log(_ folder: String) throws -> [JSONValue] {
        try String(decoding: Fixtures.bytes(folder + "/training_log.jsonl"), as: UTF8.self).split(separator: "\n").map {
            try JSONParser.parse(String($0))
        }
    }

    static func floats(_ path: String) throws -> [String: [Float]] {
        let tensors = try SafeTensorsFile(path: path).tensors()
        return Dictionary(uniqueKeysWithValues: tensors.entries.map { ($0.name, $0.tensor.values(as: Float.self)) })
    }

    /// The golden run's own command line (paths from the repository root), into `output`.
    static func arguments(_ run: String, output: String) -> [String] {
        var arguments = goldens[run]!["qtool_args"]!.arrayValues!.map(\.stringValue!)
        arguments = arguments.map { $0.hasPrefix("fixtures/") ? root + "/" + $0 : $0 }
        return arguments + ["--output", output, "--quiet"]
    }

    /// From PEFT's initial adapter, the same data order and settings: every step's loss within 1%
    /// of PEFT's (it is within float32 rounding), the final adapter's eval loss within 1%, and
    /// `qtool eval --adapter` of the result giving that same eval loss.
    @Test(arguments: ["run-f32", "run-nf4"])
    func thirtyStepsFollowPEFT(_ run: String) throws {
        let golden = Self.goldens[run]!
        let output = Fixtures.temporaryFolder() + "/out"
        let evalData = finetune + "/eval.jsonl"
        let result = try QToolBinary.run(Self.arguments(run, output: output) + ["--eval-data", evalData, "--json"])
        #expect(result.status == 0, "\(result.stderr)")
        let lines = try Self.log(output)
        let expected = golden["log"]!.arrayValues!
        #expect(lines.count == expected.count)
        for (line, reference) in zip(lines, expected) {
            let loss = line["loss"]!.doubleValue!, want = reference["loss"]!.doubleValue!
            #expect(abs(loss - want) <= 0.01 * want, "step \(line["step"]!): \(loss) vs PEFT \(want)")
            #expect(abs(loss - want) <= 1e-4 * want, "step \(line["step"]!): \(loss) vs PEFT \(want) (float32 rounding only)")
            #expect(abs(line["lr"]!.doubleValue! - reference["lr"]!.doubleValue!) <= 1e-12)
            let norm = line["grad_norm"]!.doubleValue!
            #expect(abs(norm - reference["grad_norm"]!.doubleValue!) <= 1e-3 * norm)
        }
        let evalLoss = golden["eval"]!["loss"]!.doubleValue!
        let report = try JSONParser.parse(result.stdout)
        #expect(abs(report["eval_loss"]!.doubleValue! - evalLoss) <= 0.01 * evalLoss)
        #expect(report["steps"]!.integerValue! == 30)

        // The adapter: what PEFT trained, to the precision 30 steps of float32 keep.
        let final = try Self.floats(output + "/adapter_model.safetensors")
        let reference = try Self.floats(finetune + "/goldens/" + golden["golden"]!.stringValue!)
        #expect(Set(final.keys) == Set(reference.keys))
        for (name, values) in reference {
            let scale = values.map { abs($0) }.max() ?? 0
            let worst = zip(final[name]!, values).map { abs($0 - $1) }.max() ?? 0
            #expect(worst <= 1e-3 * scale + 1e-6, "\(name): \(worst) of \(scale)")
        }
        let base = golden["base"]!.stringValue!
        let evaluated = try QToolBinary.run([
            "eval", models + "/" + base, "--adapter", output, "--data", evalData, "--max-seq-len", "64", "--json",
        ])
        #expect(evaluated.status == 0, "\(evaluated.stderr)")
        let qtoolEval = try JSONParser.parse(evaluated.stdout)["loss"]!.doubleValue!
        #expect(abs(qtoolEval - report["eval_loss"]!.doubleValue!) <= 1e-6 * qtoolEval)
        #expect(abs(qtoolEval - evalLoss) <= 0.01 * evalLoss)
    }

    /// Completion-only loss: the first step of a run over train-completion.jsonl sees the golden
    /// batch (its first three lines), so its loss is PyTorch's loss of that batch.
    @Test func completionLinesScoreTheCompletionOnly() throws {
        let golden = Self.goldens["grad"]!["f32-lora-completion"]!
        let output = Fixtures.temporaryFolder() + "/out"
        let result = try QToolBinary.run([
            "finetune", models + "/llama-gqa", "--no-quantize", "--data", finetune + "/train-completion.jsonl", "--init-adapter",
            models + "/llama-gqa-lora", "--steps", "1", "--batch-size", "3", "--seq-len", "48", "--no-shuffle", "--output", output,
        ])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stderr.contains("were longer than --seq-len 48 and were cut"))
        let loss = try Self.log(output)[0]["loss"]!.doubleValue!
        #expect(abs(loss - golden["loss"]!.doubleValue!) <= 1e-5 * loss)
        // The adapter keeps the initial adapter's config.
        #expect(Fixtures.bytes(output + "/adapter_config.json").count > 0)
        let config = try JSONParser.parse(String(decoding: Fixtures.bytes(output + "/adapter_config.json"), as: UTF8.self))
        #expect(config["r"]!.integerValue! == 8 && config["lora_alpha"]!.doubleValue! == 16)
    }

    static func common(_ finetune: String, _ models: String, steps: Int = 20) -> [String] {
        [
            "finetune", models + "/llama-gqa", "--data", finetune + "/train.jsonl", "--steps", String(steps), "--batch-size", "2",
            "--grad-accum", "2",
            "--seq-len", "32", "--lr", "5e-3", "--schedule", "linear", "--warmup-steps", "2", "--dropout", "0.1", "--rank", "4", "--alpha",
            "8", "--seed", "11", "--quiet",
        ]
    }

    /// A 20-step run resumed from its checkpoint-10 (on another thread count) ends with the bytes
    /// of the uninterrupted run; so does the uninterrupted run on one thread.
    @Test func resumingAndThreadCountsGiveTheSameBytes() throws {
        let folder = Fixtures.temporaryFolder()
        let common = Self.common(finetune, models)
        let whole = try QToolBinary.run(common + ["--output", folder + "/whole", "--save-every", "10", "--threads", "2"])
        #expect(whole.status == 0, "\(whole.stderr)")
        #expect(Fixtures.listing(folder + "/whole").contains("checkpoint-10"))
        let checkpoint = Fixtures.listing(folder + "/whole/checkpoint-10")
        for name in [
            "adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors", "trainer_state.json", "training_log.jsonl",
        ] {
            #expect(checkpoint.contains(name))
        }
        let resumed = try QToolBinary.run(
            common + ["--output", folder + "/resumed", "--resume", folder + "/whole/checkpoint-10", "--threads", "1"])
        #expect(resumed.status == 0, "\(resumed.stderr)")
        let single = try QToolBinary.run(common + ["--output", folder + "/single", "--threads", "1"])
        #expect(single.status == 0, "\(single.stderr)")
        let reference = Fixtures.bytes(folder + "/whole/adapter_model.safetensors")
        #expect(Fixtures.bytes(folder + "/resumed/adapter_model.safetensors") == reference)
        #expect(Fixtures.bytes(folder + "/single/adapter_model.safetensors") == reference)
        // The resumed log holds the first ten steps too, with the same losses.
        let losses = { (folder: String) in try Self.log(folder).map { $0["loss"]!.doubleValue! } }
        #expect(try losses(folder + "/resumed") == losses(folder + "/whole"))
        #expect(try losses(folder + "/whole").count == 20)
    }

    @Test func resumingWithOtherSettingsIsRefusedAndKeepsWhatWasWritten() throws {
        let folder = Fixtures.temporaryFolder()
        let common = Self.common(finetune, models, steps: 10)
        #expect(try QToolBinary.run(common + ["--output", folder + "/run", "--save-every", "10"]).status == 0)
        let before = Fixtures.bytes(folder + "/run/adapter_model.safetensors")
        let changed = common.map { $0 == "5e-3" ? "6e-3" : $0 }
        let result = try QToolBinary.run(changed + ["--output", folder + "/run", "--resume", folder + "/run/checkpoint-10"])
        #expect(result.status == 2)
        #expect(result.stderr.contains("checkpoint-10: the checkpoint was made with lr 0.005, this run has 0.006"), "\(result.stderr)")
        #expect(Fixtures.bytes(folder + "/run/adapter_model.safetensors") == before)
        let otherModel = try QToolBinary.run(
            common.map { $0.hasSuffix("/llama-gqa") ? models + "/qwen2-tied" : $0 } + [
                "--output", folder + "/other", "--resume", folder + "/run/checkpoint-10",
            ])
        #expect(otherModel.status == 2 && otherModel.stderr.contains("the checkpoint was made with"), "\(otherModel.stderr)")
    }

    /// A damaged checkpoint is refused, naming the file and what is wrong with it.
    @Test func damagedCheckpointsAreRefused() throws {
        let folder = Fixtures.temporaryFolder()
        let common = Self.common(finetune, models, steps: 10)
        #expect(try QToolBinary.run(common + ["--output", folder + "/run", "--save-every", "5"]).status == 0)
        func resume(_ edit: (String) throws -> Void) throws -> CommandResult {
            let copy = folder + "/copy"
            try? FileManager.default.removeItem(atPath: copy)
            try FileManager.default.copyItem(atPath: folder + "/run/checkpoint-5", toPath: copy)
            try edit(copy)
            return try QToolBinary.run(common + ["--output", folder + "/resumed", "--resume", copy])
        }
        var result = try resume { try Data("not safetensors".utf8).write(to: URL(fileURLWithPath: $0 + "/optimizer.safetensors")) }
        #expect(result.status == 2 && result.stderr.contains("copy/optimizer.safetensors"), "\(result.stderr)")
        result = try resume { path in
            let text = String(decoding: Fixtures.bytes(path + "/trainer_state.json"), as: UTF8.self)
            try Data(text.replacingOccurrences(of: "\"global_step\": 5", with: "\"global_step\": 500").utf8).write(
                to: URL(fileURLWithPath: path + "/trainer_state.json"))
        }
        #expect(result.status == 2 && result.stderr.contains("the checkpoint is at step 500, past this run's 10 steps"), "\(result.stderr)")
        result = try resume { path in
            var bytes = Fixtures.bytes(path + "/adapter_model.safetensors")
            let nan = Float.nan.bitPattern
            for (i, byte) in withUnsafeBytes(of: nan.littleEndian, Array.init).enumerated() { bytes[bytes.count - 4 + i] = byte }
            try Data(bytes).write(to: URL(fileURLWithPath: path + "/adapter_model.safetensors"))
        }
        #expect(result.status == 2 && result.stderr.contains("hold NaN"), "\(result.stderr)")
        result = try resume { try FileManager.default.removeItem(atPath: $0 + "/adapter_model.safetensors") }
        #expect(result.status == 2 && result.stderr.contains("copy: no adapter_model.safetensors"), "\(result.stderr)")
        #expect(!FileManager.default.fileExists(atPath: folder + "/resumed/adapter_model.safetensors"))
    }

    @Test func aSignalSavesACheckpointThatResumes() throws {
        let folder = Fixtures.temporaryFolder()
        let arguments = [
            "finetune", models + "/llama-gqa", "--data", finetune + "/train.jsonl", "--steps", "1000", "--batch-size", "1", "--seq-len",
            "16",
            "--lr", "1e-3", "--save-every", "50", "--quiet",
        ]
        let process = Process()
        process.executableURL = URL(fileURLWithPath: QToolBinary.path)
        process.arguments = arguments + ["--output", folder + "/run"]
        process.standardError = Pipe()
        process.standardOutput = Pipe()
        try process.run()
        // Once the first checkpoint is there, the run is mid-way.
        for _ in 0..<6000 where !Fixtures.listing(folder + "/run").contains("checkpoint-50") { usleep(10_000) }
        kill(process.processIdentifier, SIGINT)
        process.waitUntilExit()
        #expect(process.terminationReason == .exit && process.terminationStatus == 128 + SIGINT)
        let saved = Fixtures.listing(folder + "/run").filter { $0.hasPrefix("checkpoint-") }.sorted {
            Int($0.dropFirst(11))! < Int($1.dropFirst(11))!
        }
        #expect(saved.count >= 2 && saved.first == "checkpoint-50" && saved.last != "checkpoint-1000", "\(saved)")
        #expect(!Fixtures.listing(folder + "/run").contains("adapter_model.safetensors"))
        guard let checkpoint = saved.last else { return }
        let resumed = try QToolBinary.run(arguments + ["--output", folder + "/run", "--resume", folder + "/run/" + checkpoint])
        #expect(resumed.status == 0, "\(resumed.stderr)")
        let whole = try QToolBinary.run(arguments + ["--output", folder + "/whole"])
        #expect(whole.status == 0)
        #expect(Fixtures.bytes(folder + "/run/adapter_model.safetensors") == Fixtures.bytes(folder + "/whole/adapter_model.safetensors"))
    }

    @Test func badInputIsRefusedWithItsFileNamed() throws {
        let folder = Fixtures.temporaryFolder()
        func attempt(_ data: String, _ extra: [String] = [], contents: String? = nil) throws -> CommandResult {
            if let contents { try Data(contents.utf8).write(to: URL(fileURLWithPath: data)) }
            return try QToolBinary.run(["finetune", models + "/llama-gqa", "--data", data, "--output", folder + "/out", "--quiet"] + extra)
        }
        var result = try attempt(folder + "/empty.jsonl", contents: "\n\n")
        #expect(result.status == 2 && result.stderr.contains("empty.jsonl: holds no lines"), "\(result.stderr)")
        result = try attempt(folder + "/chat.jsonl", contents: "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n")
        #expect(result.status == 2 && result.stderr.contains("chat.jsonl: line 1: chat lines (\"messages\") are not supported yet"))
        result = try attempt(
            folder + "/long.jsonl", ["--seq-len", "8"],
            contents: "{\"prompt\": \"a long prompt of many words here\", \"completion\": \"done\"}\n")
        #expect(
            result.status == 2 && result.stderr.contains("long.jsonl: line 1: no completion token is left within --seq-len 8"),
            "\(result.stderr)")
        result = try attempt(folder + "/bad.jsonl", contents: "{\"text\": \"fine\"}\n{\"prompt\": 3}\n")
        #expect(result.status == 2 && result.stderr.contains("bad.jsonl: line 2: not an object with a string \"text\""))
        result = try attempt(finetune + "/train.jsonl", ["--target", "q_proj,lm_head"])
        #expect(
            result.status == 2 && result.stderr.contains("llama-gqa: --target lm_head: the model's blocks have no such linear layer"),
            "\(result.stderr)")
        // An output under a file cannot be made; one that is a file is not replaced.
        try Data("x".utf8).write(to: URL(fileURLWithPath: folder + "/file"))
        result = try QToolBinary.run([
            "finetune", models + "/llama-gqa", "--data", finetune + "/train.jsonl", "--output", folder + "/file/out", "--quiet",
        ])
        #expect(result.status == 2 && result.stderr.contains("file/out: cannot create the folder"), "\(result.stderr)")
        result = try QToolBinary.run(["finetune", models + "/llama-gqa", "--data", finetune + "/train.jsonl", "--output", folder + "/file"])
        #expect(result.status == 2 && result.stderr.contains("file: exists and is not a folder"))
        #expect(Fixtures.bytes(folder + "/file") == Array("x".utf8))
        result = try QToolBinary.run([
            "finetune", models + "/llama-gqa", "--data", finetune + "/train.jsonl", "--output", folder + "/o", "--resume",
            folder + "/nothing",
        ])
        #expect(result.status == 2 && result.stderr.contains("nothing: not a checkpoint folder"), "\(result.stderr)")
    }
}
