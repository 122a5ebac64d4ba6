import ArgumentParser
import Foundation
import LanguageModel
import LoRAMerge
import NF4Format
import Quantization
import TensorCore
import Tokenizer

/// `qtool verify`: checks that gate a CI job on an artifact's integrity and on its error against
/// its source. Exit 0 when every check holds, 1 when one fails, 2 on bad input.
struct VerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Check an artifact's integrity and its error against its source; exit 1 when a check fails.",
        discussion: """
            ARTIFACT is a .nf4 file, a safetensors file or model folder, or a bitsandbytes 4-bit folder.
            Always checked: integrity (a .nf4's header and every section's checksum, every byte of
            the file accounted for; every tensor of a safetensors file or folder readable; a
            bitsandbytes quant_state consistent with its codes), finite values (no NaN or infinity
            in float tensors or block scales), and, when config.json is there, that the tensors fit
            it (layers, hidden size, heads, vocabulary) and that tokenizer.json fits the vocabulary.

            --against SOURCE: each tensor (dequantized) against the source's: rmse, max abs error,
            cosine, SQNR in dB, bits per parameter; --max-rmse, --min-cosine, --min-sqnr-db and
            --max-abs-error fail the check when the worst tensor is past them.

            --data FILE.jsonl (cut to --max-seq-len) or --text FILE --ctx N, with --against: both
            models on the same tokens, as llama-perplexity --kl-divergence reports it: perplexities
            and their ratio, KL divergence (mean, median, p99, max), same top token, RMS Δp;
            --max-ppl-ratio, --max-kld, --min-same-top.

            --adapter DIR: the adapter fits ARTIFACT. With --base BASE: ARTIFACT as the merge of the
            adapter into BASE — the update that landed against the intended one per tensor
            (--min-update-cosine on the median), and with --data the model against BASE + adapter
            un-merged.

            Exit status: 0 every check holds, 1 a check failed, 2 bad input (a missing, unreadable
            or malformed file). --json prints the report; --junit FILE writes JUnit XML, a test
            case per check.

            Examples:
              qtool verify model.nf4
              qtool verify model.nf4 --against model/ --min-cosine 0.99 --min-sqnr-db 18 --junit verify.xml
              qtool verify model.nf4 --against model/ --data eval.jsonl --max-kld 0.05
              qtool verify merged.nf4 --base model.nf4 --adapter out/lora --min-update-cosine 0.9
            """)

    @Argument(help: "A .nf4 file, a safetensors file or model folder, or a bitsandbytes folder.")
    var artifact: String

    @Option(help: "The checkpoint ARTIFACT was made from, to measure its error against.")
    var against: String?

    @Option(help: "Fail when a tensor's rmse against the source is above this.")
    var maxRmse: Double?

    @Option(help: "Fail when a tensor's cosine similarity to the source is below this.")
    var minCosine: Double?

    @Option(help: "Fail when a tensor's SQNR (dB) against the source is below this.")
    var minSqnrDb: Double?

    @Option(help: "Fail when a tensor's largest absolute error is above this.")
    var maxAbsError: Double?

    @Option(help: "With --against: JSON Lines of {\"text\"} to compare the two models' next-token distributions on.")
    var data: String?

    @Option(help: "With --against: a text file compared by llama-perplexity's chunking (with --ctx).")
    var text: String?

    @Option(help: "Chunk length in tokens for --text.")
    var ctx: Int?

    @Option(help: "Tokens kept of each --data line (default: the model's max_position_embeddings).")
    var maxSeqLen: Int?

    @Option(help: "Sequences run together for --data and --text.")
    var batchSize = 4

    @Option(help: "Fail when the artifact's perplexity over the source's is above this.")
    var maxPplRatio: Double?

    @Option(help: "Fail when the mean KL divergence from the source is above this.")
    var maxKld: Double?

    @Option(help: "Fail when the share of positions where both pick the same top token is below this.")
    var minSameTop: Double?

    @Option(help: "A LoRA adapter (DIR or DIR=WEIGHT): alone, checked to fit ARTIFACT; with --base, ARTIFACT is checked as its merge.")
    var adapter: String?

    @Option(help: "With --adapter: the model the adapter was merged into to make ARTIFACT.")
    var base: String?

    @Option(
        help: "With --base and --adapter: fail when the median cosine between the update that landed and the intended one is below this.")
    var minUpdateCosine: Double?

    @Option(help: "Write a JUnit XML report (a test case per check) to this file.")
    var junit: String?

    @OptionGroup var inputOptions: InputOptions

    @OptionGroup var threading: ThreadOptions

    @OptionGroup var report: ReportOptions

    func validate() throws {
        try PathArguments.validate([("ARTIFACT", artifact)] + (against.map { [("--against", $0)] } ?? []))
        if against == nil, [maxRmse, minCosine, minSqnrDb, maxAbsError].contains(where: { $0 != nil }) {
            throw ValidationError("--max-rmse, --min-cosine, --min-sqnr-db and --max-abs-error need --against SOURCE")
        }
        let thresholds = [
            ("--max-rmse", maxRmse), ("--min-cosine", minCosine), ("--min-sqnr-db", minSqnrDb), ("--max-abs-error", maxAbsError),
            ("--max-ppl-ratio", maxPplRatio), ("--max-kld", maxKld), ("--min-same-top", minSameTop),
        ]
        for (name, value) in thresholds {
            if let value, !value.isFinite { throw ValidationError("\(name) must be a finite number") }
        }
        if base != nil && adapter == nil { throw ValidationError("--base needs --adapter DIR (the adapter merged into it)") }
        if minUpdateCosine != nil && base == nil { throw ValidationError("--min-update-cosine needs --base BASE and --adapter DIR") }
        if let adapter { _ = try AdapterFolder.parseSpec(adapter) }
        if let base { try PathArguments.validate([("--base", base)]) }
        if data != nil || text != nil {
            guard against != nil || base != nil else {
                throw ValidationError("--data and --text compare against a source: give --against SOURCE (or --base BASE --adapter DIR)")
            }
            guard against == nil || base == nil else { throw ValidationError("give --against or --base, not both, with --data or --text") }
            guard data == nil || text == nil else { throw ValidationError("give --data or --text, not both") }
        }
        if text != nil {
            guard let ctx, ctx >= 2 else { throw ValidationError("--text needs --ctx N (at least 2)") }
        }
        if data == nil && text == nil, [maxPplRatio, maxKld, minSameTop].contains(where: { $0 != nil }) {
            throw ValidationError("--max-ppl-ratio, --max-kld and --min-same-top need --data or --text")
        }
        guard batchSize >= 1 else { throw ValidationError("--batch-size must be at least 1") }
    }

    func run() throws {
        threading.apply()
        let checkpoint = try Checkpoint.open(artifact, allowExternal: inputOptions.allowExternal)
        var checks = Integrity.checks(checkpoint)
        var tensorReports: [TensorError] = []
        var totals: ErrorSums?
        if let against {
            let source = try Checkpoint.open(against, allowExternal: inputOptions.allowExternal)
            let comparison = try TensorComparisonReport.compare(checkpoint, against: source, sourcePath: against)
            tensorReports = comparison.tensors
            totals = comparison.total
            checks.append(
                VerifyCheck(
                    name: "tensors-match", ok: comparison.problems.isEmpty, detail: comparison.problems.first ?? "",
                    value: Double(comparison.problems.count)))
            func worst(_ name: String, _ values: [Double], threshold: Double?, largest: Bool, unit: String) {
                guard let value = largest ? values.max() : values.min() else { return }
                let tensor = tensorReports.first { ($0.metric(name) ?? .nan) == value }?.name ?? ""
                let bound = threshold.map { (largest ? " (at most " : " (at least ") + format($0) + unit + ")" } ?? ""
                checks.append(
                    VerifyCheck(
                        name, value, bound: threshold, largest: largest, "worst tensor '\(tensor)': \(format(value))\(unit)\(bound)"))
            }
            worst("rmse", tensorReports.map(\.rmse), threshold: maxRmse, largest: true, unit: "")
            worst("max_abs_error", tensorReports.map(\.maxAbsError), threshold: maxAbsError, largest: true, unit: "")
            worst("cosine", tensorReports.map(\.cosine), threshold: minCosine, largest: false, unit: "")
            worst("sqnr_db", tensorReports.map(\.sqnrDB), threshold: minSqnrDb, largest: false, unit: " dB")
            if report.json == false && !report.quiet {
                let total = comparison.total
                print(
                    String(
                        format: "against %@: %d tensors, rmse %.4g, cosine %.6f, SQNR %.2f dB, %.3f bits per parameter",
                        TerminalText.escaped(against), tensorReports.count, total.rmse, total.cosine, total.sqnrDB, total.bitsPerParameter))
            }
        }
        var fidelity: [MergeFidelity] = []
        if let adapter {
            let spec = try AdapterFolder.parseSpec(adapter)
            let loaded = try AdapterFolder.load(spec.path)
            if let base {
                let result = try MergeCheck.fidelity(
                    artifact: checkpoint, base: base, adapter: loaded, weight: spec.weight, options: inputOptions)
                checks.append(contentsOf: result.checks)
                fidelity = result.tensors
                if let median = FidelityList.median(fidelity.map(\.updateCosine)) {
                    let ok = minUpdateCosine.map { median >= $0 } ?? true  // the hint below depends on it
                    let quantized = checkpoint.isQuantized
                    var detail = String(
                        format: "median cosine %.4f between the update that landed and the intended one over %d tensors", median,
                        fidelity.count)
                    if quantized, let codes = FidelityList.median(fidelity.map(\.codesChanged)) {
                        detail += String(format: ", %.1f%% of 4-bit codes changed", codes * 100)
                    }
                    if !ok && quantized {
                        detail += "; requantization rounded the update away: merge into a float output (--dtype bf16) instead"
                    }
                    checks.append(VerifyCheck("update_cosine", median, bound: minUpdateCosine, largest: false, detail))
                }
            } else {
                do {
                    _ = try MergePlan(adapters: [(loaded, spec.weight)], base: checkpoint.entries.map { ($0.name, $0.dtype, $0.shape) })
                    checks.append(VerifyCheck(name: "adapter-fits", ok: true, detail: "\(loaded.modules.count) modules"))
                } catch {
                    checks.append(VerifyCheck(name: "adapter-fits", ok: false, detail: Integrity.problem(error)))
                }
            }
        }
        var quality: QualityComparison?
        if data != nil || text != nil {
            let comparison = try compareQuality()
            quality = comparison
            func add(_ name: String, _ value: Double, _ threshold: Double?, largest: Bool, _ text: String) {
                checks.append(VerifyCheck(name, value, bound: threshold, largest: largest, text))
            }
            add(
                "ppl_ratio", comparison.perplexityRatio, maxPplRatio, largest: true,
                String(
                    format: "perplexity %.4f against the source's %.4f over %d tokens", comparison.artifactPerplexity,
                    comparison.sourcePerplexity, comparison.tokens))
            add(
                "kld", comparison.meanDivergence, maxKld, largest: true,
                String(
                    format: "mean KL divergence %.6f (median %.6f, 99%% %.6f, max %.6f)", comparison.meanDivergence,
                    comparison.divergencePercentile(50), comparison.divergencePercentile(99), comparison.divergences.max() ?? 0))
            add(
                "same_top", comparison.sameTopShare, minSameTop, largest: false,
                String(
                    format: "the same top token at %.2f%% of positions; RMS Δp %.4f", comparison.sameTopShare * 100, comparison.rmsDeltaP))
        }
        let ok = checks.allSatisfy(\.ok)
        if let junit { try JUnitReport.write(checks, suite: "qtool verify \(artifact)", to: junit) }
        if report.json {
            var members = [
                JSONMember(key: "ok", value: .bool(ok)),
                JSONMember(key: "checks", value: .array(checks.map(\.json))),
            ]
            let fidelityJSON = fidelity.map(\.json)
            if !tensorReports.isEmpty || !fidelityJSON.isEmpty {
                members.append(JSONMember(key: "tensors", value: .array(tensorReports.map(\.json) + fidelityJSON)))
            }
            if let totals {
                members.append(
                    JSONMember(
                        key: "total",
                        value: .object([
                            JSONMember(key: "rmse", value: .double(totals.rmse)),
                            JSONMember(key: "max_abs_error", value: .double(totals.maxAbsError)),
                            JSONMember(key: "cosine", value: .double(totals.cosine)),
                            JSONMember(key: "sqnr_db", value: .double(totals.sqnrDB)),
                            JSONMember(key: "bits_per_parameter", value: .double(totals.bitsPerParameter)),
                        ])))
            }
            if let quality {
                members.append(
                    JSONMember(
                        key: "quality",
                        value: .object([
                            JSONMember(key: "ppl", value: .double(quality.artifactPerplexity)),
                            JSONMember(key: "ppl_source", value: .double(quality.sourcePerplexity)),
                            JSONMember(key: "ppl_ratio", value: .double(quality.perplexityRatio)),
                            JSONMember(key: "kld_mean", value: .double(quality.meanDivergence)),
                            JSONMember(key: "kld_median", value: .double(quality.divergencePercentile(50))),
                            JSONMember(key: "kld_p99", value: .double(quality.divergencePercentile(99))),
                            JSONMember(key: "kld_max", value: .double(quality.divergences.max() ?? 0)),
                            JSONMember(key: "same_top", value: .double(quality.sameTopShare)),
                            JSONMember(key: "rms_delta_p", value: .double(quality.rmsDeltaP)),
                            JSONMember(key: "tokens", value: .integer(quality.tokens)),
                        ])))
            }
            Report.printJSON(.object(members))
        } else {
            for check in checks where !(report.quiet && check.ok) {
                print(
                    "\(check.ok ? "ok  " : "FAIL") \(check.name)" + (check.detail.isEmpty ? "" : ": " + TerminalText.escaped(check.detail)))
            }
        }
        if !ok { throw ExitCode(1) }
    }
}

