import CModelKernels
import Foundation
import TensorCore

/// The decoder's kernels: plain functions over flat float32 buffers, row-major, in the spirit of
/// llm.c. Each works on the rows it is given on the calling thread; callers split rows.
enum Kernels {
    /// RMSNorm as transformers computes it in float32: `x · rsqrt(mean(x²) + eps) · weight`.
    static func rmsNorm(
        _ input: UnsafePointer<Float>, weight: UnsafePointer<Float>, rows: Int, width: Int, eps: Float,
        into output: UnsafeMutablePointer<Float>
    ) {
        for row in 0..<rows {
            let x = input + row * width
            let y = output + row * width
            var sum: Float = 0
            for i in 0..<width { sum += x[i] * x[i] }
            let r = 1 / (sum / Float(width) + eps).squareRoot()
            for i in 0..<width { y[i] = weight[i] * (x[i] * r) }
        }
    }

    /// Rotates each head of `rows` rows (`heads × headDim` wide) in place, HF's half-rotation
    /// layout: the first half of a head pairs with the second. `cos`/`sin` hold `headDim / 2`
    /// values for each row's position.
    static func rope(
        _ values: UnsafeMutablePointer<Float>, rows: Int, heads: Int, headDim: Int, cos: UnsafePointer<Float>,
        sin: UnsafePointer<Float>
    ) {
        let half = headDim / 2
        for row in 0..<rows {
            let c = cos + row * half, s = sin + row * half
            for head in 0..<heads {
                let x = values + row * heads * headDim + head * headDim
                for i in 0..<half {
                    let x1 = x[i], x2 = x[i + half]
                    x[i] = x1 * c[i] - x2 * s[i]
                    x[i + half] = x2 * c[i] + x1 * s[i]
                }
            }
        }
    }

    /// `gate ← silu(gate) · up`, element by element.
    static func siluGate(_ gate: UnsafeMutablePointer<Float>, up: UnsafePointer<Float>, count: Int) {
        qtool_silu_gate(gate, up, count)
    }

    /// Softmax of each row of `scores` over the columns `valid(row)`, in place; the other columns
    /// are set to 0.
    static func softmaxRows(_ scores: UnsafeMutablePointer<Float>, rows: Int, stride: Int, valid: (Int) -> Range<Int>) {
        for row in 0..<rows {
            let s = scores + row * stride
            let range = valid(row)
            let values = s + range.lowerBound
            let sum = Float(qtool_exp_shift_sum(values, range.count, qtool_max(values, range.count)))
            if range.lowerBound > 0 { s.update(repeating: 0, count: range.lowerBound) }
            if range.upperBound < stride { (s + range.upperBound).update(repeating: 0, count: stride - range.upperBound) }
            let inverse = 1 / sum
            for j in 0..<range.count { values[j] *= inverse }
        }
    }

    /// `-log softmax(logits)[target]`, the exponentials summed in double.
    static func negativeLogLikelihood(_ logits: UnsafePointer<Float>, count: Int, target: Int) -> Double {
        let largest = qtool_max(logits, count)
        return Foundation.log(qtool_sum_exp_shift(logits, count, largest)) - Double(logits[target] - largest)
    }
}

/// cos and sin of each position's rotation angles, as transformers' rotary embedding computes
/// them: inverse frequencies `1 / θ^(2i/d)` in float32 (adjusted by the scaling), angles
/// `position · frequency` in float32.
struct RotaryTable {
    let half: Int
    let inverseFrequency: [Float]

    init(config: ModelConfig) {
        half = config.headDim / 2
        let dim = Float(config.headDim)
        var frequencies = (0..<half).map { i -> Float in
            let exponent = Float(2 * i) / dim
            return 1 / Float(Foundation.pow(config.ropeTheta, Double(exponent)))
        }
        switch config.ropeScaling {
        case .none: break
        case .linear(let factor): frequencies = frequencies.map { $0 / Float(factor) }
        case .llama3(let factor, let low, let high, let original):
            let lowWavelength = Double(original) / low
            let highWavelength = Double(original) / high
            frequencies = frequencies.map { f in
                let wavelength = 2 * Double.pi / Double(f)
                if wavelength < highWavelength { return f }
                if wavelength > lowWavelength { return f / Float(factor) }
                let smooth = (Double(original) / wavelength - low) / (high - low)
                return Float((1 - smooth) * Double(f) / factor + smooth * Double(f))
            }
        }
        inverseFrequency = frequencies
    }

    /// `half` cos and sin values for each position.
    func table(positions: [Int]) -> (cos: [Float], sin: [Float]) {
        var cos = [Float](repeating: 0, count: positions.count * half)
        var sin = cos
        for (row, position) in positions.enumerated() {
            for i in 0..<half {
                let angle = Float(position) * inverseFrequency[i]
                cos[row * half + i] = Float(Foundation.cos(Double(angle)))
                sin[row * half + i] = Float(Foundation.sin(Double(angle)))
            }
        }
        return (cos, sin)
    }
}
