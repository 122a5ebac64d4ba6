import LoRAMerge
import Quantization
import SafetensorsFormat
import TensorCore
import Testing
import TestSupport

/// The merge stage on 4-bit base tensors: requantized with each tensor's own settings.
struct MergeStageTests {
    @Test(arguments: [(QuantType.fp4, 128, false), (.nf4, 256, true), (.nf4, 64, false)])
    func aFourBitTensorKeepsItsOwnSettings(_ type: QuantType, _ blocksize: Int, _ double: Bool) throws {
        let base = try SafeTensorsModel(path: Fixtures.path("tiny-llama")).tensors()
        let adapter = try MergeGoldenTests.adapter("lora")
        let plan = try MergePlan(adapters: [(adapter, 1)], base: base.entries.map { ($0.name, $0.tensor.dtype, $0.tensor.shape) })
        let name = try #require(plan.changes.keys.sorted().first { $0.hasSuffix("q_proj.weight") })
        let change = try #require(plan.changes[name])
        let q = try QuantizedTensor.quantize(base[name]!, type: type, blocksize: blocksize, doubleQuantization: double)

        guard case .quantized(let merged) = try MergeStage.merge(quantized: q, change: change, name: name, floatType: nil, path: "base")
        else {
            Issue.record("a 4-bit tensor kept 4-bit")
            return
        }
        #expect(merged.quantType == type && merged.blocksize == blocksize && merged.isDoubleQuantized == double)
        #expect(merged.shape == q.shape && merged.originalDType == .f32)
        // Step by step: the whole tensor restored to its dtype, merged in float32, quantized.
        let restored = q.dequantized(to: q.originalDType)
        let steps = try QuantizedTensor.quantize(
            MergedTensor(base: restored, merge: change, dtype: .f32), type: type, blocksize: blocksize, doubleQuantization: double)
        #expect(merged.packed.isIdentical(to: steps.packed))
        #expect(merged.blockScales() == steps.blockScales())

        // Unchanged, it stays as stored; as floats, it is the merge in the type asked for.
        guard case .quantized(let same) = try MergeStage.merge(quantized: q, change: nil, name: name, floatType: nil, path: "base") else {
            Issue.record("an unchanged 4-bit tensor kept 4-bit")
            return
        }
        #expect(same.packed.isIdentical(to: q.packed))
        guard case .plain(let floats) = try MergeStage.merge(quantized: q, change: change, name: name, floatType: .bf16, path: "base")
        else {
            Issue.record("float output")
            return
        }
        #expect(floats.dtype == .bf16 && floats.shape == q.shape)
    }
}
