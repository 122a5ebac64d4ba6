import FineTune
import Foundation
import LanguageModel
import SafetensorsFormat
import TensorCore

/// The files of a fine-tune run: the adapter in OUTPUT (as PEFT saves one), and checkpoints in
/// OUTPUT/checkpoint-STEP named as transformers' Trainer names its own: the adapter,
/// `trainer_state.json` (global_step, log_history, and what the run must agree with to resume),
/// the optimizer's state (`optimizer.safetensors`: each tensor's exp_avg and exp_avg_sq — a
/// safetensors file where transformers writes a torch pickle), and training_log.jsonl. The data
/// order and the dropout masks follow from the seed and the step, so no generator state is kept.
/// Every folder is written beside its place and moved in whole.
enum TrainingCheckpoint {
    static let format = JSONFormat.pythonDumps(indent: 2, sortKeys: true)

    static func writeAdapterFiles(_ trainer: Trainer, config: JSONValue, into transaction: FolderOutputTransaction) throws {
        try transaction.file(named: "adapter_config.json").write(Array((config.serialized(format) + "\n").utf8))
        try SafeTensorsWriter.write(
            trainer.adapterItems(), metadata: [(key: "format", value: "pt")], to: try transaction.file(named: "adapter_model.safetensors"))
        let log = trainer.logLines.map { $0 + "\n" }.joined()
        try transaction.file(named: "training_log.jsonl").write(Array(log.utf8))
    }

    /// The adapter and the log in `output`; checkpoint folders already there stay.
    static func writeAdapter(_ trainer: Trainer, config: JSONValue, output: String) throws {
        let transaction = try FolderOutputTransaction(folder: output)
        do {
            try writeAdapterFiles(trainer, config: config, into: transaction)
            try transaction.commit()
        } catch {
            transaction.abort()
            throw error
        }
    }

    static func save(_ trainer: Trainer, config: JSONValue, run: [JSONMember], output: String) throws {
        let transaction = try FolderOutputTransaction(folder: output + "/checkpoint-\(trainer.step)")
        do {
            try writeAdapterFiles(trainer, config: config, into: transaction)
            try SafeTensorsWriter.write(
                trainer.optimizerItems(), metadata: [(key: "step", value: String(trainer.optimizer.step))],
                to: try transaction.file(named: "optimizer.safetensors"))
            let history = trainer.logLines.compactMap { try? JSONParser.parse($0) }
            let state = JSONValue.object([
                JSONMember(key: "global_step", value: .integer(trainer.step)),
                JSONMember(key: "max_steps", value: .integer(trainer.settings.totalSteps)),
                JSONMember(key: "epoch", value: .double(Double(trainer.step) / Double(trainer.order.stepsPerEpoch))),
                JSONMember(key: "log_history", value: .array(history)),
                JSONMember(key: "qtool_run", value: .object(run)),
            ])
            try transaction.file(named: "trainer_state.json").write(Array((state.serialized(format) + "\n").utf8))
            try transaction.commit()
        } catch {
            transaction.abort()
            throw error
        }
    }

    /// Puts a checkpoint's state into `trainer`, after checking that it was made by a run with
    /// the same model, data and settings (`run`).
    static func restore(_ folder: String, into trainer: Trainer, run: [JSONMember]) throws {
        guard FilePaths.isDirectory(folder) else { throw CommandError(path: folder, "not a checkpoint folder") }
        let statePath = folder + "/trainer_state.json"
        guard FilePaths.exists(statePath) else {
            throw CommandError(path: folder, "no trainer_state.json: not a checkpoint of qtool finetune")
        }
        let state: JSONValue
        do {
            state = try JSONParser.parse(String(decoding: try TextInput.bytes(statePath), as: UTF8.self))
        } catch let error as CommandError {
            throw error
        } catch {
            throw CommandError(path: statePath, "not JSON (\(error))")
        }
        guard let recorded = state["qtool_run"]?.objectMembers, let step = state["global_step"]?.integerValue else {
            throw CommandError(path: statePath, "no qtool_run and global_step: not a checkpoint of qtool finetune")
        }
        for member in run {
            let theirs = recorded.first { $0.key == member.key }?.value
            guard theirs == member.value else {
                let was = theirs.map { $0.serialized(.compact) } ?? "nothing"
                throw CommandError(
                    path: folder,
                    "the checkpoint was made with \(member.key) \(was), this run has \(member.value.serialized(.compact)): resume with the options, model and data of the run that saved it"
                )
            }
        }
        func floats(_ name: String) throws -> [String: [Float]] {
            let path = folder + "/" + name
            guard FilePaths.exists(path) else { throw CommandError(path: folder, "no \(name)") }
            let tensors = try SafeTensorsFile(path: path).tensors()
            var out: [String: [Float]] = [:]
            for (key, tensor) in tensors.entries {
                guard tensor.dtype == .f32 else { throw CommandError(path: path, "tensor '\(key)' is \(tensor.dtype.rawValue), not F32") }
                out[key] = tensor.values(as: Float.self)
            }
            return out
        }
        let logText = FilePaths.exists(folder + "/training_log.jsonl") ? try TextInput.string(folder + "/training_log.jsonl") : ""
        let lines = logText.split(separator: "\n").map(String.init)
        do {
            try trainer.restore(
                step: step, adapter: try floats("adapter_model.safetensors"), moments: try floats("optimizer.safetensors"), logLines: lines,
                path: folder)
        } catch let error as ModelError {
            throw CommandError(path: error.path, error.problem)
        }
    }
}
