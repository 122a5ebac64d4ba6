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

    /// Merges every tensor of `base` and returns the changed ones, the plan and the base.
    static func merge(_ testCase: Case) throws -> (changed: [String: Tensor], plan: MergePlan, base: NamedTensors) {
        let base = try SafeTensorsModel(path: Fixtures.path(testCase.base)).tensors()
        let adapters = try testCase.adapters.map { (adapter: try adapter($0.0), weight: $0.1) }
        let plan = try MergePlan(adapters: adapters, base: base.entries.map { ($0.name, $0.tensor.dtype, $0.tensor.shape) })
        var changed: [String: Tensor] = [:]
        for (name, merge) in plan.changes {
            let tensor = base[name]!
            changed[name] = try MergedTensor(base: tensor, merge: merge, dtype: testCase.dtype ?? tensor.dtype).materialized()
        }
        return (changed, plan, base)
    }

    @Test(arguments: cases)
    func mergeMatchesPEFT(_ testCase: Case) throws {
        let golden = try SafeTensorsFile(path: Fixtures.path("lora/\(testCase.golden).merged.safetensors")).tensors()
        let (changed, plan, base) = try Self.merge(testCase)
        // PEFT's file holds exactly the tensors its merge changed.
        #expect(Set(changed.keys) == Set(golden.names))
        for (name, expected) in golden.entries {
            let actual = try #require(changed[name])
            #expect(actual.shape == expected.shape, "\(name)")
            let bounds = OperandBounds(base: base[name]!, merge: plan.changes[name]!)
            let (a, e) = (Tolerance.floats(actual), Tolerance.floats(expected))
            // Both sides sum the same products in float32, in orders that depend on the CPU's BLAS
            // kernel: each element within (a few + the number of products summed) unit roundoffs
            // of the magnitude of its operands, |W| + Σ|s·B·A| (times DoRA's row factor).
            var worst = 0.0
            for index in a.indices {
                let allowed = bounds.roundoffs * Tolerance.unitRoundoff32 * bounds.magnitude[index]
                worst = max(worst, abs(Double(a[index]) - Double(e[index])) / allowed)
            }
            #expect(worst <= 1, "\(name): \(worst) of the operand bound")
        }
    }

    /// A bf16 base: qtool adds in float32 and rounds once; PEFT rounds the float32 delta to bf16,
    /// adds it to the bf16 weight and rounds again. Where W and the delta nearly cancel, the
    /// result's own bf16 step is far smaller than the delta's rounding, so the bound is stated at
    /// the operands' magnitude: within 1.5 bf16 steps of |W| + Σ|s·B·A| (half a step for each of
    /// the three roundings), plus the float32 bound of the sum itself.
    @Test func bf16BaseWithinOneAndAHalfOperandStepsOfPEFT() throws {
        let golden = try SafeTensorsFile(path: Fixtures.path("lora/lora-bf16.merged.safetensors")).tensors()
        let (changed, plan, base) = try Self.merge(Case(golden: "lora-bf16", base: "tiny-llama", adapters: [("lora", 1)], dtype: nil))
        var differing = 0, total = 0
        for (name, expected) in golden.entries {
            let actual = try #require(changed[name])
            #expect(actual.dtype == .bf16)
            let bounds = OperandBounds(base: base[name]!, merge: plan.changes[name]!)
            let (a, e) = (Tolerance.floats(actual), Tolerance.floats(expected))
            for index in a.indices {
                let magnitude = bounds.magnitude[index]
                let allowed = 1.5 * Tolerance.bf16Step(magnitude) + bounds.roundoffs * Tolerance.unitRoundoff32 * magnitude
                #expect(abs(Double(a[index]) - Double(e[index])) <= allowed, "\(name)[\(index)]: \(a[index]) vs \(e[index])")
                if a[index].bitPattern != e[index].bitPattern { differing += 1 }
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
        let merged = try MergedTensor(base: base[name]!, merge: plan.changes[name]!, dtype: .f32)
        var pieces: [UInt8] = []
        try merged.stream(chunkBytes: chunkBytes) { pieces += $0 }
        let whole = try merged.materialized()
        let same = whole.withBytes { Array($0) } == pieces
        #expect(same)
    }
}

enum Tolerance {
    /// float32's unit roundoff, 2⁻²⁴.
    static let unitRoundoff32 = 0x1p-24

    /// The spacing of bfloat16 values at the magnitude of `value` (2⁻¹³³ below the normal range).
    static func bf16Step(_ value: Double) -> Double {
        guard value >= 0x1p-126 else { return 0x1p-133 }
        return Double(sign: .plus, exponent: value.exponent - 7, significand: 1)
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

/// The magnitude of the operands of every element of a merged tensor, computed in double from the
/// base and the adapters' factors: `|W| + Σ_terms |s·w| · Σ_k |B[o,k]|·|A[k,i]|`, times DoRA's
/// `|m| / ‖W + s·B·A‖` for a DoRA term; and how many roundings an element's value goes through.
struct OperandBounds {
    var magnitude: [Double]
    /// Unit roundoffs a float32 result may be off by, relative to `magnitude`, between two
    /// correct implementations that sum in different orders: the products summed (Σ r) and the
    /// additions on both sides, plus the norm's length for DoRA.
    var roundoffs: Double

    init(base: Tensor, merge: TensorMerge) {
        let w = Tolerance.floats(merge.replacement?.tensor ?? base).map(Double.init)
        magnitude = w.map(abs)
        roundoffs = 8
        guard !merge.isBias else {
            for term in merge.terms {
                let bias = Tolerance.floats(term.module.biasB!)
                for index in magnitude.indices { magnitude[index] += abs(Double(term.scale)) * abs(Double(bias[index])) }
            }
            return
        }
        let dims = base.shape.dimensions
        let (rows, columns) = (dims[0], dims[1])
        for term in merge.terms {
            let module = term.module
            let (a, b) = (Tolerance.floats(module.a), Tolerance.floats(module.b))
            let r = module.rank
            // PEFT's factors: A [r, in], B [out, r]; mlx-lm stores their transposes.
            func factorA(_ k: Int, _ i: Int) -> Double { Double(module.factorsTransposed ? a[i * r + k] : a[k * module.inFeatures + i]) }
            func factorB(_ o: Int, _ k: Int) -> Double { Double(module.factorsTransposed ? b[k * module.outFeatures + o] : b[o * r + k]) }
            var delta = [Double](repeating: 0, count: rows * columns)
            var absolute = [Double](repeating: 0, count: rows * columns)
            for row in 0..<rows {
                for column in 0..<columns {
                    let (o, i) = module.orientation == .outputsByInputs ? (row, column) : (column, row)
                    var sum = 0.0, sumAbs = 0.0
                    for k in 0..<r {
                        sum += factorB(o, k) * factorA(k, i)
                        sumAbs += abs(factorB(o, k) * factorA(k, i))
                    }
                    delta[row * columns + column] = Double(term.scale) * sum
                    absolute[row * columns + column] = abs(Double(term.scale)) * sumAbs
                }
            }
            roundoffs += 2 * Double(r + 2)
            for index in magnitude.indices { magnitude[index] += absolute[index] }
            guard let m = module.magnitude.map(Tolerance.floats) else { continue }
            // DoRA scales each output unit by m / ‖W + s·B·A‖ (the norm over its inputs).
            let outputsAreRows = module.orientation == .outputsByInputs
            let length = outputsAreRows ? columns : rows
            var squares = [Double](repeating: 0, count: outputsAreRows ? rows : columns)
            for row in 0..<rows {
                for column in 0..<columns {
                    let value = w[row * columns + column] + delta[row * columns + column]
                    squares[outputsAreRows ? row : column] += value * value
                }
            }
            for row in 0..<rows {
                for column in 0..<columns {
                    let unit = outputsAreRows ? row : column
                    magnitude[row * columns + column] *= abs(Double(m[unit])) / squares[unit].squareRoot()
                }
            }
            roundoffs += 2 * Double(length + 2)
        }
    }
}
