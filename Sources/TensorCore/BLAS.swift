import CBLASKernel
import COpenBLAS

/// A float32 matrix as a product reads it: `rows × columns` elements stored row-major with
/// `rowStride` floats from one row to the next, or that storage seen transposed.
public struct MatrixView {
    public let base: UnsafePointer<Float>
    /// As stored.
    public let storedRows: Int
    public let storedColumns: Int
    public let rowStride: Int
    /// Seen as the transpose of what is stored: `rows == storedColumns`.
    public let transposed: Bool

    public init(_ base: UnsafePointer<Float>, rows: Int, columns: Int, rowStride: Int? = nil, transposed: Bool = false) {
        precondition(rows >= 0 && columns >= 0 && (rowStride ?? columns) >= max(columns, 1))
        self.base = base
        storedRows = rows
        storedColumns = columns
        self.rowStride = rowStride ?? columns
        self.transposed = transposed
    }

    /// Rows and columns as the product sees them.
    public var rows: Int { transposed ? storedColumns : storedRows }
    public var columns: Int { transposed ? storedRows : storedColumns }

    /// The same storage seen transposed.
    public var transpose: MatrixView {
        MatrixView(base, rows: storedRows, columns: storedColumns, rowStride: rowStride, transposed: !transposed)
    }

    /// Columns `range` of the matrix as seen.
    public func columns(_ range: Range<Int>) -> MatrixView {
        transpose.rows(range).transpose
    }

    /// Rows `range` of the matrix as seen.
    public func rows(_ range: Range<Int>) -> MatrixView {
        precondition(range.lowerBound >= 0 && range.upperBound <= rows)
        return transposed
            ? MatrixView(base + range.lowerBound, rows: storedRows, columns: range.count, rowStride: rowStride, transposed: true)
            : MatrixView(base + range.lowerBound * rowStride, rows: range.count, columns: storedColumns, rowStride: rowStride)
    }
}

/// A float32 matrix a product writes: `rows × columns`, row-major, `rowStride` floats apart.
public struct MutableMatrixView {
    public let base: UnsafeMutablePointer<Float>
    public let rows: Int
    public let columns: Int
    public let rowStride: Int

    public init(_ base: UnsafeMutablePointer<Float>, rows: Int, columns: Int, rowStride: Int? = nil) {
        precondition(rows >= 0 && columns >= 0 && (rowStride ?? columns) >= max(columns, 1))
        self.base = base
        self.rows = rows
        self.columns = columns
        self.rowStride = rowStride ?? columns
    }

    public func rows(_ range: Range<Int>) -> MutableMatrixView {
        precondition(range.lowerBound >= 0 && range.upperBound <= rows)
        return MutableMatrixView(base + range.lowerBound * rowStride, rows: range.count, columns: columns, rowStride: rowStride)
    }

    public func columns(_ range: Range<Int>) -> MutableMatrixView {
        precondition(range.lowerBound >= 0 && range.upperBound <= columns)
        return MutableMatrixView(base + range.lowerBound, rows: rows, columns: range.count, rowStride: rowStride)
    }
}

/// Matrix products: the only code in qtool that calls OpenBLAS.
///
/// Threading rule: OpenBLAS runs single-threaded (set at load, in CBLASKernel), and a product
/// given `threads > 1` splits the rows of its result into blocks of a size fixed by the shape
/// (or its columns, when it has too few rows to split and many columns), each one OpenBLAS call. OpenBLAS's own threads would spin against qtool's, and a split that
/// followed the thread count would change the summation order with it; this one does not.
///
/// Kernel: OpenBLAS picks one when it loads; CBLASKernel replaces a choice below the CPU's
/// instruction set (Debian's 0.3.21 runs Prescott on newer Xeons) before `main` runs, and leaves
/// a user's `OPENBLAS_CORETYPE` as it is.
public enum BLAS {
    /// `c = scale·a·b`, or `c += scale·a·b` when `accumulate`; `a` is `[m, k]`, `b` `[k, n]`
    /// and `c` `[m, n]` as seen.
    public static func multiply(
        _ a: MatrixView, _ b: MatrixView, into c: MutableMatrixView, scale: Float = 1, accumulate: Bool = false, threads: Int = 1
    ) {
        precondition(a.columns == b.rows && c.rows == a.rows && c.columns == b.columns, "product shapes do not agree")
        guard c.rows > 0, c.columns > 0 else { return }
        if a.columns == 0 {
            if !accumulate {
                for row in 0..<c.rows { (c.base + row * c.rowStride).update(repeating: 0, count: c.columns) }
            }
            return
        }
        let shared = SendableProduct(a: a, b: b, c: c)
        let rowChunk = rowsPerTask(rows: c.rows)
        if rowChunk >= c.rows, c.columns >= 2 * columnsPerTask(columns: c.columns) {
            // Few rows and many columns (an output head over a vocabulary): the columns are split.
            parallelForChunks(count: c.columns, chunk: columnsPerTask(columns: c.columns), threads: threads) { range in
                sgemm(shared.a, shared.b.columns(range), shared.c.columns(range), scale: scale, accumulate: accumulate)
            }
            return
        }
        parallelForChunks(count: c.rows, chunk: rowChunk, threads: threads) { range in
            sgemm(shared.a.rows(range), shared.b, shared.c.rows(range), scale: scale, accumulate: accumulate)
        }
    }

    /// `c += scale·a·b` (a LoRA term: `W += (α/r)·B·A`).
    public static func addProduct(_ a: MatrixView, _ b: MatrixView, scaledBy scale: Float, to c: MutableMatrixView, threads: Int = 1) {
        multiply(a, b, into: c, scale: scale, accumulate: true, threads: threads)
    }

