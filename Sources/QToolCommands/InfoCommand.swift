import ArgumentParser
import Dispatch
import HDF5Format
import NF4Format
import TensorCore

/// `qtool info`: what a bug report needs about this binary and this machine.
struct InfoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "info",
        abstract: "Show qtool's version, the CPU, the BLAS library and kernel in use, and the zstd and HDF5 versions.",
        discussion: """
            OpenBLAS picks a kernel when it loads; qtool replaces a choice that falls short of the
            CPU's instruction set (AVX-512: SkylakeX, or Cooperlake with AVX-512 BF16; AVX2: Haswell,
            Zen on AMD). OPENBLAS_CORETYPE, when set, is honoured as it is.

            --bench times single-precision matrix products (2048×2048×2048, best of 3) on one
            thread and on all threads.
            """)

    @Flag(help: "Measure sgemm GFLOP/s on one thread and on all threads (a few seconds).")
    var bench = false

    @Flag(help: "Print a JSON report on standard output.")
    var json = false

    @OptionGroup var threadOptions: ThreadOptions

    func run() throws {
        let cpu = CPUInfo.current
        let library = BLAS.library
        let threads = threadOptions.threads ?? ParallelismSettings.defaultThreadCount
        let gflops = bench ? (single: SGEMMBenchmark.gflops(threads: 1), all: SGEMMBenchmark.gflops(threads: threads)) : nil
        let zstd = NF4Container.zstdVersion
        let hdf5 = HDF5Helper.libraryVersion
        if json {
            var blas: [JSONMember] = [
                JSONMember(key: "library", value: .string(library.name)),
                JSONMember(key: "version", value: .string(library.version)),
                JSONMember(key: "kernel", value: .string(library.kernel)),
                JSONMember(key: "kernel_chosen_by", value: .string(library.kernelChoice.rawValue)),
                JSONMember(key: "kernel_at_load", value: .string(library.kernelAtLoad)),
                JSONMember(key: "config", value: .string(library.configuration)),
                JSONMember(key: "threads", value: .integer(threads)),
            ]
            if let gflops {
                blas.append(
                    JSONMember(
                        key: "sgemm_gflops",
                        value: .object([
                            JSONMember(key: "1", value: .double(gflops.single)),
                            JSONMember(key: "all", value: .double(gflops.all)),
                        ])))
            }
            Report.printJSON(
                .object([
                    JSONMember(key: "version", value: .string(QTool.version)),
                    JSONMember(
                        key: "cpu",
                        value: .object([
                            JSONMember(key: "vendor", value: .string(cpu.vendor)),
                            JSONMember(key: "model", value: .string(cpu.model)),
                            JSONMember(key: "features", value: .array(cpu.features.map(JSONValue.string))),
                        ])),
                    JSONMember(key: "blas", value: .object(blas)),
                    JSONMember(key: "zstd", value: .string(zstd)),
                    JSONMember(key: "hdf5", value: .string(hdf5)),
                ]))
            return
        }
        let chosenBy: String =
            switch library.kernelChoice {
            case .openBLAS: "chosen by OpenBLAS"
            case .switched: "chosen by qtool; OpenBLAS chose \(library.kernelAtLoad)"
            case .user: "set by OPENBLAS_CORETYPE"
            case .fixed: "the only kernel of this build"
            }
        var lines = [
            "qtool     \(QTool.version)",
            "cpu       \(cpu.model) (\(cpu.vendor))",
            "features  \(cpu.features.joined(separator: " "))",
            "blas      \(library.name) \(library.version), kernel \(library.kernel) (\(chosenBy))",
            "threads   \(threads)",
        ]
        if let gflops {
            lines.append(
                String(format: "sgemm     %.1f GFLOP/s on 1 thread, %.1f GFLOP/s on %d threads", gflops.single, gflops.all, threads))
        }
        lines += ["zstd      \(zstd)", "hdf5      \(hdf5)"]
        if !cpu.runsQToolKernels {
            lines.append("warning: this CPU lacks AVX2/FMA/F16C, which qtool's kernels are built for")
        }
        print(TerminalText.escaped(lines.joined(separator: "\n"), keepingNewlines: true))
    }
}

/// Times `c = a·b` over 2048×2048 float32 matrices through the BLAS layer.
enum SGEMMBenchmark {
    static func gflops(threads: Int, size: Int = 2048, repeats: Int = 3) -> Double {
        let count = size * size
        let a = (0..<count).map { Float(($0 * 7 + 3) % 17) / 17 - 0.5 }
        let b = (0..<count).map { Float(($0 * 5 + 1) % 13) / 13 - 0.5 }
        var c = [Float](repeating: 0, count: count)
        var best = Double.infinity
        a.withUnsafeBufferPointer { a in
            b.withUnsafeBufferPointer { b in
                c.withUnsafeMutableBufferPointer { c in
                    let left = MatrixView(a.baseAddress!, rows: size, columns: size)
                    let right = MatrixView(b.baseAddress!, rows: size, columns: size)
                    let result = MutableMatrixView(c.baseAddress!, rows: size, columns: size)
                    // One untimed run: OpenBLAS allocates its buffers and the pages fault in.
                    for run in 0...repeats {
                        let start = DispatchTime.now().uptimeNanoseconds
                        BLAS.multiply(left, right, into: result, threads: threads)
                        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
                        if run > 0 { best = min(best, seconds) }
                    }
                }
            }
        }
        return 2 * Double(size) * Double(size) * Double(size) / best / 1e9
    }
}
