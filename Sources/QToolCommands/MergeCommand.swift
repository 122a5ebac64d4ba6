import ArgumentParser
import Foundation
import LoRAMerge
import Quantization
import SafetensorsFormat
import TensorCore

struct MergeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "merge",
        abstract: "Fold LoRA adapters (PEFT or mlx-lm) into a base checkpoint, as PEFT's merge_and_unload.",
        discussion: """
            Each changed weight becomes W + Σ wᵢ·sᵢ·BᵢAᵢ, computed in float32 and rounded once to
            the output type (s = lora_alpha/r, lora_alpha/√r with rsLoRA, rank_pattern and
            alpha_pattern applied; DoRA rescales each output row by m/‖W + s·BA‖). Tensors an
            adapter stores whole (modules_to_save) replace the base's. A 4-bit base (.nf4 or
            bitsandbytes folder) is dequantized, merged and quantized again with its own settings.
            The output keeps the base's format and sharding unless --format or --dtype says
            otherwise. An output ending in .gguf is a llama.cpp model (Q8_0 from a 4-bit base
            unless --dtype says f32, f16, bf16, q8_0 or q4_0).

            Examples:
              qtool merge fixtures/tiny-llama --adapter fixtures/lora/lora --output out/merged
              qtool merge base --adapter a --adapter b=0.5 --output merged --dtype bf16
              qtool merge tiny.nf4 --adapter fixtures/lora/lora --output merged.nf4
              qtool merge tiny.nf4 --adapter fixtures/lora/lora --output tuned.gguf
              qtool merge fixtures/tiny-llama --adapter fixtures/lora/dora --dry-run
            """)

    @Argument(help: "The base: a safetensors file or model folder, a .nf4 file or a bitsandbytes folder.")
    var base: String

    @OptionGroup var inputOptions: InputOptions

    @Option(
        name: .customLong("adapter"),
        help: ArgumentHelp("A PEFT or mlx-lm adapter folder, with an optional weight (repeatable).", valueName: "DIR[=WEIGHT]"))
    var adapters: [String] = []

    @Option(name: [.customShort("o"), .long], help: "Where to write: a folder, a .safetensors file, a .nf4 file or a .gguf file.")
    var output: String?

    @OptionGroup var floats: FloatOutputOptions

    @Option(help: "The output's format (default: the base's).")
    var format: MergeOutputFormat?

    @Flag(help: "Do not measure what survives of the update in 4-bit outputs (the measure reads each changed tensor again).")
    var noFidelity = false

    @Flag(help: "List the tensors that would change and the scale applied; write nothing.")
    var dryRun = false

    @OptionGroup var threading: ThreadOptions

    @OptionGroup var report: ReportOptions

    func validate() throws {
        guard !adapters.isEmpty else { throw ValidationError("give at least one --adapter") }
        try PathArguments.validate([("BASE", base)] + (output.map { [("--output", $0)] } ?? []))
        for spec in adapters { _ = try AdapterFolder.parseSpec(spec) }
        guard dryRun || output != nil else { throw ValidationError("--output is required (or use --dry-run)") }
        if let format {
            if format != .safetensors && format != .gguf && floats.dtype != nil {
                throw ValidationError("--dtype applies to float output, not --format \(format.rawValue)")
            }
            if let output { try format.checkOutputName(output) }
        }
        try floats.validate()
        if let output { try floats.validate(output: output) }
    }

    func run() throws {
        threading.apply()
        let started = Date()
        let specs = try adapters.map(AdapterFolder.parseSpec)
        let loaded = try specs.map { (adapter: try AdapterFolder.load($0.path), weight: $0.weight) }
        let checkpoint = try Checkpoint.open(base, allowExternal: inputOptions.allowExternal)
        let plan = try MergePlan(adapters: loaded, base: checkpoint.entries.map { ($0.name, $0.dtype, $0.shape) })
        if dryRun { return printPlan(plan, checkpoint: checkpoint, adapters: loaded) }

        let output = output!
        let format = format ?? defaultFormat(checkpoint, output: output)
        try format.checkOutputName(output)
        let target: OutputTarget
        switch format {
        case .nf4: target = .nf4(output)
        case .bnb: target = output.hasSuffix(".safetensors") ? .safetensorsFile(output) : .folder(output)
        case .safetensors, .gguf: target = OutputTarget(output)
        }
        let castTo = floats.targetDType
        let total = checkpoint.entries.reduce(0) { $0 + $1.storedBytes }
        let progress = ProgressBar(label: "merge", total: total, quiet: report.quiet)
        var writer = CheckpointWriter(target: target, metadata: checkpoint.metadata, companions: checkpoint.companions, progress: progress)
        writer.maxShardSize = floats.shardLimit
        writer.shardGroups = checkpoint.shardGroups
        writer.castDType = format == .safetensors ? castTo : nil
        if format == .gguf { writer.castDType = nil }
        let selection = TensorSelection()
        let fidelity = FidelityList()
        var changed = 0
        // Float outputs: safetensors, and GGUF (which encodes the merged floats itself).
        let floatOutput = format == .safetensors || format == .gguf
        let produce: (Int) throws -> OutputItem = { index in
            let entry = checkpoint.entries[index]
            let change = plan.changes[entry.name]
            if change != nil { changed += 1 }
            let output: MergeStage.Output
            switch try entry.load() {
            case .quantized(let q):
                if !noFidelity, !floatOutput, let change, !change.terms.isEmpty, change.replacement == nil {
                    let (merged, measured) = try MergeStage.mergeMeasuring(quantized: q, change: change, name: entry.name, path: base)
                    output = merged
                    fidelity.append(measured)
                } else {
                    output = try MergeStage.merge(
                        quantized: q, change: change, name: entry.name,
                        floatType: floatOutput ? castTo ?? Self.floatType(q.originalDType) : nil, path: base)
                }
                if case .quantized = output { progress.advance(by: q.storedBytes) }
            case .plain(let tensor):
                let quantize = !floatOutput && selection.shouldQuantize(name: entry.name, dtype: tensor.dtype, shape: tensor.shape)
                if !noFidelity, quantize, let change, !change.terms.isEmpty, change.replacement == nil {
                    let (merged, measured) = try MergeStage.mergeMeasuring(
                        plain: tensor, change: change, name: entry.name, castTo: castTo, path: base)
                    output = merged
                    fidelity.append(measured)
                } else {
                    output = try MergeStage.merge(
                        plain: tensor, change: change, name: entry.name, castTo: castTo, quantize: quantize, path: base)
                }
                if quantize { progress.advance(by: tensor.byteCount) }
            }
            switch output {
            case .plain(let payload): return .plain(payload)
            case .quantized(let q): return .quantized(q)
            }
        }
        let written: [String]
        if format == .gguf {
            let gguf = GGUFModelOutput(
                path: output, checkpoint: checkpoint, source: base, type: floats.dtype?.ggmlType, report: report, progress: progress)
            written = try gguf.write(produce: produce)
        } else {
            written = try writer.write(names: checkpoint.entries.map(\.name), produce: produce)
        }
        progress.finish()
        let seconds = Date().timeIntervalSince(started)
        let measured = fidelity.sorted
        let medianCosine = FidelityList.median(measured.map(\.updateCosine))
        let medianCodes = FidelityList.median(measured.map(\.codesChanged)) ?? 0
        if let medianCosine, medianCosine < 0.5 {
            Report.warning(
                output,
                String(
                    format:
                        "requantizing to 4 bits erased most of the adapter's update (median cosine %.2f between the update that landed and the intended one; %.1f%% of the 4-bit codes changed): merge into a float output (--dtype bf16) to keep it",
                    medianCosine, medianCodes * 100))
        }
        var fidelityMembers: [JSONMember] = []
        if let medianCosine {
            fidelityMembers.append(
                JSONMember(
                    key: "fidelity",
                    value: .object([
                        JSONMember(key: "median_update_cosine", value: .double(medianCosine)),
                        JSONMember(key: "median_codes_changed", value: .double(medianCodes)),
                        JSONMember(
                            key: "tensors",
                            value: .array(measured.map(\.json))),
                    ])))
        }
        if report.json {
            Report.printJSON(
                JSONValue.object(
                    fidelityMembers + [
                        JSONMember(key: "base", value: .string(base)),
                        JSONMember(key: "adapters", value: .array(loaded.map { adapterJSON($0.adapter, weight: $0.weight) })),
                        JSONMember(key: "output", value: .string(output)),
                        JSONMember(key: "format", value: .string(format.rawValue)),
                        JSONMember(key: "files", value: .array(written.map(JSONValue.string))),
                        JSONMember(key: "tensors", value: .integer(checkpoint.entries.count)),
                        JSONMember(key: "changed_tensors", value: .integer(changed)),
                        JSONMember(key: "seconds", value: .double(seconds)),
                    ]))
        } else if !report.quiet {
            Report.note(
                String(
                    format: "wrote %@: %d adapter%@ merged into %d of %d tensors (%@) in %.2f s", output, loaded.count,
                    loaded.count == 1 ? "" : "s", changed, checkpoint.entries.count, format.rawValue, seconds)
                    + (medianCosine.map {
                        String(
                            format: "; the 4-bit update keeps a median cosine of %.3f to the intended one, %.1f%% of codes changed", $0,
                            medianCodes * 100)
                    } ?? ""))
        }
    }

    /// The base's own format, unless --dtype asks for floats or OUTPUT's name says .nf4.
    private func defaultFormat(_ checkpoint: Checkpoint, output: String) -> MergeOutputFormat {
        if output.hasSuffix(".gguf") { return .gguf }
        if output.hasSuffix(".nf4") && floats.dtype == nil { return .nf4 }
        guard checkpoint.isQuantized, floats.dtype == nil else { return .safetensors }
        return checkpoint.format == .nf4 ? .nf4 : .bnb
    }

    private static func floatType(_ dtype: DType) -> DType { dtype == .f64 ? .f32 : dtype }

    private func adapterJSON(_ adapter: LoRAAdapter, weight: Float) -> JSONValue {
        .object([
            JSONMember(key: "path", value: .string(adapter.path)),
            JSONMember(key: "layout", value: .string(adapter.layout.rawValue)),
            JSONMember(key: "weight", value: .double(Double(weight))),
            JSONMember(key: "modules", value: .integer(adapter.modules.count)),
            JSONMember(key: "replaced_tensors", value: .integer(adapter.replacements.count)),
        ])
    }

    /// `--dry-run`: each tensor that would change, in the base's order, and how.
    private func printPlan(_ plan: MergePlan, checkpoint: Checkpoint, adapters: [(adapter: LoRAAdapter, weight: Float)]) {
        var rows: [(name: String, changes: [(adapter: Int, kind: String, rank: Int?, scale: Float?)])] = []
        for entry in checkpoint.entries {
            guard let merge = plan.changes[entry.name] else { continue }
            var changes: [(Int, String, Int?, Float?)] = []
            if let replacement = merge.replacement { changes.append((replacement.adapterIndex, "replace", nil, nil)) }
            for term in merge.terms {
                let kind = merge.isBias ? "lora bias" : term.module.isDoRA ? "dora" : term.module.isEmbedding ? "lora embedding" : "lora"
                changes.append((term.adapterIndex, kind, term.module.rank, term.scale))
            }
            rows.append((entry.name, changes))
        }
        if report.json {
            Report.printJSON(
                JSONValue.object([
                    JSONMember(key: "base", value: .string(base)),
                    JSONMember(key: "adapters", value: .array(adapters.map { adapterJSON($0.adapter, weight: $0.weight) })),
                    JSONMember(
                        key: "changes",
                        value: .array(
                            rows.map { row in
                                .object([
                                    JSONMember(key: "tensor", value: .string(row.name)),
                                    JSONMember(
                                        key: "changes",
                                        value: .array(
                                            row.changes.map { change in
                                                .object(
                                                    [
                                                        JSONMember(key: "adapter", value: .integer(change.adapter)),
                                                        JSONMember(key: "kind", value: .string(change.kind)),
                                                    ] + (change.rank.map { [JSONMember(key: "rank", value: .integer($0))] } ?? [])
                                                        + (change.scale.map { [JSONMember(key: "scale", value: .double(Double($0)))] } ?? [])
                                                )
                                            })),
                                ])
                            })),
                ]))
            return
        }
        for (index, item) in adapters.enumerated() {
            print(
                "adapter \(index): \(TerminalText.escaped(item.adapter.path)) (\(item.adapter.layout.rawValue), weight \(Self.format(item.weight)))"
            )
        }
        let width = rows.map { TerminalText.escaped($0.name).count }.max() ?? 0
        for row in rows {
            let text = row.changes.map { change in
                var words = "\(change.kind)"
                if let rank = change.rank { words += " r=\(rank)" }
                if let scale = change.scale { words += " scale \(Self.format(scale))" }
                return words + (adapters.count > 1 ? " (adapter \(change.adapter))" : "")
            }.joined(separator: ", ")
            print(TerminalText.escaped(row.name).padding(toLength: width, withPad: " ", startingAt: 0) + "  " + text)
        }
        print("\(rows.count) of \(checkpoint.entries.count) tensors would change")
    }

    static func format(_ value: Float) -> String {
        let text = String(format: "%.6g", Double(value))
        return text
    }
}