extension VerifyCommand {
    /// Both models run on the same tokens (the source's tokenizer): the artifact's next-token
    /// distributions against the source's.
    func compareQuality() throws -> QualityComparison {
        let threads = ParallelismSettings.threadCount
        // The source: --against, or --base with the adapter applied un-merged.
        let source = try LoadedModel.open(
            against ?? base!, adapters: against == nil ? [adapter!] : [], allowExternal: inputOptions.allowExternal, threads: threads)
        let model = try LoadedModel.open(artifact, adapters: [], allowExternal: inputOptions.allowExternal, threads: threads)
        guard source.model.config.vocabSize == model.model.config.vocabSize else {
            throw CommandError(
                path: artifact, "its vocabulary (\(model.model.config.vocabSize)) is not the source's (\(source.model.config.vocabSize))")
        }
        let tokenizer = try source.tokenizer()
        let vocab = source.model.config.vocabSize
        var comparison = QualityComparison()
        // The batches, and the position each is scored from: lines whole, or llama-perplexity's
        // chunks with their second half scored.
        let batches: [[[Int]]]
        let scoredFrom: Int
        if let data {
            let sequences = try EvalCommand.sequences(
                data, tokenizer: tokenizer, limit: maxSeqLen ?? source.model.config.maxPositions, vocabulary: vocab)
            batches = stride(from: 0, to: sequences.count, by: batchSize).map {
                Array(sequences[$0..<min(sequences.count, $0 + batchSize)])
            }
            scoredFrom = 0
        } else if let text, let ctx {
            let tokens = try EvalCommand.textTokens(text, tokenizer: tokenizer, vocabulary: vocab, ctx: ctx)
            let chunks = LanguageModel.perplexityChunks(tokens, context: ctx, bos: EvalCommand.chunkBOS(tokenizer))
            batches = stride(from: 0, to: chunks.count, by: batchSize).map { Array(chunks[$0..<min(chunks.count, $0 + batchSize)]) }
            scoredFrom = ctx / 2
        } else {
            return comparison
        }
        let progress = ProgressBar(
            label: "verify", total: batches.reduce(0) { $0 + $1.reduce(0) { $0 + $1.count } }, unit: .tokens, quiet: report.quiet)
        for batch in batches {
            source.model.compare(with: model.model, batch, scoredFrom: scoredFrom, into: &comparison)
            progress.advance(by: batch.reduce(0) { $0 + $1.count })
        }
        progress.finish()
        guard comparison.tokens > 0 else { throw CommandError(path: data ?? text ?? artifact, "no position to compare") }
        return comparison
    }
}

