import ArgumentParser
import CProcess
import HDF5Format
import TensorCore

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// The `qtool` command line.
public struct QTool: ParsableCommand {
    public static let version = "0.1.0"

    public static let configuration = CommandConfiguration(
        commandName: "qtool",
        abstract: "Quantize, convert, merge and check checkpoints for the 4-bit QLoRA workflow.",
        discussion: """
            Commands, with an example each:
              inspect     List the tensors of a checkpoint (a GGUF's metadata too).
                            qtool inspect fixtures/tiny-llama --json
              convert     Convert between formats (safetensors, HDF5, GGUF), cast, shard.
                            qtool convert fixtures/tiny-llama out/f32 --dtype f32
                            qtool convert fixtures/models/llama-gqa out/model.gguf --dtype q8_0
              quantize    Quantize to 4 bits (NF4/FP4) as bitsandbytes does.
                            qtool quantize fixtures/tiny-llama out/tiny.nf4
              dequantize  Restore a .nf4 file, bitsandbytes folder or GGUF to floats.
                            qtool dequantize out/tiny.nf4 out/tiny-restored
              merge       Fold LoRA adapters (PEFT, mlx-lm) into a base, as PEFT does.
                            qtool merge fixtures/tiny-llama --adapter fixtures/lora/lora -o out/merged
                            qtool merge out/tiny.nf4 --adapter fixtures/lora/lora -o out/tuned.gguf
              tokenize    Encode a text with a model's tokenizer.json, as HF tokenizers does.
                            qtool tokenize fixtures/tiny-llama --text "Hello world"
              eval        Loss and perplexity of a model (float, 4-bit, + adapter) on data.
                            qtool eval fixtures/models/llama-gqa --data fixtures/finetune/eval.jsonl
              generate    Greedy or sampled text from a model.
                            qtool generate fixtures/models/llama-gqa --prompt "The library"
              finetune    Train a LoRA adapter over a frozen NF4 base (QLoRA on the CPU).
                            qtool finetune out/tiny.nf4 --data fixtures/finetune/train.jsonl --output out/adapter
              verify      Check an artifact: integrity, error against a source, quality, merges.
                            qtool verify out/tiny.nf4 --against fixtures/tiny-llama
              diff        Compare two checkpoints tensor by tensor, and their configs.
                            qtool diff fixtures/tiny-llama out/f32
              info        The CPU, BLAS kernel and library versions (for bug reports).
                            qtool info --bench
            Input errors print 'error: <file>: <problem>' and exit with status 2.
            """,
        version: version,
        subcommands: [
            InspectCommand.self, ConvertCommand.self, QuantizeCommand.self, DequantizeCommand.self, MergeCommand.self, TokenizeCommand.self,
            EvalCommand.self, GenerateCommand.self, FinetuneCommand.self, VerifyCommand.self, DiffCommand.self,
            InfoCommand.self,
        ]
    )

    public init() {}

    /// Runs the command line, printing input errors as `error: <file>: <problem>` with status 2.
    public static func run(arguments: [String]? = nil) -> Int32 {
        do {
            var command = try parseAsRoot(arguments)
            try command.run()
            return 0
        } catch let error as FileError {
            StandardError.write(
                "error: \(TerminalText.escaped(error.path.isEmpty ? "(empty path)" : error.path)): \(TerminalText.escaped(error.problem))\n"
            )
            return 2
        } catch {
            let code = exitCode(for: error)
            if code == .success {
                print(fullMessage(for: error))
            } else {
                StandardError.write(TerminalText.escaped(fullMessage(for: error), keepingNewlines: true) + "\n")
            }
            return code.rawValue
        }
    }

    /// Where libhdf5 runs for the commands: in a helper process started from this binary.
    static let hdf5Containment: HDF5Containment = .helperProcess(executable: executablePath)

    /// This binary's own path (the helper is started from it).
    static let executablePath: String = {
        var buffer = [CChar](repeating: 0, count: 4096)
        let length = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard length > 0 else { return CommandLine.arguments[0] }
        return String(decoding: buffer[0..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }()

    public static func main() {
        // Started as qtool's HDF5 helper: serve libhdf5 requests and nothing else.
        if let status = HDF5Helper.serveIfAsked(CommandLine.arguments) { Glibc.exit(status) }
        // Temporaries go with the process on SIGINT/SIGTERM; a truncated input is an error.
        ProcessCleanup.installSignalHandlers()
        Glibc.exit(run())
    }
}

/// Reports: JSON on standard output, summaries and warnings on standard error, with every string
/// that came from a file or the command line escaped for the terminal.
enum Report {
    static func printJSON(_ value: JSONValue) {
        print(value.serialized(.report))
    }

    /// The report of a command that copies a checkpoint to another form: JSON on standard
    /// output with --json, else one summary line (none with --quiet).
    static func written(
        _ options: ReportOptions, input: String, output: String, files: [String], tensors: Int, bytes: Int, seconds: Double
    ) {
        if options.json {
            printJSON(
                .object([
                    JSONMember(key: "input", value: .string(input)),
                    JSONMember(key: "output", value: .string(output)),
                    JSONMember(key: "files", value: .array(files.map(JSONValue.string))),
                    JSONMember(key: "tensors", value: .integer(tensors)),
                    JSONMember(key: "bytes", value: .integer(bytes)),
                    JSONMember(key: "seconds", value: .double(seconds)),
                ]))
        } else if !options.quiet {
            note(
                String(
                    format: "wrote %@: %d tensors, %@ in %.2f s", output, tensors, ProgressBar.formatBytes(Double(bytes)), seconds))
        }
    }

    /// A summary line on standard error.
    static func note(_ line: String) {
        StandardError.write(TerminalText.escaped(line) + "\n")
    }

    static func warning(_ path: String, _ problem: String) {
        note("warning: \(path): \(problem)")
    }
}

/// Writes to the process's standard error, unbuffered.
public enum StandardError {
    public static func write(_ text: String) {
        var copy = text
        copy.withUTF8 { bytes in
            var offset = 0
            while offset < bytes.count {
                let n = Glibc.write(2, bytes.baseAddress! + offset, bytes.count - offset)
                if n <= 0 { break }
                offset += n
            }
        }
    }

    /// Whether standard error is a terminal (progress bars are drawn only then).
    public static var isTerminal: Bool { isatty(2) == 1 }
}

/// A problem with the command's inputs that is not a file format error (missing file, a path
/// that cannot be both input and output, …).
public struct CommandError: FileError {
    public let path: String
    public let problem: String
    public init(path: String, _ problem: String) {
        self.path = path
        self.problem = problem
    }
}