/// Opening adapter folders from the command line: `DIR[=WEIGHT]`, PEFT's files or mlx-lm's.
enum AdapterFolder {
    static let peftWeights = "adapter_model.safetensors"
    static let mlxWeights = "adapters.safetensors"
    static let configName = "adapter_config.json"

    /// Splits `DIR=WEIGHT` at its last `=` (a path that exists as given keeps its `=`). A weight
    /// that is not a finite float32 number is an argument mistake.
    static func parseSpec(_ spec: String) throws -> (path: String, weight: Float) {
        guard !spec.isEmpty else { throw ValidationError("--adapter needs a folder, not an empty string") }
        guard let equals = spec.lastIndex(of: "="), !FilePaths.exists(spec) else { return (spec, 1) }
        let path = String(spec[..<equals])
        let text = String(spec[spec.index(after: equals)...])
        guard !path.isEmpty else { throw ValidationError("--adapter '\(spec)' has a weight but no folder") }
        guard let weight = Double(text), weight.isFinite else {
            throw ValidationError("--adapter '\(spec)': the weight '\(text)' is not a number (DIR=WEIGHT, e.g. \(path)=0.5)")
        }
        guard Float(weight).isFinite else { throw ValidationError("--adapter '\(spec)': the weight \(text) is beyond float32's range") }
        return (path, Float(weight))
    }

