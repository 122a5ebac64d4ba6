import ArgumentParser
import GGUFFormat
import SafetensorsFormat
import TensorCore

/// The float types a command writes (`--dtype`), and the GGUF block types (for .gguf outputs).
enum FloatOutputType: String, CaseIterable, ExpressibleByArgument {
    case f32, f16, bf16, q8_0, q4_0

    /// The float type; nil for the GGUF block types.
    var dtype: DType? {
        switch self {
        case .f32: .f32
        case .f16: .f16
        case .bf16: .bf16
        case .q8_0, .q4_0: nil
        }
    }

    var ggmlType: GGMLType {
        switch self {
        case .f32: .f32
        case .f16: .f16
        case .bf16: .bf16
        case .q8_0: .q8_0
        case .q4_0: .q4_0
        }
    }

    /// Also takes torch's names (float32, bfloat16, …); the message names the valid values.
    static func parse(_ text: String) throws -> FloatOutputType {
        if let block = FloatOutputType(rawValue: text.lowercased()), block.dtype == nil { return block }
        guard let dtype = DType(userName: text), let value = allCases.first(where: { $0.dtype == dtype }) else {
            throw ValidationError("--dtype must be f32, f16 or bf16 (or q8_0, q4_0 for a .gguf output), not '\(text)'")
        }
        return value
    }
}

/// What `quantize` writes (`--format`).
enum QuantizedOutputFormat: String, CaseIterable, ExpressibleByArgument {
    /// A .nf4 container.
    case nf4
    /// bitsandbytes' pre-quantized layout: a model folder or a .safetensors file.
    case bnb
}

/// What `merge` writes (`--format`).
enum MergeOutputFormat: String, CaseIterable, ExpressibleByArgument {
    case safetensors, nf4, bnb
    /// llama.cpp's GGUF (a model with its config and tokenizer), chosen by an OUTPUT ending in .gguf.
    case gguf
}

/// Which way Keras Dense kernels lie (`convert --layout`).
enum KernelLayout: String, CaseIterable, ExpressibleByArgument {
    /// torch's Linear `[out, in]`.
    case torch
    /// Keras's Dense `[in, out]`.
    case keras
}

extension QuantType: ExpressibleByArgument {}

/// `--dtype` and `--max-shard-size`, shared by the commands that write float checkpoints.
struct FloatOutputOptions: ParsableArguments {
    @Option(
        help: ArgumentHelp(
            "Cast floating-point tensors to this type (integer tensors are kept); q8_0 and q4_0 for a .gguf OUTPUT.",
            valueName: "f32|f16|bf16|q8_0|q4_0"),
        transform: FloatOutputType.parse)
    var dtype: FloatOutputType?

    @Option(help: "Largest shard of a folder output, e.g. 5GB, 500MB, 2GiB or bytes.")
    var maxShardSize: String?

    var targetDType: DType? { dtype?.dtype ?? nil }
    var shardLimit: Int? { maxShardSize.flatMap(ShardedWriter.parseSize) }

    func validate() throws {
        if let maxShardSize, ShardedWriter.parseSize(maxShardSize) == nil {
            throw ValidationError("--max-shard-size must be a size such as 5GB, 500MB or 2GiB, not '\(maxShardSize)'")
        }
    }

    /// Checks that a shard limit goes with a folder output, and a block type with a .gguf one.
    func validate(output: String) throws {
        if maxShardSize != nil, output.hasSuffix(".safetensors") || output.hasSuffix(".nf4") || output.hasSuffix(".gguf") {
            throw ValidationError("--max-shard-size needs a folder OUTPUT, not a single file")
        }
        if let dtype, dtype.dtype == nil, !output.hasSuffix(".gguf") {
            throw ValidationError("--dtype \(dtype.rawValue) is a GGUF block type: OUTPUT must end in .gguf")
        }
    }
}

/// `--quiet` and `--json`, shared by every command that reports.
struct ReportOptions: ParsableArguments {
    @Flag(help: "No progress bar and no summary line.")
    var quiet = false

    @Flag(help: "Print a JSON report on standard output.")
    var json = false
}

/// `--threads`, shared by the commands that run kernels. The value is taken as given, so
/// `--threads -1` is refused as a number below 1 rather than read as an unknown option.
struct ThreadOptions: ParsableArguments {
    @Option(parsing: .unconditional, help: "Threads for the kernels (default: all cores).")
    var threads: Int?

    func validate() throws {
        if let threads, threads < 1 { throw ValidationError("--threads must be at least 1, not \(threads)") }
    }

    /// Sets the kernels' thread count (before any work starts).
    func apply() {
        if let threads { ParallelismSettings.threadCount = threads }
    }
}

/// Checks of path arguments that need no file system.
enum PathArguments {
    static func validate(_ paths: [(name: String, value: String)]) throws {
        for (name, value) in paths where value.isEmpty {
            throw ValidationError("\(name) is an empty path")
        }
    }
}

/// `--allow-external`, for the commands that read checkpoints.
struct InputOptions: ParsableArguments {
    @Flag(help: "Read HDF5 external links and raw data kept in other files (refused by default).")
    var allowExternal = false
}

/// A text file named on the command line (a prompt, a dataset), read whole through the mapped
/// file reader (which refuses what is not a regular file).
enum TextInput {
    static func bytes(_ path: String) throws -> [UInt8] {
        let file = try MappedFile(path: path)
        return file.withBytes(in: 0..<file.count) { Array($0) }
    }

    /// The file's bytes as text; bytes that are not UTF-8 are refused rather than replaced.
    static func string(_ path: String) throws -> String {
        let file = try MappedFile(path: path)
        return try file.withBytes(in: 0..<file.count) { bytes in
            guard let text = String(validating: bytes, as: UTF8.self) else {
                throw CommandError(path: path, "not UTF-8 text")
            }
            return text
        }
    }
}
