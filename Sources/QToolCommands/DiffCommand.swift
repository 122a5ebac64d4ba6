import ArgumentParser
import Foundation
import TensorCore

/// `qtool diff`: what changed between two checkpoints — for reviewing a quantize, merge or
/// fine-tune.
struct DiffCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "diff",
        abstract: "Compare two checkpoints: tensors added or removed, shape and type changes, per-tensor error, config.json changes.",
        discussion: """
            A and B are any checkpoints qtool reads (safetensors files and folders, bitsandbytes
            folders, .nf4, HDF5). Tensors of both with the same shape are compared as float32 values
            (4-bit ones dequantized), B against A: rmse, max abs error, cosine, SQNR in dB. config.json
            is compared key by key (nested keys joined with dots).

            Examples:
              qtool diff model/ model.nf4
              qtool diff merged/ model/ --json
            """)

    @Argument(help: "The first checkpoint (the reference).")
    var a: String

    @Argument(help: "The second checkpoint.")
    var b: String

    @Flag(help: "List every tensor compared, not only those that differ.")
    var all = false

    @OptionGroup var inputOptions: InputOptions

    @OptionGroup var threading: ThreadOptions

    @OptionGroup var report: ReportOptions

    func validate() throws {
        try PathArguments.validate([("A", a), ("B", b)])
    }

    func run() throws {
        threading.apply()
        let first = try Checkpoint.open(a, allowExternal: inputOptions.allowExternal)
        let second = try Checkpoint.open(b, allowExternal: inputOptions.allowExternal)
        let aEntries = Dictionary(first.entries.map { ($0.name, $0) }, uniquingKeysWith: { x, _ in x })
        let bNames = Set(second.entries.map(\.name))
        let onlyA = first.entries.map(\.name).filter { !bNames.contains($0) }
        let onlyB = second.entries.map(\.name).filter { aEntries[$0] == nil }
        var changed: [(name: String, a: String, b: String)] = []
        var errors: [TensorError] = []
        for entry in second.entries {
            guard let reference = aEntries[entry.name] else { continue }
            let aKind = Self.describe(reference), bKind = Self.describe(entry)
            if aKind != bKind { changed.append((entry.name, aKind, bKind)) }
            guard reference.shape == entry.shape, TensorComparisonReport.isNumeric(reference.dtype),
                TensorComparisonReport.isNumeric(entry.dtype)
            else { continue }
            let x = TensorComparisonReport.floats(try reference.load(), threads: ParallelismSettings.threadCount)
            let y = TensorComparisonReport.floats(try entry.load(), threads: ParallelismSettings.threadCount)
            var sums = ErrorSums()
            sums.add(y, x)
            sums.storedBits = Double(entry.storedBytes * 8)
            errors.append(
                TensorError(
                    name: entry.name, rmse: sums.rmse, maxAbsError: sums.maxAbsError, cosine: sums.cosine, sqnrDB: sums.sqnrDB,
                    bitsPerParameter: sums.bitsPerParameter))
        }
        let configA = try Self.config(first), configB = try Self.config(second)
        let configChanges = Self.differences(configA, configB)
        let differing = errors.filter { $0.maxAbsError > 0 }

        if report.json {
            func names(_ list: [String]) -> JSONValue { .array(list.map { .string($0) }) }
            Report.printJSON(
                .object([
                    JSONMember(key: "only_in_a", value: names(onlyA)),
                    JSONMember(key: "only_in_b", value: names(onlyB)),
                    JSONMember(
                        key: "changed",
                        value: .array(
                            changed.map {
                                .object([
                                    JSONMember(key: "name", value: .string($0.name)), JSONMember(key: "a", value: .string($0.a)),
                                    JSONMember(key: "b", value: .string($0.b)),
                                ])
                            })),
                    JSONMember(key: "identical", value: .integer(errors.count - differing.count)),
                    JSONMember(key: "tensors", value: .array((all ? errors : differing).map(\.json))),
                    JSONMember(
                        key: "config",
                        value: .array(
                            configChanges.map {
                                .object([
                                    JSONMember(key: "key", value: .string($0.key)), JSONMember(key: "a", value: $0.a ?? .null),
                                    JSONMember(key: "b", value: $0.b ?? .null),
                                ])
                            })),
                ]))
            return
        }
        func show(_ text: String) { print(TerminalText.escaped(text)) }
        show("\(first.entries.count) tensors in \(a), \(second.entries.count) in \(b)")
        for name in onlyA { show("- \(name) (only in A)") }
        for name in onlyB { show("+ \(name) (only in B)") }
        for change in changed { show("~ \(change.name): \(change.a) → \(change.b)") }
        show("\(errors.count - differing.count) of \(errors.count) shared tensors have the same values")
        for error in all ? errors : differing {
            show(
                String(
                    format: "  %@  rmse %.4g  max %.4g  cosine %.6f  SQNR %.2f dB", error.name, error.rmse, error.maxAbsError, error.cosine,
                    error.sqnrDB))
        }
        for change in configChanges {
            show(
                "config.json \(change.key): \(change.a?.serialized(.compact) ?? "(absent)") → \(change.b?.serialized(.compact) ?? "(absent)")"
            )
        }
    }

    /// "BF16 [64, 32]", or "nf4 blocksize 64 … of BF16 [64, 32]" for a quantized tensor.
    static func describe(_ entry: CheckpointEntry) -> String {
        (entry.quantization.map { $0 + " of " } ?? "") + entry.dtype.rawValue + " \(entry.shape.dimensions)"
    }

    static func config(_ checkpoint: Checkpoint) throws -> JSONValue? {
        guard let file = checkpoint.companions.first(where: { $0.name == "config.json" }) else { return nil }
        return try? JSONParser.parse(String(decoding: try file.read(), as: UTF8.self))
    }

    /// Leaves of two JSON values that differ, keyed by their dotted path.
    static func differences(_ a: JSONValue?, _ b: JSONValue?, prefix: String = "") -> [(key: String, a: JSONValue?, b: JSONValue?)] {
        if case .object(let x)? = a, case .object(let y)? = b {
            var out: [(key: String, a: JSONValue?, b: JSONValue?)] = []
            let keys = x.map(\.key) + y.map(\.key).filter { key in !x.contains { $0.key == key } }
            for key in keys {
                out += differences(
                    x.first { $0.key == key }?.value, y.first { $0.key == key }?.value, prefix: prefix.isEmpty ? key : prefix + "." + key)
            }
            return out
        }
        return a == b ? [] : [(prefix.isEmpty ? "(whole file)" : prefix, a, b)]
    }
}