/// `verify --base --adapter`: a merged artifact against its base and adapter, tensor by tensor.
enum MergeCheck {
    static func fidelity(artifact: Checkpoint, base: String, adapter: LoRAAdapter, weight: Float, options: InputOptions) throws
        -> (checks: [VerifyCheck], tensors: [MergeFidelity])
    {
        let baseCheckpoint = try Checkpoint.open(base, allowExternal: options.allowExternal)
        let plan: MergePlan
        do {
            plan = try MergePlan(adapters: [(adapter, weight)], base: baseCheckpoint.entries.map { ($0.name, $0.dtype, $0.shape) })
        } catch {
            return (
                [VerifyCheck(name: "adapter-fits", ok: false, detail: "the adapter does not fit --base: " + Integrity.problem(error))], []
            )
        }
        let baseEntries = Dictionary(baseCheckpoint.entries.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        var tensors: [MergeFidelity] = []
        var problems: [String] = []
        let threads = ParallelismSettings.threadCount
        for entry in artifact.entries {
            guard let change = plan.changes[entry.name], !change.terms.isEmpty, change.replacement == nil else { continue }
            guard let baseEntry = baseEntries[entry.name], baseEntry.shape == entry.shape else {
                problems.append("'\(entry.name)' is not in --base with its shape")
                continue
            }
            let baseStored = try baseEntry.load()
            let baseRows: any FloatRowSource
            switch baseStored {
            case .plain(let tensor): baseRows = tensor
            case .quantized(let q): baseRows = QuantizedRows(q)
            }
            let merged = try MergedTensor(base: baseRows, merge: change, dtype: .f32, name: entry.name, threads: threads)
            switch try entry.load() {
            case .quantized(let output):
                // The base as the artifact stores it: its own 4-bit form when that has the same
                // settings, else quantized with them.
                let baseCodes: QuantizedTensor
                if case .quantized(let q) = baseStored, q.quantType == output.quantType, q.blocksize == output.blocksize,
                    q.isDoubleQuantized == output.isDoubleQuantized
                {
                    baseCodes = q
                } else {
                    let floats: any TensorPayload
                    switch baseStored {
                    case .plain(let tensor): floats = tensor
                    case .quantized(let q): floats = q.dequantizedPayload(to: .f32, threads: threads)
                    }
                    baseCodes = try QuantizedTensor.quantize(
                        floats, type: output.quantType, blocksize: output.blocksize, doubleQuantization: output.isDoubleQuantized,
                        threads: threads)
                }
                tensors.append(
                    try MergeFidelity.measure(name: entry.name, merged: merged, base: baseRows, baseCodes: baseCodes, output: output))
            case .plain(let output):
                tensors.append(
                    try MergeFidelity.measure(
                        name: entry.name, merged: merged, base: baseRows, landedBase: baseRows, landedOutput: output, codes: nil))
            }
        }
        var checks = [
            VerifyCheck(
                name: "adapter-fits", ok: problems.isEmpty,
                detail: problems.first ?? "\(tensors.count) tensors the adapter changes", value: Double(problems.count))
        ]
        if tensors.isEmpty && problems.isEmpty {
            checks.append(VerifyCheck(name: "update_cosine", ok: false, detail: "the adapter changes no tensor of ARTIFACT"))
        }
        return (checks, tensors)
    }
}

/// One check of `verify`.
struct VerifyCheck {
    let name: String
    let ok: Bool
    var detail = ""
    var value: Double?
    var threshold: Double?

