import Testing

@testable import TensorCore

/// The BLAS layer against a plain double-precision product, held to a bound stated against the
/// operands: each element within `depth · 2⁻²³ · Σ_k |a_ik·b_kj|` (any summation order meets it).
struct BLASTests {
    struct Case: CustomTestStringConvertible, Sendable {
        let m: Int, n: Int, k: Int
        let transposeA: Bool, transposeB: Bool
        var testDescription: String { "\(m)×\(k)·\(k)×\(n) \(transposeA ? "Aᵀ" : "A")\(transposeB ? "Bᵀ" : "B")" }
    }

    static let cases: [Case] = [(1, 1, 1), (3, 5, 7), (130, 33, 17), (300, 64, 8), (257, 129, 1), (5, 0, 3), (4, 6, 0), (20, 1500, 9)]
        .flatMap { m, n, k in
            [(false, false), (true, false), (false, true), (true, true)].map { Case(m: m, n: n, k: k, transposeA: $0.0, transposeB: $0.1) }
        }

    static func values(_ count: Int, seed: Int) -> [Float] {
        (0..<count).map { Float(($0 * 37 + seed * 11) % 101) / 50 - 1 }
    }

    @Test(arguments: cases)
    func productMatchesThePlainOne(_ c: Case) {
        // Stored with a row stride wider than the row, so strides are exercised too.
        let (aRows, aColumns) = c.transposeA ? (c.k, c.m) : (c.m, c.k)
        let (bRows, bColumns) = c.transposeB ? (c.n, c.k) : (c.k, c.n)
        let aStride = aColumns + 3, bStride = bColumns + 2, cStride = c.n + 1
        let a = Self.values(max(1, aRows * aStride), seed: 1)
        let b = Self.values(max(1, bRows * bStride), seed: 2)
        let start = Self.values(max(1, c.m * cStride), seed: 3)
        func element(_ x: [Float], _ stride: Int, _ transposed: Bool, _ i: Int, _ j: Int) -> Double {
            Double(transposed ? x[j * stride + i] : x[i * stride + j])
        }
        for (scale, accumulate) in [(Float(1), false), (Float(0.375), true)] {
            for threads in [1, 3] {
                var out = start
                a.withUnsafeBufferPointer { a in
                    b.withUnsafeBufferPointer { b in
                        out.withUnsafeMutableBufferPointer { o in
                            BLAS.multiply(
                                MatrixView(a.baseAddress!, rows: aRows, columns: aColumns, rowStride: aStride, transposed: c.transposeA),
                                MatrixView(b.baseAddress!, rows: bRows, columns: bColumns, rowStride: bStride, transposed: c.transposeB),
                                into: MutableMatrixView(o.baseAddress!, rows: c.m, columns: c.n, rowStride: cStride),
                                scale: scale, accumulate: accumulate, threads: threads)
                        }
                    }
                }
                var worst = 0.0
                var paddingKept = true
                for i in 0..<c.m {
                    for j in 0..<c.n {
                        var exact = 0.0, magnitude = 0.0
                        for p in 0..<c.k {
                            let product = element(a, aStride, c.transposeA, i, p) * element(b, bStride, c.transposeB, p, j)
                            exact += product
                            magnitude += abs(product)
                        }
                        let initial = accumulate ? Double(start[i * cStride + j]) : 0
                        let expected = initial + Double(scale) * exact
                        let bound = Double(c.k + 2) * 0x1p-23 * (abs(initial) + Double(scale) * magnitude) + 1e-30
                        worst = max(worst, abs(Double(out[i * cStride + j]) - expected) / bound)
                    }
                    if c.n < cStride { paddingKept = paddingKept && out[i * cStride + c.n] == start[i * cStride + c.n] }
                }
                #expect(worst <= 1, "\(c.testDescription) scale \(scale) threads \(threads): \(worst) of the bound")
                #expect(paddingKept, "elements between rows are left alone")
            }
        }
    }

