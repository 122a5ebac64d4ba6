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
}