    init(name: String, ok: Bool, detail: String = "", value: Double? = nil, threshold: Double? = nil) {
        self.name = name
        self.ok = ok
        self.detail = detail
        self.value = value
        self.threshold = threshold
    }

    /// A measured value against an optional bound: at most `bound` when `largest`, else at least.
    init(_ name: String, _ value: Double, bound: Double?, largest: Bool, _ detail: String) {
        let ok = bound.map { largest ? value <= $0 : value >= $0 } ?? true
        self.init(name: name, ok: ok, detail: detail, value: value, threshold: bound)
    }

    var json: JSONValue {
        var members = [JSONMember(key: "name", value: .string(name)), JSONMember(key: "ok", value: .bool(ok))]
        if let value { members.append(JSONMember(key: "value", value: .double(value))) }
        if let threshold { members.append(JSONMember(key: "threshold", value: .double(threshold))) }
        if !detail.isEmpty { members.append(JSONMember(key: "detail", value: .string(detail))) }
        return .object(members)
    }
}

private func format(_ value: Double) -> String { String(format: "%.6g", value) }

/// The checks that need nothing but the artifact.
enum Integrity {
    static func checks(_ checkpoint: Checkpoint) -> [VerifyCheck] {
        var problems: [String] = []
        var nonFinite: [String] = []
        var tensors: [String: StoredTensor] = [:]
        if let file = checkpoint.nf4File, let stray = file.firstStrayByte() {
            problems.append("byte \(stray) lies outside every section and is not zero padding")
        }
        // The tensors are read on all threads (each one's checksum and values on its own); the
        // findings are kept in the order of the tensors.
        let entries = checkpoint.entries
        let findings = FindingList(count: entries.count)
        parallelForChunks(count: entries.count, chunk: 1, threads: ParallelismSettings.threadCount) { range in
            for index in range {
                let entry = entries[index]
                var finding = Finding()
                do {
                    let stored = try entry.load()
                    finding.stored = stored
                    switch stored {
                    case .plain(let tensor):
                        // Every byte is read: a safetensors tensor past a truncated end fails here.
                        if !tensor.isAllFinite {
                            finding.nonFinite = true
                        }
                    case .quantized(let q):
                        if (try? q.checkScales(name: entry.name)) == nil { finding.nonFinite = true }
                        if q.packed.shape.elementCount != (q.shape.elementCount + 1) / 2 {
                            finding.problem =
                                "tensor '\(entry.name)': \(q.packed.shape.elementCount) bytes of codes for \(q.shape.elementCount) values"
                        }
                    }
                } catch {
                    finding.problem = "tensor '\(entry.name)': \(Self.problem(error))"
                }
                findings.set(index, finding)
            }
        }
        for (index, entry) in entries.enumerated() {
            let finding = findings.get(index)
            if let problem = finding.problem { problems.append(problem) }
            if finding.nonFinite { nonFinite.append(entry.name) }
            if let stored = finding.stored { tensors[entry.name] = stored }
        }
        var companions: [String: [UInt8]] = [:]
        for companion in checkpoint.companions {
            do {
                companions[companion.name] = try companion.read()
            } catch {
                problems.append("file '\(companion.name)': \(Self.problem(error))")
            }
        }
        var checks = [
            VerifyCheck(
                name: "integrity", ok: problems.isEmpty,
                detail: problems.isEmpty ? "\(checkpoint.entries.count) tensors read" : problems.prefix(3).joined(separator: "; "),
                value: Double(problems.count)),
            VerifyCheck(
                name: "finite", ok: nonFinite.isEmpty,
                detail: nonFinite.isEmpty
                    ? "" : "NaN or infinite values in " + nonFinite.prefix(3).map { "'\($0)'" }.joined(separator: ", "),
                value: Double(nonFinite.count)),
        ]
        if let config = companions["config.json"] {
            checks.append(Self.configCheck(config, tensors: tensors, path: checkpoint.path))
            if let tokenizer = companions["tokenizer.json"] {
                checks.append(Self.tokenizerCheck(tokenizer, config: companions["tokenizer_config.json"], modelConfig: config))
            }
        }
        return checks
    }