    /// Rows split (many rows) and columns split (few rows, many columns: an output head).
    @Test(arguments: [(1000, 96, 40), (60, 3000, 24)])
    func threadCountDoesNotChangeTheBits(_ m: Int, _ n: Int, _ k: Int) {
        let a = Self.values(m * k, seed: 4), b = Self.values(k * n, seed: 5)
        func run(_ threads: Int) -> [Float] {
            var out = [Float](repeating: 0, count: m * n)
            a.withUnsafeBufferPointer { a in
                b.withUnsafeBufferPointer { b in
                    out.withUnsafeMutableBufferPointer { o in
                        BLAS.linear(
                            input: MatrixView(a.baseAddress!, rows: m, columns: k), weight: MatrixView(b.baseAddress!, rows: n, columns: k),
                            into: MutableMatrixView(o.baseAddress!, rows: m, columns: n), threads: threads)
                    }
                }
            }
            return out
        }
        let one = run(1)
        let same = [2, 3, 8].allSatisfy { run($0) == one }
        #expect(same)
    }

    /// The three products of a linear layer, checked by their definitions on small matrices.
    @Test func linearLayerRoles() {
        let (tokens, inputs, outputs) = (3, 4, 2)
        let x = Self.values(tokens * inputs, seed: 6), w = Self.values(outputs * inputs, seed: 7)
        let dy = Self.values(tokens * outputs, seed: 8)
        var y = [Float](repeating: 0, count: tokens * outputs)
        var dx = [Float](repeating: 0, count: tokens * inputs)
        var dw = [Float](repeating: 1, count: outputs * inputs)
        x.withUnsafeBufferPointer { x in
            w.withUnsafeBufferPointer { w in
                dy.withUnsafeBufferPointer { dy in
                    let xv = MatrixView(x.baseAddress!, rows: tokens, columns: inputs)
                    let wv = MatrixView(w.baseAddress!, rows: outputs, columns: inputs)
                    let dyv = MatrixView(dy.baseAddress!, rows: tokens, columns: outputs)
                    y.withUnsafeMutableBufferPointer {
                        BLAS.linear(input: xv, weight: wv, into: MutableMatrixView($0.baseAddress!, rows: tokens, columns: outputs))
                    }
                    dx.withUnsafeMutableBufferPointer {
                        BLAS.linearInputGradient(
                            outputGradient: dyv, weight: wv, into: MutableMatrixView($0.baseAddress!, rows: tokens, columns: inputs))
                    }
                    dw.withUnsafeMutableBufferPointer {
                        BLAS.linearWeightGradient(
                            outputGradient: dyv, input: xv, into: MutableMatrixView($0.baseAddress!, rows: outputs, columns: inputs))
                    }
                }
            }
        }
        func close(_ got: Float, _ want: Double) -> Bool { abs(Double(got) - want) <= 1e-5 * max(1, abs(want)) }
        var ok = true
        for t in 0..<tokens {
            for o in 0..<outputs {
                ok =
                    ok
                    && close(y[t * outputs + o], (0..<inputs).reduce(0.0) { $0 + Double(x[t * inputs + $1]) * Double(w[o * inputs + $1]) })
            }
            for i in 0..<inputs {
                ok =
                    ok
                    && close(
                        dx[t * inputs + i], (0..<outputs).reduce(0.0) { $0 + Double(dy[t * outputs + $1]) * Double(w[$1 * inputs + i]) })
            }
        }
        for o in 0..<outputs {
            for i in 0..<inputs {
                ok =
                    ok
                    && close(
                        dw[o * inputs + i], 1 + (0..<tokens).reduce(0.0) { $0 + Double(dy[$1 * outputs + o]) * Double(x[$1 * inputs + i]) })
            }
        }
        #expect(ok)
    }

    @Test func kernelFitsTheCPU() {
        let library = BLAS.library
        let features = CPUInfo.current.features
        #expect(library.version != "unknown")
        // A user's OPENBLAS_CORETYPE (as when a test run pins a kernel) is honoured as it is.
        guard library.kernelChoice != .user, library.kernelChoice != .fixed else { return }
        let kernel = library.kernel.lowercased()
        if features.contains("avx512f") && features.contains("avx512bw") && features.contains("avx512vl") {
            #expect(["skylakex", "cooperlake", "sapphirerapids"].contains(kernel), "kernel \(kernel)")
        } else if features.contains("avx2") && features.contains("fma") {
            #expect(["haswell", "zen", "skylakex", "cooperlake"].contains(kernel), "kernel \(kernel)")
        }
    }
}
