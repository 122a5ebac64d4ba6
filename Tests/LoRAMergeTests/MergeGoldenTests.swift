import Foundation
import LoRAMerge
import SafetensorsFormat
import TensorCore
import Testing
import TestSupport

/// Merges against PEFT's own `merge_and_unload` results (fixtures/lora/*.merged.safetensors).
struct MergeGoldenTests {
    struct Case: CustomTestStringConvertible, Sendable {
        let golden: String
        let base: String
        let adapters: [(String, Float)]
        /// The output type: float32 for the float32 goldens, nil to keep the base's (bf16).
        let dtype: DType?
        var testDescription: String { golden + " via " + adapters.map(\.0).joined(separator: "+") }
    }

    static let cases: [Case] = [
        Case(golden: "lora", base: "tiny-llama", adapters: [("lora", 1)], dtype: .f32),
        Case(golden: "rslora", base: "tiny-llama", adapters: [("rslora", 1)], dtype: .f32),
        Case(golden: "dora", base: "tiny-llama", adapters: [("dora", 1)], dtype: .f32),
        Case(golden: "patterns", base: "tiny-llama", adapters: [("patterns", 1)], dtype: .f32),
        Case(golden: "weighted", base: "tiny-llama", adapters: [("lora", 0.7), ("rslora", -0.3)], dtype: .f32),
        Case(golden: "qwen2-bias", base: "lora/bases/tiny-qwen2", adapters: [("qwen2-bias", 1)], dtype: nil),
        Case(golden: "gpt2-conv1d", base: "lora/bases/tiny-gpt2", adapters: [("gpt2-conv1d", 1)], dtype: nil),
        Case(golden: "gpt2-dora", base: "lora/bases/tiny-gpt2", adapters: [("gpt2-dora", 1)], dtype: nil),
        Case(golden: "lora", base: "tiny-llama", adapters: [("mlx-lora", 1)], dtype: .f32),
        Case(golden: "dora", base: "tiny-llama", adapters: [("mlx-dora", 1)], dtype: .f32),
    ]

    static func adapter(_ name: String) throws -> LoRAAdapter {
        let folder = Fixtures.path("lora/" + name)
        let config = try JSONParser.parse(String(decoding: Fixtures.bytes(folder + "/adapter_config.json"), as: UTF8.self))
        let peft = folder + "/adapter_model.safetensors"
        let file = FileManager.default.fileExists(atPath: peft) ? peft : folder + "/adapters.safetensors"
        let tensors = try SafeTensorsFile(path: file).tensors()
        return try LoRAAdapter(path: folder, config: config, tensors: tensors, layout: LoRAAdapter.layout(of: tensors)!)
    }

    /// Merges every tensor of `base` and returns the changed ones, in float32.
    static func merge(_ testCase: Case) throws -> (changed: [String: Tensor], base: NamedTensors) {
        let base = try SafeTensorsModel(path: Fixtures.path(testCase.base)).tensors()
        let adapters = try testCase.adapters.map { (adapter: try adapter($0.0), weight: $0.1) }
        let plan = try MergePlan(adapters: adapters, base: base.entries.map { ($0.name, $0.tensor.dtype, $0.tensor.shape) })
        var changed: [String: Tensor] = [:]
        for (name, merge) in plan.changes {
            let tensor = base[name]!
            changed[name] = try MergedTensor(base: tensor, merge: merge, dtype: testCase.dtype ?? tensor.dtype).materialized()
        }
        return (changed, base)
    }

    @Test(arguments: cases)
    func mergeMatchesPEFT(_ testCase: Case) throws {
        let golden = try SafeTensorsFile(path: Fixtures.path("lora/\(testCase.golden).merged.safetensors")).tensors()
        let (changed, _) = try Self.merge(testCase)
        // PEFT's file holds exactly the tensors its merge changed.
        #expect(Set(changed.keys) == Set(golden.names))
        for (name, expected) in golden.entries {
            let actual = try #require(changed[name])
            #expect(actual.shape == expected.shape, "\(name)")
            let worst = Tolerance.worstRelativeError(actual, expected)
            #expect(worst <= 1e-5, "\(name): relative error \(worst)")
        }
    }

    /// A bf16 base: qtool adds in float32 and rounds once; PEFT adds the float32 delta to the
    /// bf16 weight. Every element within one bf16 step.
    @Test func bf16BaseWithinOneStepOfPEFT() throws {
        let golden = try SafeTensorsFile(path: Fixtures.path("lora/lora-bf16.merged.safetensors")).tensors()
        let (changed, _) = try Self.merge(Case(golden: "lora-bf16", base: "tiny-llama", adapters: [("lora", 1)], dtype: nil))
        var differing = 0, total = 0
        for (name, expected) in golden.entries {
            let actual = try #require(changed[name])
            #expect(actual.dtype == .bf16)
            let a = actual.values(as: Int16.self), b = expected.values(as: Int16.self)
            for (x, y) in zip(a, b) {
                #expect(abs(Int(x) - Int(y)) <= 1, "\(name)")
                if x != y { differing += 1 }
            }
            total += a.count
        }
        #expect(differing * 100 < total, "\(differing) of \(total) differ")
    }

    /// The row blocks a tensor streams in never change its values.
    @Test(arguments: [64, 4096, 1 << 20])
    func blockSizeDoesNotChangeTheResult(_ chunkBytes: Int) throws {
        let base = try SafeTensorsModel(path: Fixtures.path("tiny-llama")).tensors()
        let adapters = [(adapter: try Self.adapter("dora"), weight: Float(1)), (adapter: try Self.adapter("lora"), weight: Float(0.5))]
        let plan = try MergePlan(adapters: adapters, base: base.entries.map { ($0.name, $0.tensor.dtype, $0.tensor.shape) })
        let name = "model.layers.2.self_attn.q_proj.weight"
        let merged = MergedTensor(base: base[name]!, merge: plan.changes[name]!, dtype: .f32)
        var pieces: [UInt8] = []
        try merged.stream(chunkBytes: chunkBytes) { pieces += $0 }
        let whole = try merged.materialized()
        let same = whole.withBytes { Array($0) } == pieces
        #expect(same)
    }
}

enum Tolerance {
    /// max |a − b| / (|b| + mean |b|): relative where values are large, absolute against the
    /// tensor's scale where they are near zero.
    static func worstRelativeError(_ actual: Tensor, _ expected: Tensor) -> Double {
        let a = floats(actual), b = floats(expected)
        let scale = b.reduce(0) { $0 + abs(Double($1)) } / Double(max(b.count, 1))
        return zip(a, b).reduce(0) { max($0, abs(Double($1.0) - Double($1.1)) / (abs(Double($1.1)) + scale)) }
    }

    static func floats(_ tensor: Tensor) -> [Float] {
        var out = [Float](repeating: 0, count: tensor.elementCount)
        tensor.withBytes { raw in
            out.withUnsafeMutableBufferPointer {
                FloatConversion.decodeToFloat32(raw.baseAddress!, tensor.dtype, from: 0, count: tensor.elementCount, into: $0.baseAddress!)
            }
        }
        return out
    }
}