    static func problem(_ error: Error) -> String {
        if let error = error as? any FileError { return error.problem }
        return String(describing: error)
    }

    /// The model's config against its tensors: for the architectures the model stage runs, every
    /// tensor it binds (names and shapes); for others, what every transformers config says
    /// (vocabulary and hidden size against the embedding, the number of layers).
    static func configCheck(_ bytes: [UInt8], tensors: [String: StoredTensor], path: String) -> VerifyCheck {
        let modelType = (try? JSONParser.parse(String(decoding: bytes, as: UTF8.self)))?["model_type"]?.stringValue
        guard let modelType, ModelConfig.supportedTypes.contains(modelType) else { return genericConfigCheck(bytes, tensors: tensors) }
        do {
            let config = try ModelConfig(json: bytes, path: path)
            _ = try LanguageModel(config: config, tensors: tensors, path: path, threads: 1)
            return VerifyCheck(
                name: "config", ok: true, detail: "\(config.layers) layers, hidden \(config.hiddenSize), vocabulary \(config.vocabSize)")
        } catch {
            return VerifyCheck(name: "config", ok: false, detail: problem(error))
        }
    }

    static func genericConfigCheck(_ bytes: [UInt8], tensors: [String: StoredTensor]) -> VerifyCheck {
        guard let json = try? JSONParser.parse(String(decoding: bytes, as: UTF8.self)) else {
            return VerifyCheck(name: "config", ok: false, detail: "config.json is not JSON")
        }
        var problems: [String] = []
        if let vocab = json["vocab_size"]?.integerValue, let hidden = json["hidden_size"]?.integerValue,
            let embedding = tensors.first(where: { $0.key.hasSuffix("embed_tokens.weight") || $0.key.hasSuffix("wte.weight") })
        {
            if embedding.value.shape.dimensions != [vocab, hidden] {
                problems.append("'\(embedding.key)' is \(embedding.value.shape.dimensions), the config says [\(vocab), \(hidden)]")
            }
        }
        if let layers = json["num_hidden_layers"]?.integerValue {
            let indices = Set(
                tensors.keys.compactMap { name -> Int? in
                    guard let range = name.range(of: ".layers.") ?? name.range(of: ".h.") else { return nil }
                    return Int(name[range.upperBound...].prefix { $0.isNumber })
                })
            if !indices.isEmpty && indices != Set(0..<layers) {
                problems.append("the tensors hold \(indices.count) layers, the config says \(layers)")
            }
        }
        return VerifyCheck(name: "config", ok: problems.isEmpty, detail: problems.first ?? "")
    }