    static func load(_ path: String) throws -> LoRAAdapter {
        guard FilePaths.exists(path) else { throw LoRAError.missingFile(path: path, problem: "no such adapter folder") }
        let folder = FilePaths.isDirectory(path) ? path : FilePaths.directory(of: path)
        let weights: String
        if !FilePaths.isDirectory(path) {
            guard path.hasSuffix(".safetensors") else {
                let hint = FilePaths.lastComponent(of: path) == configName ? " (give its folder, '\(folder)')" : ""
                throw LoRAError.missingFile(
                    path: path, problem: "--adapter takes an adapter folder (or its .safetensors weights), not this file\(hint)")
            }
            weights = path
        } else if FilePaths.exists(folder + "/" + peftWeights) {
            weights = folder + "/" + peftWeights
        } else if FilePaths.exists(folder + "/" + mlxWeights) {
            weights = folder + "/" + mlxWeights
        } else if FilePaths.exists(folder + "/adapter_model.bin") {
            throw LoRAError.pickled(path: folder)
        } else {
            throw LoRAError.missingFile(path: folder, problem: "no \(peftWeights) (PEFT) or \(mlxWeights) (mlx-lm)")
        }
        let configPath = folder + "/" + configName
        guard FilePaths.exists(configPath) else { throw LoRAError.missingFile(path: folder, problem: "no \(configName)") }
        let configFile = try MappedFile(path: configPath)
        let config: JSONValue
        do {
            config = try configFile.withBytes(in: 0..<configFile.count) { try JSONParser.parse($0) }
        } catch {
            throw LoRAError.invalidConfig(path: folder, problem: "not valid JSON: \(error)")
        }
        let tensors = try SafeTensorsFile(path: weights).tensors()
        let layout =
            LoRAAdapter.layout(of: tensors)
            ?? (config["peft_type"] != nil ? .peft : config["lora_parameters"] != nil || weights.hasSuffix(mlxWeights) ? .mlx : .peft)
        return try LoRAAdapter(path: folder, config: config, tensors: tensors, layout: layout)
    }
}

