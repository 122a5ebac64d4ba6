import CModelKernels
import Foundation
import TensorCore

/// The decoder's kernels: plain functions over flat float32 buffers, row-major, in the spirit of
/// llm.c. Each works on the rows it is given on the calling thread; callers split rows.
enum Kernels {
    /// RMSNorm as transformers computes it in float32: `x · rsqrt(mean(x²) + eps) · weight`.
    static func rmsNorm(
        _ input: UnsafePointer<Float>, weight: UnsafePointer<Float>, rows: Int, width: Int, eps: Float,
        into output: UnsafeMutablePointer<Float>, reciprocals: UnsafeMutablePointer<Float>? = nil
    ) {
        for row in 0..<rows {
            let x = input + row * width
            let y = output + row * width
            var sum: Float = 0
            for i in 0..<width { sum += x[i] * x[i] }
            let r = 1 / (sum / Float(width) + eps).squareRoot()
            reciprocals?[row] = r
            for i in 0..<width { y[i] = weight[i] * (x[i] * r) }
        }
    }

    /// The gradient RMSNorm passes back, added to `inputGradient`: with `r` the row's reciprocal
    /// RMS and `g = weight·outputGradient`, `dx = r·g − x·r³·mean(g·x)`.
    static func rmsNormBackward(
        _ outputGradient: UnsafePointer<Float>, input: UnsafePointer<Float>, weight: UnsafePointer<Float>,
        reciprocals: UnsafePointer<Float>, rows: Int, width: Int, addingTo inputGradient: UnsafeMutablePointer<Float>
    ) {
        for row in 0..<rows {
            let dy = outputGradient + row * width, x = input + row * width, dx = inputGradient + row * width
            let r = reciprocals[row]
            var dot: Float = 0
            for i in 0..<width { dot += weight[i] * dy[i] * x[i] }
            let k = r * r * r * dot / Float(width)
            for i in 0..<width { dx[i] += r * weight[i] * dy[i] - k * x[i] }
        }
    }

    /// Rotates each head of `rows` rows (`heads × headDim` wide) in place, HF's half-rotation
    /// layout: the first half of a head pairs with the second. `cos`/`sin` hold `headDim / 2`
    /// values for each row's position.
    /// `inverse` rotates the other way (the rotation's transpose: what a gradient goes back through).
    static func rope(
        _ values: UnsafeMutablePointer<Float>, rows: Int, heads: Int, headDim: Int, cos: UnsafePointer<Float>,
        sin: UnsafePointer<Float>, inverse: Bool = false
    ) {
        let half = headDim / 2
        for row in 0..<rows {
            let c = cos + row * half, s = sin + row * half
            for head in 0..<heads {
                let x = values + row * heads * headDim + head * headDim
                if inverse {
                    for i in 0..<half {
                        let x1 = x[i], x2 = x[i + half]
                        x[i] = x1 * c[i] + x2 * s[i]
                        x[i + half] = x2 * c[i] - x1 * s[i]
                    }
                } else {
                    for i in 0..<half {
                        let x1 = x[i], x2 = x[i + half]
                        x[i] = x1 * c[i] - x2 * s[i]
                        x[i + half] = x2 * c[i] + x1 * s[i]
                    }
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
    /// With `statistics`, each row's largest score and the inverse of its sum of exponentials go
    /// to `statistics[row * statisticsStride]` and the next float (what the backward pass needs to
    /// rebuild the probabilities).
    static func softmaxRows(
        _ scores: UnsafeMutablePointer<Float>, rows: Int, stride: Int, statistics: UnsafeMutablePointer<Float>? = nil,
        statisticsStride: Int = 2, valid: (Int) -> Range<Int>
    ) {
        for row in 0..<rows {
            let s = scores + row * stride
            let range = valid(row)
            let values = s + range.lowerBound
            let largest = qtool_max(values, range.count)
            let sum = Float(qtool_exp_shift_sum(values, range.count, largest))
            if range.lowerBound > 0 { s.update(repeating: 0, count: range.lowerBound) }
            if range.upperBound < stride { (s + range.upperBound).update(repeating: 0, count: stride - range.upperBound) }
            let inverse = 1 / sum
            for j in 0..<range.count { values[j] *= inverse }
            if let statistics {
                statistics[row * statisticsStride] = largest
                statistics[row * statisticsStride + 1] = inverse
            }
        }
    }

    /// Rebuilds the probabilities `softmaxRows` gave from the same scores and its statistics:
    /// `exp(s − largest)·inverse` on the valid columns, 0 elsewhere.
    static func probabilities(
        _ scores: UnsafeMutablePointer<Float>, rows: Int, stride: Int, statistics: UnsafePointer<Float>, statisticsStride: Int,
        valid: (Int) -> Range<Int>
    ) {
        for row in 0..<rows {
            let s = scores + row * stride
            let range = valid(row)
            let values = s + range.lowerBound
            _ = qtool_exp_shift_sum(values, range.count, statistics[row * statisticsStride])
            if range.lowerBound > 0 { s.update(repeating: 0, count: range.lowerBound) }
            if range.upperBound < stride { (s + range.upperBound).update(repeating: 0, count: stride - range.upperBound) }
            let inverse = statistics[row * statisticsStride + 1]
            for j in 0..<range.count { values[j] *= inverse }
        }
    }

    /// The SiLU gate's backward: with `h = silu(g)·u` and `dh` given, `dg = dh·u·σ(g)(1 + g(1 − σ(g)))`
    /// and `du = dh·silu(g)`, written over `gateGradient` and `upGradient`.
    static func siluGateBackward(
        _ outputGradient: UnsafePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>, count: Int,
        gateGradient: UnsafeMutablePointer<Float>, upGradient: UnsafeMutablePointer<Float>
    ) {
        qtool_silu_gate_backward(outputGradient, gate, up, count, gateGradient, upGradient)
    }

    /// Softmax cross-entropy of one row: returns `-log softmax(logits)[target]` (the exponentials
    /// summed in double) and overwrites the logits with its gradient times `scale`:
    /// `(softmax − onehot(target))·scale`.
    static func crossEntropyGradient(_ logits: UnsafeMutablePointer<Float>, count: Int, target: Int, scale: Float) -> Double {
        let largest = qtool_max(logits, count)
        let chosen = logits[target]
        let sum = qtool_exp_shift_sum(logits, count, largest)
        let factor = Float(1 / sum) * scale
        for i in 0..<count { logits[i] *= factor }
        logits[target] -= scale
        return Foundation.log(sum) - Double(chosen - largest)
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
