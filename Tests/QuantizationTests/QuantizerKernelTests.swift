import Quantization
import SafetensorsFormat
import TensorCore
import Testing
import TestSupport

/// The quantizer's kernel: what it refuses, and results that do not depend on threads.
struct QuantizerKernelTests {
    @Test func nanAndInfinityAreRefusedWithTheirIndex() {
        var values = [Float](repeating: 1, count: 200)
        values[130] = .nan
        #expect(throws: QuantizationError.nonFinite(elementIndex: 130)) {
            _ = try QuantizedTensor.quantize(
                Tensor(dtype: .f32, shape: [200], values: values), type: .nf4, blocksize: 64, doubleQuantization: true)
        }
        values[130] = 1
        values[7] = -.infinity
        #expect(throws: QuantizationError.nonFinite(elementIndex: 7)) {
            _ = try BlockwiseQuantizer.quantizeReference(values, blocksize: 64, type: .fp4)
        }
        #expect(throws: QuantizationError.invalidBlocksize(48)) {
            _ = try BlockwiseQuantizer.quantizeReference(values, blocksize: 48, type: .nf4)
        }
    }

    @Test func resultsDoNotDependOnThreadCount() throws {
        let values: [Float] = (0..<100_003).map { i -> Float in
            let phase = Float(i % 1000) * 0.37
            return (phase - phase.rounded(.down) - 0.5) * Float(i % 97)
        }
        let tensor = Tensor(dtype: .f32, shape: [100_003], values: values)
        let one = try QuantizedTensor.quantize(tensor, type: .nf4, blocksize: 64, doubleQuantization: true, threads: 1)
        let five = try QuantizedTensor.quantize(tensor, type: .nf4, blocksize: 64, doubleQuantization: true, threads: 5)
        #expect(one.packed.isIdentical(to: five.packed))
        #expect(one.blockScales() == five.blockScales())
        #expect(one.dequantized(to: .f32).isIdentical(to: five.dequantized(to: .f32)))
    }

    /// Values that land on every midpoint once scaled, one ulp either side, and on the cell
    /// edges of the AVX-512 kernel's table: each kernel gives the reference's codes, as f32 and
    /// as bf16, for every type and block size, with a partial block at the end.
    @Test(arguments: QuantType.allCases)
    func kernelsAgreeWithTheReferenceAtEveryEdge(_ type: QuantType) throws {
        var edges: [Float] = []
        for m in type.midpoints { edges += [m.nextDown, m, m.nextUp] }
        for cell in 0...32 {
            let edge = Float(cell) / 16 - 1
            edges += [edge.nextDown, edge, edge.nextUp]
        }
        edges += [0, -0.0, 1, -1, Float.leastNonzeroMagnitude, -Float.leastNonzeroMagnitude]
        edges = edges.filter { abs($0) <= 1 }
        // Each block holds ±1, so its scale is 1 and every other value is scaled to itself.
        var values: [Float] = []
        var next = 0
        for block in 0..<200 {
            values.append(block % 2 == 0 ? 1 : -1)
            for _ in 1..<64 {
                values.append(edges[next % edges.count])
                next += 1
            }
        }
        values += [0.25, -0.7, 0.1]  // a partial last block
        // As bf16, the edges are rounded: widen them back for the reference.
        let bf16Bits = values.map { FloatConversion.bf16Bits(fromF32: $0.bitPattern) }
        let bf16Values = bf16Bits.map { Float(bitPattern: UInt32($0) << 16) }
        for blocksize in [32, 64, 256] {
            let expected = try BlockwiseQuantizer.quantizeReference(values, blocksize: blocksize, type: type)
            let expectedBF16 = try BlockwiseQuantizer.quantizeReference(bf16Values, blocksize: blocksize, type: type)
            for variant in QuantizerGoldenTests.variants {
                let f32 = try values.withUnsafeBytes {
                    try BlockwiseQuantizer.quantize(
                        $0.baseAddress!, dtype: .f32, count: values.count, blocksize: blocksize, type: type, threads: 2, variant: variant)
                }
                #expect(f32.packed == expected.packed, "\(variant) f32 blocksize \(blocksize)")
                #expect(f32.absmax.map(\.bitPattern) == expected.absmax.map(\.bitPattern))
                let bf16 = try bf16Bits.withUnsafeBytes {
                    try BlockwiseQuantizer.quantize(
                        $0.baseAddress!, dtype: .bf16, count: values.count, blocksize: blocksize, type: type, threads: 2, variant: variant)
                }
                #expect(bf16.packed == expectedBF16.packed, "\(variant) bf16 blocksize \(blocksize)")
                #expect(bf16.absmax.map(\.bitPattern) == expectedBF16.absmax.map(\.bitPattern))
            }
        }
    }

    /// A block with NaN or infinity is refused by the AVX-512 kernel as by the portable one, with
    /// the index of the first such element in the tensor.
    @Test func everyKernelReportsTheFirstNonFiniteElement() {
        var values: [Float] = (0..<10_000).map { Float($0 % 7) - 3 }
        values[9_000] = .infinity
        values[4_321] = .nan
        for variant in QuantizerGoldenTests.variants {
            for dtype in [DType.f32, .bf16] {
                let bytes: [UInt8] =
                    dtype == .f32
                    ? values.withUnsafeBytes { Array($0) }
                    : values.map { FloatConversion.bf16Bits(fromF32: $0.bitPattern) }.withUnsafeBytes { Array($0) }
                #expect(throws: QuantizationError.nonFinite(elementIndex: 4_321), "\(variant) \(dtype)") {
                    _ = try bytes.withUnsafeBytes {
                        try BlockwiseQuantizer.quantize(
                            $0.baseAddress!, dtype: dtype, count: values.count, blocksize: 64, type: .nf4, threads: 2, variant: variant)
                    }
                }
            }
        }
    }

    /// The dequantizer's kernel over any range of elements (odd starts and ends, across blocks)
    /// gives the same bytes as dequantizing the whole tensor, on any number of threads.
    @Test(arguments: QuantType.allCases)
    func dequantizingARangeMatchesTheWhole(_ type: QuantType) throws {
        let rows = 37, columns = 91  // odd: rows start inside a byte and inside a block
        let values: [Float] = (0..<(rows * columns)).map { i in Float((i * 7919) % 1009) / 1009 - 0.5 }
        let tensor = Tensor(dtype: .f32, shape: [rows, columns], values: values)
        let q = try QuantizedTensor.quantize(tensor, type: type, blocksize: 64, doubleQuantization: true, threads: 1)
        let dequantizer = Dequantizer(q)
        for dtype in [DType.f32, .bf16, .f16] {
            let whole = q.dequantized(to: dtype, threads: 1)
            let wholeBytes = whole.withBytes { Array($0) }
            let width = dtype.bitSize / 8
            for range in [0..<1, 1..<2, 63..<65, 91..<182, 5..<3000, 1000..<(rows * columns), 0..<(rows * columns)] {
                var out = [UInt8](repeating: 0xAA, count: range.count * width)
                q.packed.withBytes { packed in
                    out.withUnsafeMutableBytes {
                        dequantizer.decode(range, packed: packed.baseAddress!, into: $0.baseAddress!, dtype: dtype)
                    }
                }
                #expect(out == Array(wholeBytes[(range.lowerBound * width)..<(range.upperBound * width)]), "\(dtype) \(range)")
            }
            #expect(q.dequantized(to: dtype, threads: 3).isIdentical(to: whole))
        }
    }
}