    static func tokenizerCheck(_ bytes: [UInt8], config tokenizerConfig: [UInt8]?, modelConfig: [UInt8]) -> VerifyCheck {
        do {
            let tokenizer = try Tokenizer(json: bytes, config: tokenizerConfig, path: "tokenizer.json")
            guard let json = try? JSONParser.parse(String(decoding: modelConfig, as: UTF8.self)),
                let vocab = json["vocab_size"]?.integerValue
            else {
                return VerifyCheck(name: "tokenizer", ok: true, detail: "\(tokenizer.vocabularySize) tokens")
            }
            let ok = tokenizer.vocabularySize <= vocab
            return VerifyCheck(
                name: "tokenizer", ok: ok,
                detail: ok
                    ? "\(tokenizer.vocabularySize) tokens in a vocabulary of \(vocab)"
                    : "the tokenizer has \(tokenizer.vocabularySize) tokens, more than the model's vocab_size \(vocab)",
                value: Double(tokenizer.vocabularySize), threshold: Double(vocab))
        } catch {
            return VerifyCheck(name: "tokenizer", ok: false, detail: "tokenizer.json: " + problem(error))
        }
    }
}

/// What the integrity check found of one tensor.
struct Finding: Sendable {
    var problem: String?
    var nonFinite = false
    var stored: StoredTensor?
}

/// Results written by the threads of the integrity check, one slot per tensor.
final class FindingList: @unchecked Sendable {
    private let lock = NSLock()
    private var slots: [Finding]
    init(count: Int) { slots = Array(repeating: Finding(), count: count) }
    func set(_ index: Int, _ finding: Finding) {
        lock.lock()
        slots[index] = finding
        lock.unlock()
    }
    func get(_ index: Int) -> Finding {
        lock.lock()
        defer { lock.unlock() }
        return slots[index]
    }
}

/// One tensor of an artifact against its source.
struct TensorError {
    let name: String
    let rmse: Double
    let maxAbsError: Double
    let cosine: Double
    let sqnrDB: Double
    let bitsPerParameter: Double

