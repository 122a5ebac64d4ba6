import COpenBLAS

/// Single-precision matrix products through OpenBLAS (the one place qtool calls it).
///
/// OpenBLAS runs single-threaded: qtool's kernels split their work over rows themselves, with a
/// fixed split, and OpenBLAS's own threads would spin (sched_yield) against them.
public enum MatrixMultiply {
    private static let singleThreaded: Void = openblas_set_num_threads(1)

    /// `c = alpha · op(a) · op(b) + beta · c` over row-major float32 matrices: op(a) is
    /// `[m, k]`, op(b) `[k, n]`, c `[m, n]`; `lda`, `ldb`, `ldc` are the row strides as stored.
    public static func gemm(
        m: Int, n: Int, k: Int, alpha: Float,
        a: UnsafePointer<Float>, lda: Int, transposeA: Bool,
        b: UnsafePointer<Float>, ldb: Int, transposeB: Bool,
        beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        guard m > 0, n > 0 else { return }
        _ = singleThreaded
        cblas_sgemm(
            CblasRowMajor, transposeA ? CblasTrans : CblasNoTrans, transposeB ? CblasTrans : CblasNoTrans,
            blasint(m), blasint(n), blasint(k), alpha, a, blasint(lda), b, blasint(ldb), beta, c, blasint(ldc))
    }
}