extension MergeOutputFormat {
    /// An OUTPUT whose name says another format is a mistake, not a wish.
    func checkOutputName(_ output: String) throws {
        if output.hasSuffix(".h5") || output.hasSuffix(".hdf5") {
            throw ValidationError("OUTPUT '\(output)' names an HDF5 file; merge writes safetensors, .nf4 or bitsandbytes outputs")
        }
        if self == .nf4, output.hasSuffix(".safetensors") {
            throw ValidationError("--format nf4 writes a .nf4 file, but OUTPUT '\(output)' names a .safetensors file")
        }
        if self != .nf4, output.hasSuffix(".nf4") {
            throw ValidationError("OUTPUT '\(output)' ends in .nf4 but --format is \(rawValue); use --format nf4 or another name")
        }
        if (self == .gguf) != output.hasSuffix(".gguf") {
            throw ValidationError("--format gguf goes with an OUTPUT ending in .gguf ('\(output)' with --format \(rawValue))")
        }
    }
}

extension MergeFidelity {
    /// A tensor's entry in `merge --json`'s fidelity and `verify --json`'s tensors.
    var json: JSONValue {
        var members = [
            JSONMember(key: "name", value: .string(name)), JSONMember(key: "update_cosine", value: .double(updateCosine)),
            JSONMember(key: "update_relative_norm", value: .double(relativeNorm)),
        ]
        if codesChanged.isFinite { members.append(JSONMember(key: "codes_changed", value: .double(codesChanged))) }
        return .object(members)
    }
}

/// What the merge measured of each 4-bit tensor, from whichever thread merged it.
final class FidelityList: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [MergeFidelity] = []

    func append(_ item: MergeFidelity) {
        lock.lock()
        items.append(item)
        lock.unlock()
    }

    var sorted: [MergeFidelity] {
        lock.lock()
        defer { lock.unlock() }
        return items.sorted { $0.name < $1.name }
    }

    static func median(_ values: [Double]) -> Double? {
        guard !values.isEmpty else { return nil }
        let sorted = values.sorted()
        return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
    }
}
