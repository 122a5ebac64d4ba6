import Foundation
import LanguageModel

/// AdamW as `torch.optim.AdamW` (foreach=False) computes it in float32: decoupled weight decay
/// `p ← p·(1 − lr·λ)`, `m ← lerp(m, g, 1 − β₁)`, `v ← v·β₂ + (1 − β₂)·g·g`, and
/// `p ← p − lr/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)`, the bias corrections in double as Python
/// computes them.
public struct AdamW: Sendable {
    public var beta1: Double
    public var beta2: Double
    public var eps: Double
    public var weightDecay: Double
    /// Steps taken (torch's `state["step"]`).
    public internal(set) var step = 0
    /// `exp_avg` and `exp_avg_sq` of each tensor, in the order of the parameters given.
    public internal(set) var firstMoments: [[Float]]
    public internal(set) var secondMoments: [[Float]]

    public init(parameters: [ParameterTensor], beta1: Double = 0.9, beta2: Double = 0.999, eps: Double = 1e-8, weightDecay: Double = 0.01) {
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.weightDecay = weightDecay
        firstMoments = parameters.map { [Float](repeating: 0, count: $0.values.count) }
        secondMoments = firstMoments
    }

    /// A state restored from a checkpoint.
    public mutating func restore(step: Int, firstMoments: [[Float]], secondMoments: [[Float]]) {
        precondition(
            firstMoments.map(\.count) == self.firstMoments.map(\.count) && secondMoments.map(\.count) == self.secondMoments.map(\.count))
        self.step = step
        self.firstMoments = firstMoments
        self.secondMoments = secondMoments
    }

    /// One update of every tensor from its gradient, at learning rate `lr`.
    public mutating func update(_ parameters: [ParameterTensor], lr: Double) {
        precondition(parameters.count == firstMoments.count)
        step += 1
        let decay = Float(1 - lr * weightDecay)
        let weight = Float(1 - beta1)
        let b2 = Float(beta2), oneMinusB2 = Float(1 - beta2)
        let correction1 = 1 - Foundation.pow(beta1, Double(step))
        let correction2 = 1 - Foundation.pow(beta2, Double(step))
        let stepSize = Float(-(lr / correction1))
        let root2 = Float(correction2.squareRoot())
        let epsilon = Float(eps)
        for (index, tensor) in parameters.enumerated() {
            tensor.values.withUnsafeMutableBufferPointer { p in
                tensor.gradient.withUnsafeBufferPointer { g in
                    firstMoments[index].withUnsafeMutableBufferPointer { m in
                        secondMoments[index].withUnsafeMutableBufferPointer { v in
                            for i in 0..<p.count {
                                if weightDecay != 0 { p[i] *= decay }
                                let grad = g[i]
                                // torch.lerp: self + w·(end − self) for |w| < 0.5.
                                m[i] = weight < 0.5 ? m[i] + weight * (grad - m[i]) : grad - (grad - m[i]) * (1 - weight)
                                v[i] = v[i] * b2 + oneMinusB2 * grad * grad
                                let denominator = v[i].squareRoot() / root2 + epsilon
                                p[i] += stepSize * (m[i] / denominator)
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `torch.nn.utils.clip_grad_norm_`: the 2-norm of all gradients together (returned), and every
/// gradient scaled by `min(1, maxNorm / (norm + 1e-6))` when `maxNorm > 0`.
public func clipGradientNorm(_ parameters: [ParameterTensor], maxNorm: Double) -> Double {
    var squares = 0.0
    for tensor in parameters {
        // Each tensor's norm first, as torch takes the norm of the norms.
        var sum = 0.0
        for g in tensor.gradient { sum += Double(g) * Double(g) }
        let norm = Double(Float(sum.squareRoot()))
        squares += norm * norm
    }
    let total = Double(Float(squares.squareRoot()))
    guard maxNorm > 0 else { return total }
    let coefficient = Float(maxNorm / (total + 1e-6))
    if coefficient < 1 {
        for tensor in parameters {
            tensor.gradient.withUnsafeMutableBufferPointer { g in
                for i in 0..<g.count { g[i] *= coefficient }
            }
        }
    }
    return total
}

/// Learning-rate schedules as transformers builds them (`get_*_schedule_with_warmup`): a factor of
/// the base rate for each optimizer step, counted from 0; warmup rises linearly from 0.
public enum LearningRateSchedule: String, Sendable, CaseIterable {
    case constant, linear, cosine

    public func factor(step: Int, warmup: Int, total: Int) -> Double {
        if step < warmup { return Double(step) / Double(max(1, warmup)) }
        switch self {
        case .constant:
            return 1
        case .linear:
            return max(0, Double(total - step) / Double(max(1, total - warmup)))
        case .cosine:
            let progress = Double(step - warmup) / Double(max(1, total - warmup))
            return max(0, 0.5 * (1 + Foundation.cos(Double.pi * 0.5 * 2 * progress)))
        }
    }
}
