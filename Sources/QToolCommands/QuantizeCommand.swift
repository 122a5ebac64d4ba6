import ArgumentParser
import Foundation
import Synchronization
import Quantization
import SafetensorsFormat
import TensorCore

struct QuantizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "quantize",
        abstract: "Quantize a checkpoint to 4 bits (NF4 or FP4), bit for bit as bitsandbytes.",
        discussion: """
            By default the weights of linear layers are quantized (2-D *.weight tensors other than
            embeddings and lm_head), as transformers with bitsandbytes does; --include and --skip
            adjust that. --format nf4 writes a .nf4 container; --format bnb writes a model folder
            in bitsandbytes' pre-quantized layout that transformers loads as it is.

            Examples:
              qtool quantize fixtures/tiny-llama tiny.nf4
              qtool quantize fixtures/tiny-llama out/tiny-bnb --format bnb
              qtool quantize model.safetensors model.nf4 --quant-type fp4 --blocksize 128 --no-double-quant
            """)

    @Argument(help: "A checkpoint file or model folder.")
    var input: String

    @Argument(help: "A .nf4 file (--format nf4) or a model folder (--format bnb).")
    var output: String

    @OptionGroup var inputOptions: InputOptions

    @Option(help: "The 4-bit data type.")
    var quantType: QuantType = .nf4

    @Option(parsing: .unconditional, help: "Elements per block: a power of two from 32 to 4096.")
    var blocksize: Int = 64

    @Flag(help: "Keep block scales in float32 instead of quantizing them to 8 bits.")
    var noDoubleQuant = false

    @Option(help: "Also quantize tensors matching this glob (repeatable).")
    var include: [String] = []

    @Option(help: "Keep tensors matching this glob unquantized (repeatable).")
    var skip: [String] = []

    @Option(help: "Compress .nf4 sections: zstd or zstd:LEVEL.")
    var compress: String?

    @OptionGroup var threading: ThreadOptions

    @Option(
        help:
            "nf4 (a .nf4 container) or bnb (a bitsandbytes model folder or .safetensors file). Default: bnb for an OUTPUT ending in .safetensors or an existing folder, else nf4."
    )
    var format: QuantizedOutputFormat?

    @Flag(help: "Also measure the error of the 4-bit weights against the source (slower).")
    var error = false

    @OptionGroup var report: ReportOptions

    func validate() throws {
        try PathArguments.validate([("INPUT", input), ("OUTPUT", output)])
        guard BlockwiseQuantizer.validBlocksizes.contains(blocksize) else {
            throw ValidationError("--blocksize must be a power of two from 32 to 4096, not \(blocksize)")
        }
        if output.hasSuffix(".h5") || output.hasSuffix(".hdf5") {
            throw ValidationError("OUTPUT '\(output)' names an HDF5 file; quantize writes a .nf4 file or a bitsandbytes folder")
        }
        if format == .nf4, output.hasSuffix(".safetensors") || FilePaths.isDirectory(output) {
            throw ValidationError(
                "--format nf4 writes a .nf4 file, but OUTPUT '\(output)' is a .safetensors name or a folder; use --format bnb")
        }
        if format == .bnb, output.hasSuffix(".nf4") {
            throw ValidationError("OUTPUT '\(output)' ends in .nf4 but --format is bnb; use --format nf4 or another name")
        }
        if let compress {
            guard outputFormat == .nf4, Self.compressionLevel(compress) != nil else {
                throw ValidationError("--compress takes zstd or zstd:LEVEL (1-22), for --format nf4")
            }
        }
    }

    /// The format asked for, or the one OUTPUT's name implies.
    var outputFormat: QuantizedOutputFormat {
        if let format { return format }
        return output.hasSuffix(".safetensors") || FilePaths.isDirectory(output) ? .bnb : .nf4
    }

    static func compressionLevel(_ text: String) -> Int32? {
        if text == "zstd" { return 3 }
        guard text.hasPrefix("zstd:"), let level = Int32(text.dropFirst(5)), (1...22).contains(level) else { return nil }
        return level
    }

    func run() throws {
        threading.apply()
        let started = Date()
        let checkpoint = try Checkpoint.open(input, allowExternal: inputOptions.allowExternal)
        let type = quantType
        let selection = TensorSelection(include: include, skip: skip)
        let sourceBytes = checkpoint.entries.reduce(0) { $0 + $1.storedBytes }
        let progress = ProgressBar(label: "quantize", total: sourceBytes, quiet: report.quiet)
        let format = outputFormat
        let target: OutputTarget
        if format == .nf4 {
            target = .nf4(output)
        } else {
            target = output.hasSuffix(".safetensors") ? .safetensorsFile(output) : .folder(output)
        }
        var writer = CheckpointWriter(target: target, metadata: checkpoint.metadata, companions: checkpoint.companions, progress: progress)
        writer.compressionLevel = compress.flatMap(Self.compressionLevel)
        // Tensors are quantized a few at once (each is the same whatever its neighbours), except
        // when --error measures them: its sums are added in tensor order.
        writer.producedAhead = error ? 1 : max(1, ParallelismSettings.threadCount)
        let totals = Mutex(QuantizeTotals())
        var errorStats = QuantizationErrorStats()
        let written = try writer.write(names: checkpoint.entries.map(\.name)) { index in
            let entry = checkpoint.entries[index]
            totals.withLock {
                $0.parameters += entry.shape.elementCount
                $0.originalBytes += entry.shape.elementCount * entry.dtype.bitSize / 8
            }
            switch try entry.load() {
            case .quantized(let q):
                totals.withLock { $0.storedBytes += q.storedBytes }
                progress.advance(by: entry.storedBytes)
                return .quantized(q)
            case .plain(let tensor):
                guard selection.shouldQuantize(name: entry.name, dtype: tensor.dtype, shape: tensor.shape) else {
                    totals.withLock { $0.storedBytes += tensor.byteCount }
                    return .plain(tensor)
                }
                let q: QuantizedTensor
                do {
                    q = try QuantizedTensor.quantize(tensor, type: type, blocksize: blocksize, doubleQuantization: !noDoubleQuant)
                } catch {
                    throw CommandError(path: input, "tensor '\(entry.name)' \(error)")
                }
                if error {
                    // Measuring reads the source again; quantizing gave its pages back as it went.
                    errorStats.add(source: tensor, quantized: q)
                    tensor.releaseResidentPages()
                }
                totals.withLock {
                    $0.quantizedCount += 1
                    $0.storedBytes += q.storedBytes
                }
                progress.advance(by: tensor.byteCount)
                return .quantized(q)
            }
        }
        let (quantizedCount, parameters, originalBytes, storedBytes) = totals.withLock {
            ($0.quantizedCount, $0.parameters, $0.originalBytes, $0.storedBytes)
        }
        progress.finish()
        let seconds = Date().timeIntervalSince(started)
        let bits = parameters == 0 ? 0 : Double(storedBytes * 8) / Double(parameters)
        if report.json {
            Report.printJSON(
                JSONValue.object(
                    [
                        JSONMember(key: "input", value: .string(input)),
                        JSONMember(key: "output", value: .string(output)),
                        JSONMember(key: "format", value: .string(format.rawValue)),
                        JSONMember(key: "files", value: .array(written.map(JSONValue.string))),
                        JSONMember(key: "quant_type", value: .string(type.rawValue)),
                        JSONMember(key: "blocksize", value: .integer(blocksize)),
                        JSONMember(key: "double_quant", value: .bool(!noDoubleQuant)),
                        JSONMember(key: "tensors", value: .integer(checkpoint.entries.count)),
                        JSONMember(key: "quantized_tensors", value: .integer(quantizedCount)),
                        JSONMember(key: "parameters", value: .integer(parameters)),
                        JSONMember(key: "source_bytes", value: .integer(originalBytes)),
                        JSONMember(key: "stored_bytes", value: .integer(storedBytes)),
                        JSONMember(key: "bits_per_parameter", value: .double((bits * 1000).rounded() / 1000)),
                        JSONMember(key: "seconds", value: .double(seconds)),
                    ] + (error ? [JSONMember(key: "error", value: errorStats.json)] : [])))
        } else if !report.quiet {
            Report.note(
                String(
                    format: "wrote %@: %d of %d tensors quantized (%@ %@), %@ from %@, %.3f bits per parameter, %.2f s",
                    output, quantizedCount, checkpoint.entries.count, type.rawValue, noDoubleQuant ? "" : "+ double quant",
                    ProgressBar.formatBytes(Double(storedBytes)), ProgressBar.formatBytes(Double(originalBytes)), bits, seconds))
            if error { Report.note(errorStats.summary) }
        }
    }
}

