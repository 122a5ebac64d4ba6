import ArgumentParser
import SafetensorsFormat
import TensorCore

/// `--dtype` and `--max-shard-size`, shared by the commands that write float checkpoints.
struct FloatOutputOptions: ParsableArguments {
    @Option(help: "Cast floating-point tensors to f32, f16 or bf16 (integer tensors are kept).")
    var dtype: String?

    @Option(help: "Largest shard of a folder output, e.g. 5GB, 500MB, 2GiB or bytes.")
    var maxShardSize: String?

    var targetDType: DType? { dtype.flatMap { DType(userName: $0) } }
    var shardLimit: Int? { maxShardSize.flatMap(ShardedWriter.parseSize) }

    func validate() throws {
        if let dtype {
            guard let parsed = DType(userName: dtype), [.f32, .f16, .bf16].contains(parsed) else {
                throw ValidationError("--dtype must be f32, f16 or bf16, not '\(dtype)'")
            }
        }
        if let maxShardSize, ShardedWriter.parseSize(maxShardSize) == nil {
            throw ValidationError("--max-shard-size must be a size such as 5GB, 500MB or 2GiB, not '\(maxShardSize)'")
        }
    }

    /// Checks that a shard limit goes with a folder output.
    func validate(output: String) throws {
        if maxShardSize != nil, output.hasSuffix(".safetensors") || output.hasSuffix(".nf4") {
            throw ValidationError("--max-shard-size needs a folder OUTPUT, not a single file")
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
