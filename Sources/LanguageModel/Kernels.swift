import Foundation
import TensorCore

/// The decoder's kernels: plain functions over flat float32 buffers, row-major, in the spirit of
/// llm.c. Each works on the rows it is given on the calling thread; callers split rows.
enum Kernels {
    /// RMSNorm as transformers computes it in float32: `x · rsqrt(mean(x²) + eps) · weight`.
    /// Returns each row's `rsqrt` (what the backward pass needs).
    @discardableResult
    static func rmsNorm(
        _ input: UnsafePointer<Float>, weight: UnsafePointer<Float>, rows: Int, width: Int, eps: Float,
        into output: UnsafeMutablePointer<Float>
    ) -> [Float] {
        var inverse = [Float](repeating: 0, count: rows)
        for row in 0..<rows {
            let x = input + row * width
            let y = output + row * width
            var sum: Float = 0
            for i in 0..<width { sum += x[i] * x[i] }
            let r = 1 / (sum / Float(width) + eps).squareRoot()
            inverse[row] = r
            for i in 0..<width { y[i] = weight[i] * (x[i] * r) }
        }
        return inverse
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
        for i in 0..<count {
            let g = gate[i]
            gate[i] = g / (1 + Foundation.exp(-g)) * up[i]
        }
    }

    /// Softmax of each row of `scores` over the columns `valid(row)`, in place; the other columns
    /// are set to 0.
    static func softmaxRows(_ scores: UnsafeMutablePointer<Float>, rows: Int, stride: Int, valid: (Int) -> Range<Int>) {
        for row in 0..<rows {
            let s = scores + row * stride
            let range = valid(row)
            var largest = -Float.infinity
            for j in range { largest = max(largest, s[j]) }
            let sum = expShifted(s + range.lowerBound, count: range.count, by: largest)
            if range.lowerBound > 0 { s.update(repeating: 0, count: range.lowerBound) }
            if range.upperBound < stride { (s + range.upperBound).update(repeating: 0, count: stride - range.upperBound) }
            let inverse = 1 / sum
            for j in range { s[j] *= inverse }
        }
    }

    /// `x[i] ← exp(x[i] - shift)` for `count` values; returns their sum (in double).
    static func expShifted(_ x: UnsafeMutablePointer<Float>, count: Int, by shift: Float) -> Float {
        var total = 0.0
        var i = 0
        let shifts = SIMD16<Float>(repeating: shift)
        while i + 16 <= count {
            let e = FastMath.exp(UnsafeRawPointer(x + i).loadUnaligned(as: SIMD16<Float>.self) - shifts)
            UnsafeMutableRawPointer(x + i).storeBytes(of: e, as: SIMD16<Float>.self)
            total += Double(FastMath.sum(e))
            i += 16
        }
        if i < count {
            var lanes = SIMD16<Float>(repeating: -.infinity)
            for lane in 0..<(count - i) { lanes[lane] = x[i + lane] - shift }
            let e = FastMath.exp(lanes)
            for lane in 0..<(count - i) { x[i + lane] = e[lane] }
            total += Double(FastMath.sum(e))
        }
        return Float(total)
    }

    /// `-log softmax(logits)[target]`: the largest logit taken out, the exponentials summed in
    /// double by blocks of sixteen.
    static func negativeLogLikelihood(_ logits: UnsafePointer<Float>, count: Int, target: Int) -> Double {
        var largest = -Float.infinity
        for i in 0..<count { largest = max(largest, logits[i]) }
        var total = 0.0
        var i = 0
        let shifts = SIMD16<Float>(repeating: largest)
        while i + 16 <= count {
            total += Double(FastMath.sum(FastMath.exp(UnsafeRawPointer(logits + i).loadUnaligned(as: SIMD16<Float>.self) - shifts)))
            i += 16
        }
        while i < count {
            total += Foundation.exp(Double(logits[i] - largest))
            i += 1
        }
        return Foundation.log(total) - Double(logits[target] - largest)
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

/// Vector functions to float32 accuracy.
enum FastMath {
    /// `eˣ` to float32 accuracy (Cephes' expf: x = k·ln 2 + r with k the nearest integer to
    /// x/ln 2, a degree-6 polynomial for eʳ, the exponent bits for 2ᵏ); 0 below -87.3, ∞ above
    /// 88.7. Written with the operations Swift specialises for SIMD vectors.
    @inline(__always)
    static func exp(_ x: SIMD16<Float>) -> SIMD16<Float> {
        let high = SIMD16<Float>(repeating: 88.722_839), low = SIMD16<Float>(repeating: -87.336_55)
        var clamped = x.replacing(with: high, where: x .> high)
        clamped.replace(with: low, where: clamped .< low)
        // k = round(x / ln 2), by adding and taking away 1.5·2²³; its bits then hold k itself.
        let magic = SIMD16<Float>(repeating: 12_582_912)
        let shifted = clamped * 1.442_695_04 + magic
        let k = shifted - magic
        let exponent = unsafeBitCast(shifted, to: SIMD16<Int32>.self) &- 0x4B40_0000
        // r = x - k·ln 2, with ln 2 split in two for exactness.
        var r = clamped - k * 0.693_359_375
        r = r - k * -2.121_944_4e-4
        var p = SIMD16<Float>(repeating: 1.987_569_1e-4)
        p = p * r + 1.398_199_9e-3
        p = p * r + 8.333_452e-3
        p = p * r + 4.166_579_6e-2
        p = p * r + 1.666_666_5e-1
        p = p * r + 5.000_000_1e-1
        let y = p * (r * r) + r + 1
        // 2ᵏ as two factors, so k = 128 (x near 88.7) does not overflow the exponent field.
        let half = exponent &>> 1
        let first = unsafeBitCast((half &+ 127) &<< 23, to: SIMD16<Float>.self)
        let second = unsafeBitCast((exponent &- half &+ 127) &<< 23, to: SIMD16<Float>.self)
        var result = y * first * second
        result.replace(with: 0, where: x .< low)
        result.replace(with: .infinity, where: x .> high)
        return result
    }

    /// The sum of the lanes, in order.
    @inline(__always)
    static func sum(_ v: SIMD16<Float>) -> Float {
        let eight = v.lowHalf + v.highHalf
        let four = eight.lowHalf + eight.highHalf
        let two = four.lowHalf + four.highHalf
        return two[0] + two[1]
    }
}