/// What a quantize run counts as it goes (tensors are produced on several threads).
struct QuantizeTotals {
    var quantizedCount = 0
    var parameters = 0
    var originalBytes = 0
    var storedBytes = 0
}

/// How far 4-bit weights are from their source, over every quantized tensor.
/// `--error`: the 4-bit weights against the source, as one `TensorComparison`.
struct QuantizationErrorStats {
    var comparison = TensorComparison()

    /// Compares a chunk at a time (the source widened, the codes dequantized as bitsandbytes
    /// does), so measuring holds no tensor whole.
    mutating func add(source: Tensor, quantized: QuantizedTensor) {
        guard let widened = CastTensor(source, to: .f32) else { return }
        let dequantizer = Dequantizer(quantized)
        // 2^20 elements a chunk.
        var restored = [Float](repeating: 0, count: 1 << 20)
        var index = 0
        try? widened.stream(chunkBytes: 4 << 20) { piece in
            let values = piece.bindMemory(to: Float.self)
            restored.withUnsafeMutableBytes { out in
                quantized.packed.withBytes { packed in
                    dequantizer.decodeInParallel(
                        index..<(index + values.count), packed: packed.baseAddress!, into: out.baseAddress!, dtype: .f32,
                        threads: ParallelismSettings.threadCount)
                }
            }
            restored.withUnsafeBufferPointer {
                comparison.add(reference: values, candidate: UnsafeBufferPointer(rebasing: $0[0..<values.count]))
            }
            index += values.count
        }
    }

    var json: JSONValue { comparison.json }

    var summary: String {
        String(
            format: "error of the 4-bit weights against the source: RMSE %.3g, relative %.2f%%, largest %.3g, SQNR %.1f dB, cosine %.5f",
            comparison.rmse, comparison.relativeRMSE * 100, comparison.maxAbsError, comparison.sqnr, comparison.cosine)
    }
}