    func metric(_ name: String) -> Double? {
        switch name {
        case "rmse": rmse
        case "max_abs_error": maxAbsError
        case "cosine": cosine
        case "sqnr_db": sqnrDB
        default: nil
        }
    }

    var json: JSONValue {
        .object([
            JSONMember(key: "name", value: .string(name)), JSONMember(key: "rmse", value: .double(rmse)),
            JSONMember(key: "max_abs_error", value: .double(maxAbsError)), JSONMember(key: "cosine", value: .double(cosine)),
            JSONMember(key: "sqnr_db", value: .double(sqnrDB)), JSONMember(key: "bits_per_parameter", value: .double(bitsPerParameter)),
        ])
    }
}

/// Sums from which the error figures of one tensor or of many follow.
struct ErrorSums {
    var count = 0
    var squaredError = 0.0
    var sourceSquares = 0.0
    var artifactSquares = 0.0
    var product = 0.0
    var maxAbsError = 0.0
    var storedBits = 0.0

    mutating func add(_ artifact: [Float], _ source: [Float]) {
        for (a, s) in zip(artifact, source) {
            let x = Double(s), y = Double(a), e = y - x
            squaredError += e * e
            sourceSquares += x * x
            artifactSquares += y * y
            product += x * y
            maxAbsError = max(maxAbsError, abs(e))
        }
        count += artifact.count
    }

    mutating func merge(_ other: ErrorSums) {
        count += other.count
        squaredError += other.squaredError
        sourceSquares += other.sourceSquares
        artifactSquares += other.artifactSquares
        product += other.product
        maxAbsError = max(maxAbsError, other.maxAbsError)
        storedBits += other.storedBits
    }