    /// A linear layer: `output = input·weightᵀ`, input `[tokens, in]`, weight `[out, in]` (as
    /// PyTorch stores it), output `[tokens, out]`.
    public static func linear(input: MatrixView, weight: MatrixView, into output: MutableMatrixView, threads: Int = 1) {
        multiply(input, weight.transpose, into: output, threads: threads)
    }

    /// The gradient a linear layer passes back: `inputGradient (+)= outputGradient·weight`,
    /// `[tokens, out]·[out, in]`.
    public static func linearInputGradient(
        outputGradient: MatrixView, weight: MatrixView, into inputGradient: MutableMatrixView, accumulate: Bool = false, threads: Int = 1
    ) {
        multiply(outputGradient, weight, into: inputGradient, accumulate: accumulate, threads: threads)
    }

    /// A linear layer's weight gradient: `weightGradient += outputGradientᵀ·input`,
    /// `[out, tokens]·[tokens, in]`.
    public static func linearWeightGradient(
        outputGradient: MatrixView, input: MatrixView, into weightGradient: MutableMatrixView, threads: Int = 1
    ) {
        multiply(outputGradient.transpose, input, into: weightGradient, accumulate: true, threads: threads)
    }

    /// Rows per call: a quarter of the result, and at least 256 rows. Each call packs the whole
    /// right-hand operand again (a layer's weight), so calls of fewer rows spend a growing share
    /// on packing (a fifth at 128 rows of a 576-wide layer); four calls keep two threads even.
    /// The split depends only on the shape, so one thread and many compute the same bits.
    static func rowsPerTask(rows: Int) -> Int {
        max(256, (rows + 3) / 4)
    }

    /// Columns per call when the columns are split: an eighth, and at least 256 (a LoRA factor's
    /// gradient, 16 rows by a layer's width, splits in three).
    static func columnsPerTask(columns: Int) -> Int {
        max(256, (columns + 7) / 8)
    }

    private static func sgemm(_ a: MatrixView, _ b: MatrixView, _ c: MutableMatrixView, scale: Float, accumulate: Bool) {
        cblas_sgemm(
            CblasRowMajor, a.transposed ? CblasTrans : CblasNoTrans, b.transposed ? CblasTrans : CblasNoTrans,
            blasint(c.rows), blasint(c.columns), blasint(a.columns), scale, a.base, blasint(a.rowStride),
            b.base, blasint(b.rowStride), accumulate ? 1 : 0, c.base, blasint(c.rowStride))
    }

    /// What `qtool info` reports of the library.
    public struct Library: Sendable {
        public let name: String
        public let version: String
        public let configuration: String
        public let kernel: String
        /// The kernel OpenBLAS chose at load, before qtool's choice.
        public let kernelAtLoad: String
        public let kernelChoice: KernelChoice
    }

    public enum KernelChoice: String, Sendable {
        case openBLAS = "openblas"
        case switched = "qtool"
        case user = "OPENBLAS_CORETYPE"
        case fixed = "single-kernel build"
    }

    public static var library: Library {
        let configuration = String(cString: qtool_blas_config())
        let words = configuration.split(separator: " ")
        let version = words.count > 1 && words[0] == "OpenBLAS" ? String(words[1]) : "unknown"
        let choice: KernelChoice =
            switch qtool_blas_kernel_source() {
            case Int32(QTOOL_KERNEL_SWITCHED): .switched
            case Int32(QTOOL_KERNEL_USER): .user
            case Int32(QTOOL_KERNEL_FIXED): .fixed
            default: .openBLAS
            }
        return Library(
            name: "OpenBLAS", version: version, configuration: configuration, kernel: String(cString: qtool_blas_kernel()),
            kernelAtLoad: String(cString: qtool_blas_kernel_at_load()), kernelChoice: choice)
    }
}

/// The three views of one product, for the tasks of a split product (each writes its own rows).
private struct SendableProduct: @unchecked Sendable {
    let a: MatrixView
    let b: MatrixView
    let c: MutableMatrixView
}

/// The CPU qtool runs on, as cpuid and the OS's saved register state (xgetbv) describe it.
public struct CPUInfo: Sendable {
    public let vendor: String
    public let model: String
    /// The instruction sets qtool and its kernels use, each present only when the OS enables it.
    public let features: [String]

    public static var current: CPUInfo {
        var raw = qtool_cpu_features()
        qtool_cpu_read(&raw)
        let vendor = withUnsafeBytes(of: raw.vendor) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let brand = withUnsafeBytes(of: raw.brand) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let flags: [(String, Int32)] = [
            ("sse4.2", raw.sse42), ("avx", raw.avx), ("avx2", raw.avx2), ("fma", raw.fma), ("f16c", raw.f16c),
            ("avx512f", raw.avx512f), ("avx512cd", raw.avx512cd), ("avx512bw", raw.avx512bw), ("avx512dq", raw.avx512dq),
            ("avx512vl", raw.avx512vl), ("avx512_bf16", raw.avx512bf16),
        ]
        return CPUInfo(
            vendor: vendor, model: brand.trimmingSpaces.isEmpty ? vendor : brand.trimmingSpaces,
            features: flags.filter { $0.1 != 0 }.map(\.0))
    }

    /// qtool's kernels are compiled for x86-64-v3 (AVX2, FMA, F16C).
    public var runsQToolKernels: Bool {
        #if arch(x86_64)
            return ["avx2", "fma", "f16c"].allSatisfy(features.contains)
        #else
            return true
        #endif
    }
}

extension String {
    fileprivate var trimmingSpaces: String {
        String(self.drop { $0 == " " }.reversed().drop { $0 == " " }.reversed())
    }
}