    var rmse: Double { count == 0 ? 0 : (squaredError / Double(count)).squareRoot() }
    /// 1 when both are zero (identical), 0 when one is.
    var cosine: Double {
        if sourceSquares == 0 && artifactSquares == 0 { return 1 }
        guard sourceSquares > 0, artifactSquares > 0 else { return 0 }
        return product / (sourceSquares.squareRoot() * artifactSquares.squareRoot())
    }
    /// `10·log10(Σx² / Σ(x̂ − x)²)`; infinite (reported as 999) when the tensors are equal.
    var sqnrDB: Double {
        guard squaredError > 0 else { return 999 }
        guard sourceSquares > 0 else { return -999 }
        return 10 * Foundation.log10(sourceSquares / squaredError)
    }
    var bitsPerParameter: Double { count == 0 ? 0 : storedBits / Double(count) }
}

/// Every tensor two checkpoints share, compared as float32 values, a tensor at a time.
enum TensorComparisonReport {
    struct Result {
        var tensors: [TensorError] = []
        var total = ErrorSums()
        /// Tensors in one checkpoint only, or of other shapes.
        var problems: [String] = []
    }

    /// The values as the model uses them: a 4-bit tensor dequantized to its original type (what
    /// bitsandbytes restores and `qtool dequantize` writes), then widened.
    static func floats(_ stored: StoredTensor, threads: Int) -> [Float] {
        switch stored {
        case .plain(let tensor): return LoRAModule.floats(tensor)
        case .quantized(let q):
            let dtype = FloatConversion.encodable.contains(q.originalDType) ? q.originalDType : .f32
            return LoRAModule.floats(q.dequantized(to: dtype, threads: threads))
        }
    }

    static func compare(_ artifact: Checkpoint, against source: Checkpoint, sourcePath: String) throws -> Result {
        var result = Result()
        let sourceEntries = Dictionary(source.entries.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        let artifactNames = Set(artifact.entries.map(\.name))
        for entry in artifact.entries {
            guard let other = sourceEntries[entry.name] else {
                result.problems.append("'\(entry.name)' is not in \(sourcePath)")
                continue
            }
            guard entry.shape == other.shape else {
                result.problems.append("'\(entry.name)' is \(entry.shape.dimensions) here, \(other.shape.dimensions) in the source")
                continue
            }
            guard isNumeric(entry.dtype), isNumeric(other.dtype) else { continue }
            let a = floats(try entry.load(), threads: ParallelismSettings.threadCount)
            let s = floats(try other.load(), threads: ParallelismSettings.threadCount)
            var sums = ErrorSums()
            sums.add(a, s)
            sums.storedBits = Double(entry.storedBytes * 8)
            result.total.merge(sums)
            result.tensors.append(
                TensorError(
                    name: entry.name, rmse: sums.rmse, maxAbsError: sums.maxAbsError, cosine: sums.cosine, sqnrDB: sums.sqnrDB,
                    bitsPerParameter: sums.bitsPerParameter))
        }
        for entry in source.entries where !artifactNames.contains(entry.name) {
            result.problems.append("'\(entry.name)' of the source is missing")
        }
        return result
    }

    static func isNumeric(_ dtype: DType) -> Bool { FloatConversion.decodable.contains(dtype) }
}

/// JUnit XML, the report CI systems show: one test case per check, a failure for each that fails.
enum JUnitReport {
    static func escaped(_ text: String) -> String {
        var out = ""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&apos;"
            default:
                // XML 1.0 has no place for most control characters.
                if scalar.value < 0x20 && scalar != "\n" && scalar != "\t" && scalar != "\r" {
                    out += "?"
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out
    }

    static func xml(_ checks: [VerifyCheck], suite: String) -> String {
        let failures = checks.filter { !$0.ok }.count
        var xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        xml += "<testsuites tests=\"\(checks.count)\" failures=\"\(failures)\">\n"
        xml += "  <testsuite name=\"\(escaped(suite))\" tests=\"\(checks.count)\" failures=\"\(failures)\">\n"
        for check in checks {
            xml += "    <testcase classname=\"qtool.verify\" name=\"\(escaped(check.name))\""
            if check.ok {
                xml += "/>\n"
            } else {
                xml += ">\n      <failure message=\"\(escaped(check.detail))\"/>\n    </testcase>\n"
            }
        }
        xml += "  </testsuite>\n</testsuites>\n"
        return xml
    }

    static func write(_ checks: [VerifyCheck], suite: String, to path: String) throws {
        let output = try AtomicFileOutput(destination: path)
        do {
            try output.write(Array(xml(checks, suite: suite).utf8))
            try output.commit()
        } catch {
            output.abort()
            throw error
        }
    }
}
