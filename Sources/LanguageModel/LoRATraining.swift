import Foundation
import TensorCore

/// A sequence to train on: its token ids, and the first position whose token is a target (the
/// loss covers predicting `tokens[i]` for every `i ≥ max(1, firstTarget)`).
public struct TrainingSequence: Sendable, Equatable {
    public let tokens: [Int]
    public let firstTarget: Int

    public init(tokens: [Int], firstTarget: Int) {
        self.tokens = tokens
        self.firstTarget = firstTarget
    }

    public var targetCount: Int { max(0, tokens.count - max(1, firstTarget)) }
}

/// LoRA training over a frozen model: a forward pass that keeps what the backward pass needs, the
/// backward pass through every layer (gradients for the LoRA tensors only; the frozen weights —
/// float, or 4-bit widened tile by tile as in the forward pass — pass gradients back to their
/// inputs and get none), and the next-token cross-entropy over the vocabulary a block of rows at
/// a time, so the `[tokens, vocab]` logits are never held whole.
///
/// Every split of the work is fixed by the shapes, never by the thread count, and every sum runs
/// in a fixed order: the gradients are the same bits on one thread and on many.
public final class LoRATraining: @unchecked Sendable {
    public let model: LanguageModel
    public let modules: [LoRAParameters]
    /// `[layer][target]`.
    let table: [[LoRAParameters?]]
    /// LoRA dropout on each module's input (PEFT's `lora_dropout`), masks drawn from
    /// `dropoutSeed` and the micro-batch's stream, element by element.
    public let dropout: Float
    public var dropoutSeed: UInt64 = 0
    /// Keep only each block's input and compute the block again in the backward pass.
    public let checkpointing: Bool

    private var saves: [LayerSaves]
    private var checkpoints: [[Float]]
    private let scratch = Scratch()

    public init(model: LanguageModel, modules: [LoRAParameters], dropout: Float, checkpointing: Bool) {
        precondition(dropout >= 0 && dropout < 1)
        self.model = model
        self.modules = modules
        self.dropout = dropout
        self.checkpointing = checkpointing
        var table = [[LoRAParameters?]](repeating: Array(repeating: nil, count: LoRATarget.allCases.count), count: model.config.layers)
        for module in modules { table[module.layer][module.target.rawValue] = module }
        self.table = table
        saves = (0..<(checkpointing ? 1 : model.config.layers)).map { _ in LayerSaves() }
        checkpoints = checkpointing ? Array(repeating: [], count: model.config.layers) : []
    }

    /// Every trainable tensor, in a fixed order (module by module, A, B, magnitude).
    public var parameters: [ParameterTensor] { modules.flatMap(\.tensors) }

    public func zeroGradients() {
        for tensor in parameters {
            tensor.gradient.withUnsafeMutableBufferPointer { $0.update(repeating: 0) }
        }
    }

    /// Call after the tensors change (each optimizer step): DoRA's row norms `‖W + s·B·A‖` for the
    /// current A and B, held constant through the step, as PEFT detaches them.
    public func beginStep() {
        for module in modules where module.magnitude != nil {
            let term = LowRankTerm(a: module.a.values, b: module.b.values, rank: module.rank, scale: module.scale)
            module.rowNorms = Linear.rowNorms(
                weight: model.linear(layer: module.layer, target: module.target).weight, terms: [term], threads: model.threads)
        }
    }

    /// One micro-batch: the forward pass, the summed next-token NLL over its targets, and the
    /// backward pass, which adds `∂(Σ NLL / normaliser)/∂θ` to every tensor's gradient.
    /// `stream` tells the dropout masks of this micro-batch from every other's.
    public func accumulateGradients(_ batch: [TrainingSequence], normaliser: Double, stream: UInt64) -> (nll: Double, targets: Int) {
        run(batch, normaliser: normaliser, stream: stream, backward: true)
    }

    /// The summed next-token NLL of a batch with the current LoRA tensors, and its target count
    /// (no dropout, no gradients).
    public func loss(_ batch: [TrainingSequence]) -> (nll: Double, targets: Int) {
        run(batch, normaliser: 1, stream: 0, backward: false)
    }

    // MARK: The pass

    private struct Context {
        let rows: Int
        let lengths: [Int]
        let starts: [Int]
        let cos: [Float]
        let sin: [Float]
        let stream: UInt64
        let dropout: Float
    }

    private func run(_ batch: [TrainingSequence], normaliser: Double, stream: UInt64, backward: Bool) -> (nll: Double, targets: Int) {
        let c = model.config
        let d = c.hiddenSize
        let lengths = batch.map(\.tokens.count)
        let rows = lengths.reduce(0, +)
        guard rows > 0 else { return (0, 0) }
        var starts: [Int] = []
        var positions: [Int] = []
        var targets: [(row: Int, token: Int)] = []
        for sequence in batch {
            starts.append(positions.count)
            let start = positions.count
            positions += 0..<sequence.tokens.count
            for i in max(1, sequence.firstTarget)..<max(1, sequence.tokens.count) {
                targets.append((start + i - 1, sequence.tokens[i]))
            }
        }
        let (cos, sin) = model.rotary.table(positions: positions)
        let context = Context(
            rows: rows, lengths: lengths, starts: starts, cos: cos, sin: sin, stream: stream, dropout: backward ? dropout : 0)

        var x = [Float](repeating: 0, count: rows * d)
        x.withUnsafeMutableBufferPointer { x in
            var row = 0
            for sequence in batch {
                for token in sequence.tokens {
                    precondition(token >= 0 && token < c.vocabSize, "token id outside the vocabulary")
                    model.embedding.widenRows(token..<(token + 1), into: x.baseAddress! + row * d)
                    row += 1
                }
            }
        }
        for layer in 0..<c.layers {
            if checkpointing && backward { checkpoints[layer] = x }
            forwardLayer(layer, x: &x, saves: saves[checkpointing ? 0 : layer], context: context)
        }

        // The final norm, the head and the loss, a block of target rows at a time.
        grow(&scratch.final, rows * d)
        var finalReciprocals = [Float](repeating: 0, count: rows)
        normalize(x, weight: model.finalNorm, rows: rows, into: &scratch.final, reciprocals: &finalReciprocals)
        let (nll, gradient) = headLoss(targets: targets, rows: rows, normaliser: normaliser, gradient: backward)
        guard let finalGradient = gradient else { return (nll, targets.count) }

        var dx = [Float](repeating: 0, count: rows * d)
        x.withUnsafeBufferPointer { x in
            finalGradient.withUnsafeBufferPointer { g in
                model.finalNorm.withUnsafeBufferPointer { w in
                    finalReciprocals.withUnsafeBufferPointer { r in
                        dx.withUnsafeMutableBufferPointer { dx in
                            let (xp, gp, wp, rp) = (sendable(x), sendable(g), sendable(w), sendable(r))
                            let dxp = sendable(dx)
                            model.rowParallel(rows) { range in
                                let o = range.lowerBound * d
                                Kernels.rmsNormBackward(
                                    gp.floats + o, input: xp.floats + o, weight: wp.floats, reciprocals: rp.floats + range.lowerBound,
                                    rows: range.count, width: d, addingTo: dxp.floats + o)
                            }
                        }
                    }
                }
            }
        }
        for layer in stride(from: c.layers - 1, through: 0, by: -1) {
            let layerSaves: LayerSaves
            if checkpointing {
                var input = checkpoints[layer]
                forwardLayer(layer, x: &input, saves: saves[0], context: context)
                layerSaves = saves[0]
            } else {
                layerSaves = saves[layer]
            }
            backwardLayer(layer, dx: &dx, saves: layerSaves, context: context)
        }
        return (nll, targets.count)
    }

    // MARK: Forward

    /// What the backward pass of a block reads: its input, the norms' reciprocals, the rotated
    /// queries and keys, the values, the softmax statistics, the attention output, the residual
    /// after attention, the MLP's gate and up projections, and each LoRA module's `x·Aᵀ`.
    final class LayerSaves {
        var x0: [Float] = []
        var reciprocals1: [Float] = []
        var q: [Float] = []
        var k: [Float] = []
        var v: [Float] = []
        var statistics: [Float] = []
        var attended: [Float] = []
        var x1: [Float] = []
        var reciprocals2: [Float] = []
        var gate: [Float] = []
        var up: [Float] = []
        var low: [[Float]] = Array(repeating: [], count: LoRATarget.allCases.count)
    }

    /// Buffers one pass reuses from layer to layer (a class: each buffer is its own access).
    final class Scratch {
        var normed: [Float] = []
        var projected: [Float] = []
        var hidden: [Float] = []
        var final: [Float] = []
        var dropped: [Float] = []
        var z: [Float] = []
        var scaledGradient: [Float] = []
        var t: [Float] = []
        var product: [Float] = []
        var dh: [Float] = []
        var dg: [Float] = []
        var du: [Float] = []
        var dn: [Float] = []
        var dAttended: [Float] = []
        var dq: [Float] = []
        var dk: [Float] = []
        var dv: [Float] = []
    }

    private func forwardLayer(_ index: Int, x: inout [Float], saves s: LayerSaves, context: Context) {
        let c = model.config
        let rows = context.rows, d = c.hiddenSize
        let layer = model.layers[index]
        grow(&s.q, rows * c.qDim)
        grow(&s.k, rows * c.kvDim)
        grow(&s.v, rows * c.kvDim)
        grow(&s.attended, rows * c.qDim)
        grow(&s.statistics, rows * c.heads * 2)
        grow(&s.gate, rows * c.intermediateSize)
        grow(&s.up, rows * c.intermediateSize)
        grow(&s.reciprocals1, rows)
        grow(&s.reciprocals2, rows)
        grow(&scratch.normed, rows * d)
        grow(&scratch.projected, rows * d)
        grow(&scratch.hidden, rows * c.intermediateSize)
        s.x0 = x

        normalize(x, weight: layer.inputNorm, rows: rows, into: &scratch.normed, reciprocals: &s.reciprocals1)
        apply(index, .q, input: scratch.normed, into: &s.q, saves: s, context: context)
        apply(index, .k, input: scratch.normed, into: &s.k, saves: s, context: context)
        apply(index, .v, input: scratch.normed, into: &s.v, saves: s, context: context)
        model.rotate(&s.q, heads: c.heads, rows: rows, cos: context.cos, sin: context.sin)
        model.rotate(&s.k, heads: c.kvHeads, rows: rows, cos: context.cos, sin: context.sin)
        s.statistics.withUnsafeMutableBufferPointer { statistics in
            model.attend(
                q: s.q, k: s.k, v: s.v, into: &s.attended, rows: rows, sequences: context.lengths, starts: context.starts, cache: nil,
                layer: index, statistics: statistics.baseAddress!)
        }
        apply(index, .o, input: s.attended, into: &scratch.projected, saves: s, context: context)
        add(scratch.projected, to: &x, count: rows * d)
        s.x1 = x

        normalize(x, weight: layer.postNorm, rows: rows, into: &scratch.normed, reciprocals: &s.reciprocals2)
        apply(index, .gate, input: scratch.normed, into: &s.gate, saves: s, context: context)
        apply(index, .up, input: scratch.normed, into: &s.up, saves: s, context: context)
        gated(s, rows: rows, into: &scratch.hidden)
        apply(index, .down, input: scratch.hidden, into: &scratch.projected, saves: s, context: context)
        add(scratch.projected, to: &x, count: rows * d)
    }

    /// `y = x·Wᵀ (+ s·(x̃·Aᵀ)·Bᵀ, DoRA-scaled) (+ bias)`, `x̃` the input after dropout; keeps `x̃·Aᵀ`.
    private func apply(
        _ layer: Int, _ target: LoRATarget, input: [Float], into output: inout [Float], saves s: LayerSaves, context: Context
    ) {
        let linear = model.linear(layer: layer, target: target)
        let rows = context.rows, inputs = linear.inFeatures, outputs = linear.outFeatures
        let threads = model.threads
        input.withUnsafeBufferPointer { input in
            output.withUnsafeMutableBufferPointer { output in
                let x = MatrixView(input.baseAddress!, rows: rows, columns: inputs)
                let y = MutableMatrixView(output.baseAddress!, rows: rows, columns: outputs)
                linear.weight.product(x, into: y, threads: threads, workspace: model.workspace)
                if let module = table[layer][target.rawValue] {
                    grow(&s.low[target.rawValue], rows * module.rank)
                    s.low[target.rawValue].withUnsafeMutableBufferPointer { low in
                        withDropped(x, layer: layer, target: target, context: context) { source in
                            module.a.values.withUnsafeBufferPointer { a in
                                BLAS.linear(
                                    input: source, weight: MatrixView(a.baseAddress!, rows: module.rank, columns: inputs),
                                    into: MutableMatrixView(low.baseAddress!, rows: rows, columns: module.rank), threads: threads)
                            }
                        }
                        module.b.values.withUnsafeBufferPointer { b in
                            BLAS.multiply(
                                MatrixView(low.baseAddress!, rows: rows, columns: module.rank),
                                MatrixView(b.baseAddress!, rows: outputs, columns: module.rank).transpose, into: y, scale: module.scale,
                                accumulate: true, threads: threads)
                        }
                    }
                    if let magnitude = module.magnitude {
                        let factor = zip(magnitude.values, module.rowNorms).map { $0 / $1 }
                        for row in 0..<rows {
                            let values = output.baseAddress! + row * outputs
                            for column in 0..<outputs { values[column] *= factor[column] }
                        }
                    }
                }
                if let bias = linear.bias {
                    for row in 0..<rows {
                        let values = output.baseAddress! + row * outputs
                        for column in 0..<outputs { values[column] += bias[column] }
                    }
                }
            }
        }
    }

    /// Runs `body` with the module's input after dropout (in `scratch.dropped`), or the input
    /// itself without dropout.
    private func withDropped<R>(_ x: MatrixView, layer: Int, target: LoRATarget, context: Context, _ body: (MatrixView) -> R) -> R {
        guard context.dropout > 0 else { return body(x) }
        let count = x.rows * x.columns
        grow(&scratch.dropped, count)
        let key = dropoutKey(layer: layer, target: target, context: context)
        let p = context.dropout, keepScale = 1 / (1 - context.dropout)
        let source = SendableRawPointer(UnsafeRawPointer(x.base))
        let width = x.columns
        return scratch.dropped.withUnsafeMutableBufferPointer { out in
            let destination = sendable(out)
            model.rowParallel(x.rows) { range in
                let from = source.raw.assumingMemoryBound(to: Float.self), to = destination.floats
                for i in (range.lowerBound * width)..<(range.upperBound * width) {
                    to[i] = LoRATraining.keeps(key: key, index: i, p: p) ? from[i] * keepScale : 0
                }
            }
            return body(MatrixView(out.baseAddress!, rows: x.rows, columns: width))
        }
    }

    private func dropoutKey(layer: Int, target: LoRATarget, context: Context) -> UInt64 {
        SplitMix64.mix(dropoutSeed ^ SplitMix64.mix(context.stream &* 0x100 &+ UInt64(layer) &* 8 &+ UInt64(target.rawValue) &+ 1))
    }

    @inline(__always) static func keeps(key: UInt64, index: Int, p: Float) -> Bool {
        Float(SplitMix64.mix(key &+ UInt64(index)) >> 40) * 0x1p-24 >= p
    }

    /// `h = silu(gate)·up` of a block's saved projections.
    private func gated(_ s: LayerSaves, rows: Int, into hidden: inout [Float]) {
        let width = model.config.intermediateSize
        hidden.withUnsafeMutableBufferPointer { h in
            s.gate.withUnsafeBufferPointer { g in
                s.up.withUnsafeBufferPointer { u in
                    let (hp, gp, up) = (sendable(h), sendable(g), sendable(u))
                    model.rowParallel(rows) { range in
                        let o = range.lowerBound * width
                        (hp.floats + o).update(from: gp.floats + o, count: range.count * width)
                        Kernels.siluGate(hp.floats + o, up: up.floats + o, count: range.count * width)
                    }
                }
            }
        }
    }

    private func normalize(_ x: [Float], weight: [Float], rows: Int, into output: inout [Float], reciprocals: inout [Float]) {
        let d = model.config.hiddenSize, eps = model.config.rmsNormEps
        x.withUnsafeBufferPointer { x in
            weight.withUnsafeBufferPointer { w in
                output.withUnsafeMutableBufferPointer { out in
                    reciprocals.withUnsafeMutableBufferPointer { r in
                        let (xp, wp, op, rp) = (sendable(x), sendable(w), sendable(out), sendable(r))
                        model.rowParallel(rows) { range in
                            let o = range.lowerBound * d
                            Kernels.rmsNorm(
                                xp.floats + o, weight: wp.floats, rows: range.count, width: d, eps: eps, into: op.floats + o,
                                reciprocals: rp.floats + range.lowerBound)
                        }
                    }
                }
            }
        }
    }

    private func add(_ delta: [Float], to x: inout [Float], count: Int) {
        delta.withUnsafeBufferPointer { delta in
            x.withUnsafeMutableBufferPointer { x in
                let (dp, xp) = (sendable(delta), sendable(x))
                parallelForChunks(count: count, chunk: 1 << 16, threads: model.threads) { range in
                    for i in range { xp.floats[i] += dp.floats[i] }
                }
            }
        }
    }

    // MARK: Loss

    /// Σ NLL of the targets (rows of `scratch.final`), and with `gradient` its gradient by the
    /// final hidden rows (`[rows, hidden]`), divided by `normaliser`.
    private func headLoss(targets: [(row: Int, token: Int)], rows: Int, normaliser: Double, gradient wantsGradient: Bool)
        -> (nll: Double, gradient: [Float]?)
    {
        let vocab = model.config.vocabSize, d = model.config.hiddenSize
        // 512 rows: the product back through the head (`[rows, vocab]·[vocab, hidden]`) then
        // splits into two calls of rows, one per thread (a call has at least 256 rows).
        let block = 512
        let capacity = min(block, max(1, targets.count))
        var logits = [Float](repeating: 0, count: capacity * vocab)
        var gathered = [Float](repeating: 0, count: capacity * d)
        var back = wantsGradient ? gathered : []
        var gradient = wantsGradient ? [Float](repeating: 0, count: rows * d) : []
        let scale = Float(1 / normaliser)
        var sum = 0.0
        var start = 0
        while start < targets.count {
            let count = min(block, targets.count - start)
            scratch.final.withUnsafeBufferPointer { hidden in
                gathered.withUnsafeMutableBufferPointer { g in
                    for i in 0..<count {
                        (g.baseAddress! + i * d).update(from: hidden.baseAddress! + targets[start + i].row * d, count: d)
                    }
                }
            }
            gathered.withUnsafeBufferPointer { g in
                logits.withUnsafeMutableBufferPointer { model.logits(hidden: g.baseAddress!, rows: count, into: $0.baseAddress!) }
            }
            var partial = [Double](repeating: 0, count: count)
            let chosen = (0..<count).map { targets[start + $0].token }
            logits.withUnsafeMutableBufferPointer { l in
                partial.withUnsafeMutableBufferPointer { p in
                    let (lp, pp) = (sendable(l), sendable(p))
                    parallelForChunks(count: count, chunk: 16, threads: model.threads) { range in
                        let nll = pp.raw.assumingMemoryBound(to: Double.self)
                        for i in range {
                            let row = lp.floats + i * vocab
                            nll[i] =
                                wantsGradient
                                ? Kernels.crossEntropyGradient(row, count: vocab, target: chosen[i], scale: scale)
                                : Kernels.negativeLogLikelihood(row, count: vocab, target: chosen[i])
                        }
                    }
                }
            }
            sum += partial.reduce(0, +)
            if wantsGradient {
                logits.withUnsafeBufferPointer { l in
                    back.withUnsafeMutableBufferPointer { b in
                        model.head.weight.inputGradient(
                            MatrixView(l.baseAddress!, rows: count, columns: vocab),
                            into: MutableMatrixView(b.baseAddress!, rows: count, columns: d), accumulate: false, threads: model.threads,
                            workspace: model.workspace)
                    }
                }
                gradient.withUnsafeMutableBufferPointer { out in
                    back.withUnsafeBufferPointer { b in
                        for i in 0..<count {
                            let row = out.baseAddress! + targets[start + i].row * d
                            let from = b.baseAddress! + i * d
                            for j in 0..<d { row[j] += from[j] }
                        }
                    }
                }
            }
            start += count
        }
        return (sum, wantsGradient ? gradient : nil)
    }

    // MARK: Backward

    private func backwardLayer(_ index: Int, dx: inout [Float], saves s: LayerSaves, context: Context) {
        let c = model.config
        let rows = context.rows, d = c.hiddenSize, width = c.intermediateSize
        let layer = model.layers[index]
        grow(&scratch.dh, rows * width)
        grow(&scratch.dg, rows * width)
        grow(&scratch.du, rows * width)
        grow(&scratch.dn, rows * d)
        grow(&scratch.dAttended, rows * c.qDim)
        grow(&scratch.dq, rows * c.qDim)
        grow(&scratch.dk, rows * c.kvDim)
        grow(&scratch.dv, rows * c.kvDim)

        // MLP: x2 = x1 + down(silu(gate(n2))·up(n2)), n2 = norm(x1).
        var unusedReciprocals = [Float](repeating: 0, count: rows)
        normalize(s.x1, weight: layer.postNorm, rows: rows, into: &scratch.normed, reciprocals: &unusedReciprocals)
        gated(s, rows: rows, into: &scratch.hidden)
        backward(
            index, .down, input: scratch.hidden, outputGradient: dx, inputGradient: &scratch.dh, accumulate: false, saves: s,
            context: context)
        scratch.dh.withUnsafeBufferPointer { dh in
            s.gate.withUnsafeBufferPointer { g in
                s.up.withUnsafeBufferPointer { u in
                    scratch.dg.withUnsafeMutableBufferPointer { dg in
                        scratch.du.withUnsafeMutableBufferPointer { du in
                            let (dhp, gp, up, dgp, dup) = (sendable(dh), sendable(g), sendable(u), sendable(dg), sendable(du))
                            model.rowParallel(rows) { range in
                                let o = range.lowerBound * width
                                Kernels.siluGateBackward(
                                    dhp.floats + o, gate: gp.floats + o, up: up.floats + o, count: range.count * width,
                                    gateGradient: dgp.floats + o, upGradient: dup.floats + o)
                            }
                        }
                    }
                }
            }
        }
        backward(
            index, .gate, input: scratch.normed, outputGradient: scratch.dg, inputGradient: &scratch.dn, accumulate: false, saves: s,
            context: context)
        backward(
            index, .up, input: scratch.normed, outputGradient: scratch.du, inputGradient: &scratch.dn, accumulate: true, saves: s,
            context: context)
        normBackward(scratch.dn, input: s.x1, weight: layer.postNorm, reciprocals: s.reciprocals2, rows: rows, into: &dx)

        // Attention: x1 = x0 + o(attention(rope(q(n1)), rope(k(n1)), v(n1))), n1 = norm(x0).
        backward(
            index, .o, input: s.attended, outputGradient: dx, inputGradient: &scratch.dAttended, accumulate: false, saves: s,
            context: context)
        attentionBackward(s, context: context)
        model.rotate(&scratch.dq, heads: c.heads, rows: rows, cos: context.cos, sin: context.sin, inverse: true)
        model.rotate(&scratch.dk, heads: c.kvHeads, rows: rows, cos: context.cos, sin: context.sin, inverse: true)
        normalize(s.x0, weight: layer.inputNorm, rows: rows, into: &scratch.normed, reciprocals: &unusedReciprocals)
        // The first block's input is the embedding, which is frozen: nothing passes further back.
        let passBack = index > 0
        for (target, gradient) in [(LoRATarget.q, scratch.dq), (.k, scratch.dk), (.v, scratch.dv)] {
            if passBack {
                backward(
                    index, target, input: scratch.normed, outputGradient: gradient, inputGradient: &scratch.dn, accumulate: target != .q,
                    saves: s, context: context)
            } else {
                backward(
                    index, target, input: scratch.normed, outputGradient: gradient, inputGradient: nil, accumulate: false, saves: s,
                    context: context)
            }
        }
        if passBack {
            normBackward(scratch.dn, input: s.x0, weight: layer.inputNorm, reciprocals: s.reciprocals1, rows: rows, into: &dx)
        }
    }

    private func normBackward(_ gradient: [Float], input: [Float], weight: [Float], reciprocals: [Float], rows: Int, into dx: inout [Float])
    {
        let d = model.config.hiddenSize
        gradient.withUnsafeBufferPointer { g in
            input.withUnsafeBufferPointer { x in
                weight.withUnsafeBufferPointer { w in
                    reciprocals.withUnsafeBufferPointer { r in
                        dx.withUnsafeMutableBufferPointer { dx in
                            let (gp, xp, wp, rp, dxp) = (sendable(g), sendable(x), sendable(w), sendable(r), sendable(dx))
                            model.rowParallel(rows) { range in
                                let o = range.lowerBound * d
                                Kernels.rmsNormBackward(
                                    gp.floats + o, input: xp.floats + o, weight: wp.floats, reciprocals: rp.floats + range.lowerBound,
                                    rows: range.count, width: d, addingTo: dxp.floats + o)
                            }
                        }
                    }
                }
            }
        }
    }

    private func backward(
        _ layer: Int, _ target: LoRATarget, input: [Float], outputGradient: [Float], inputGradient: UnsafeMutablePointer<[Float]>?,
        accumulate: Bool, saves s: LayerSaves, context: Context
    ) {
        let linear = model.linear(layer: layer, target: target)
        let module = table[layer][target.rawValue]
        guard module != nil || inputGradient != nil else { return }
        let rows = context.rows, inputs = linear.inFeatures, outputs = linear.outFeatures
        let threads = model.threads
        var gradient = outputGradient
        if let module, let magnitude = module.magnitude {
            // DoRA: y = c⊙z (+ bias), c = m / ‖W + s·B·A‖ held constant, z = x·Wᵀ + s·(x·Aᵀ)·Bᵀ.
            // ∂m_j = Σ_t ∂y_tj·z_tj / norm_j, and the rest sees ∂y⊙c.
            grow(&scratch.z, rows * outputs)
            input.withUnsafeBufferPointer { x in
                scratch.z.withUnsafeMutableBufferPointer { z in
                    let y = MutableMatrixView(z.baseAddress!, rows: rows, columns: outputs)
                    linear.weight.product(
                        MatrixView(x.baseAddress!, rows: rows, columns: inputs), into: y, threads: threads, workspace: model.workspace)
                    s.low[target.rawValue].withUnsafeBufferPointer { low in
                        module.b.values.withUnsafeBufferPointer { b in
                            BLAS.multiply(
                                MatrixView(low.baseAddress!, rows: rows, columns: module.rank),
                                MatrixView(b.baseAddress!, rows: outputs, columns: module.rank).transpose, into: y, scale: module.scale,
                                accumulate: true, threads: threads)
                        }
                    }
                }
            }
            let norms = module.rowNorms
            let factor = zip(magnitude.values, norms).map { $0 / $1 }
            var sums = [Float](repeating: 0, count: outputs)
            for row in 0..<rows {
                for j in 0..<outputs { sums[j] += outputGradient[row * outputs + j] * scratch.z[row * outputs + j] }
            }
            for j in 0..<outputs { magnitude.gradient[j] += sums[j] / norms[j] }
            for row in 0..<rows {
                for j in 0..<outputs { gradient[row * outputs + j] *= factor[j] }
            }
        }
        gradient.withUnsafeBufferPointer { g in
            let dy = MatrixView(g.baseAddress!, rows: rows, columns: outputs)
            if let module {
                let r = module.rank
                grow(&scratch.t, rows * r)
                s.low[target.rawValue].withUnsafeBufferPointer { low in
                    module.b.gradient.withUnsafeMutableBufferPointer { db in
                        BLAS.multiply(
                            dy.transpose, MatrixView(low.baseAddress!, rows: rows, columns: r),
                            into: MutableMatrixView(db.baseAddress!, rows: outputs, columns: r), scale: module.scale, accumulate: true,
                            threads: threads)
                    }
                }
                scratch.t.withUnsafeMutableBufferPointer { t in
                    module.b.values.withUnsafeBufferPointer { b in
                        BLAS.multiply(
                            dy, MatrixView(b.baseAddress!, rows: outputs, columns: r),
                            into: MutableMatrixView(t.baseAddress!, rows: rows, columns: r), threads: threads)
                    }
                }
                input.withUnsafeBufferPointer { x in
                    withDropped(MatrixView(x.baseAddress!, rows: rows, columns: inputs), layer: layer, target: target, context: context) {
                        source in
                        scratch.t.withUnsafeBufferPointer { t in
                            module.a.gradient.withUnsafeMutableBufferPointer { da in
                                BLAS.multiply(
                                    MatrixView(t.baseAddress!, rows: rows, columns: r).transpose, source,
                                    into: MutableMatrixView(da.baseAddress!, rows: r, columns: inputs), scale: module.scale,
                                    accumulate: true, threads: threads)
                            }
                        }
                    }
                }
            }
            guard let inputGradient else { return }
            grow(&inputGradient.pointee, rows * inputs)
            inputGradient.pointee.withUnsafeMutableBufferPointer { dx in
                let dxView = MutableMatrixView(dx.baseAddress!, rows: rows, columns: inputs)
                linear.weight.inputGradient(dy, into: dxView, accumulate: accumulate, threads: threads, workspace: model.workspace)
                guard let module else { return }
                let r = module.rank
                scratch.t.withUnsafeBufferPointer { t in
                    module.a.values.withUnsafeBufferPointer { a in
                        let tView = MatrixView(t.baseAddress!, rows: rows, columns: r)
                        let aView = MatrixView(a.baseAddress!, rows: r, columns: inputs)
                        guard context.dropout > 0 else {
                            BLAS.multiply(tView, aView, into: dxView, scale: module.scale, accumulate: true, threads: threads)
                            return
                        }
                        // Through the dropout: the kept elements, scaled as they were.
                        grow(&scratch.product, rows * inputs)
                        scratch.product.withUnsafeMutableBufferPointer { product in
                            BLAS.multiply(
                                tView, aView, into: MutableMatrixView(product.baseAddress!, rows: rows, columns: inputs),
                                scale: module.scale,
                                threads: threads)
                            let key = dropoutKey(layer: layer, target: target, context: context)
                            let p = context.dropout, keepScale = 1 / (1 - context.dropout)
                            let (pp, dxp) = (sendable(product), sendable(dx))
                            model.rowParallel(rows) { range in
                                for i in (range.lowerBound * inputs)..<(range.upperBound * inputs)
                                where LoRATraining.keeps(key: key, index: i, p: p) {
                                    dxp.floats[i] += pp.floats[i] * keepScale
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    private func backward(
        _ layer: Int, _ target: LoRATarget, input: [Float], outputGradient: [Float], inputGradient: inout [Float], accumulate: Bool,
        saves s: LayerSaves, context: Context
    ) {
        withUnsafeMutablePointer(to: &inputGradient) {
            backward(
                layer, target, input: input, outputGradient: outputGradient, inputGradient: $0, accumulate: accumulate, saves: s,
                context: context)
        }
    }

    /// Attention's backward pass over the saved rotated queries and keys, values, output and
    /// softmax statistics, into `scratch.dq` (by the rotated queries), `scratch.dk`, `scratch.dv`.
    /// A task is a (sequence, key-value head): it owns its rows of the key and value gradients
    /// and goes through its query heads in order, so nothing is summed across tasks.
    private func attentionBackward(_ s: LayerSaves, context: Context) {
        let c = model.config
        let headDim = c.headDim, kvDim = c.kvDim, qDim = c.qDim
        let group = c.heads / c.kvHeads
        let scale = 1 / Float(headDim).squareRoot()
        let window = c.slidingWindow
        scratch.dk.withUnsafeMutableBufferPointer { $0.update(repeating: 0) }
        scratch.dv.withUnsafeMutableBufferPointer { $0.update(repeating: 0) }
        let tasks = context.lengths.count * c.kvHeads
        let longest = context.lengths.max() ?? 0
        let block = LanguageModel.attentionBlock
        let capacity = max(1, min(block, longest) * longest)
        let lengths = context.lengths, starts = context.starts
        let threads = model.threads
        withPointers(s.q, s.k, s.v, s.attended, scratch.dAttended, s.statistics) { q, k, v, o, dO, statistics in
            withMutablePointers(&scratch.dq, &scratch.dk, &scratch.dv) { dq, dk, dv in
                parallelForChunks(count: tasks, chunk: (tasks + threads - 1) / max(1, threads), threads: threads) { chunk in
                    let scores = UnsafeMutablePointer<Float>.allocate(capacity: capacity)
                    let dp = UnsafeMutablePointer<Float>.allocate(capacity: capacity)
                    let delta = UnsafeMutablePointer<Float>.allocate(capacity: max(1, longest))
                    defer {
                        scores.deallocate()
                        dp.deallocate()
                        delta.deallocate()
                    }
                    for task in chunk {
                        let sequence = task / c.kvHeads, kvHead = task % c.kvHeads
                        let length = lengths[sequence], start = starts[sequence]
                        let kBase = k.floats + start * kvDim + kvHead * headDim
                        let vBase = v.floats + start * kvDim + kvHead * headDim
                        let dkBase = dk.floats + start * kvDim + kvHead * headDim
                        let dvBase = dv.floats + start * kvDim + kvHead * headDim
                        for head in (kvHead * group)..<((kvHead + 1) * group) {
                            let qBase = q.floats + start * qDim + head * headDim
                            let oBase = o.floats + start * qDim + head * headDim
                            let dOBase = dO.floats + start * qDim + head * headDim
                            let dqBase = dq.floats + start * qDim + head * headDim
                            // Δ_i = Σ dO_i·O_i: the softmax's backward needs it per row.
                            for i in 0..<length {
                                var sum: Float = 0
                                for j in 0..<headDim { sum += dOBase[i * qDim + j] * oBase[i * qDim + j] }
                                delta[i] = sum
                            }
                            var blockStart = 0
                            while blockStart < length {
                                let blockEnd = min(length, blockStart + block)
                                let count = blockEnd - blockStart
                                let seen = blockEnd
                                let valid = { (row: Int) -> Range<Int> in
                                    let position = blockStart + row
                                    let lowest = window.map { max(0, position - $0 + 1) } ?? 0
                                    return lowest..<(position + 1)
                                }
                                let qBlock = MatrixView(qBase + blockStart * qDim, rows: count, columns: headDim, rowStride: qDim)
                                let keys = MatrixView(kBase, rows: seen, columns: headDim, rowStride: kvDim)
                                // P, rebuilt exactly as the forward pass computed it.
                                BLAS.multiply(
                                    qBlock, keys.transpose, into: MutableMatrixView(scores, rows: count, columns: seen), scale: scale)
                                Kernels.probabilities(
                                    scores, rows: count, stride: seen,
                                    statistics: statistics.floats + ((start + blockStart) * c.heads + head) * 2,
                                    statisticsStride: c.heads * 2,
                                    valid: valid)
                                let dOBlock = MatrixView(dOBase + blockStart * qDim, rows: count, columns: headDim, rowStride: qDim)
                                // dV += Pᵀ·dO; dP = dO·Vᵀ; dS = P⊙(dP − Δ).
                                BLAS.multiply(
                                    MatrixView(scores, rows: count, columns: seen).transpose, dOBlock,
                                    into: MutableMatrixView(dvBase, rows: seen, columns: headDim, rowStride: kvDim), accumulate: true)
                                BLAS.multiply(
                                    dOBlock, MatrixView(vBase, rows: seen, columns: headDim, rowStride: kvDim).transpose,
                                    into: MutableMatrixView(dp, rows: count, columns: seen))
                                for row in 0..<count {
                                    let d = delta[blockStart + row]
                                    let p = scores + row * seen, g = dp + row * seen
                                    for j in 0..<seen { g[j] = p[j] * (g[j] - d) }
                                }
                                let dS = MatrixView(dp, rows: count, columns: seen)
                                // dQ = scale·dS·K; dK += scale·dSᵀ·Q.
                                BLAS.multiply(
                                    dS, keys,
                                    into: MutableMatrixView(dqBase + blockStart * qDim, rows: count, columns: headDim, rowStride: qDim),
                                    scale: scale)
                                BLAS.multiply(
                                    dS.transpose, qBlock, into: MutableMatrixView(dkBase, rows: seen, columns: headDim, rowStride: kvDim),
                                    scale: scale, accumulate: true)
                                blockStart = blockEnd
                            }
                        }
                    }
                }
            }
        }
    }
}

// MARK: Pointer plumbing

struct SendableFloats: @unchecked Sendable {
    let floats: UnsafeMutablePointer<Float>
    var raw: UnsafeMutableRawPointer { UnsafeMutableRawPointer(floats) }
}

func sendable(_ buffer: UnsafeBufferPointer<Float>) -> SendableFloats {
    SendableFloats(floats: UnsafeMutablePointer(mutating: buffer.baseAddress!))
}

func sendable(_ buffer: UnsafeMutableBufferPointer<Float>) -> SendableFloats {
    SendableFloats(floats: buffer.baseAddress!)
}

func sendable(_ buffer: UnsafeMutableBufferPointer<Double>) -> SendableFloats {
    SendableFloats(floats: UnsafeMutableRawPointer(buffer.baseAddress!).assumingMemoryBound(to: Float.self))
}

/// Grows a buffer to hold at least `count` floats (its contents then undefined).
func grow(_ array: inout [Float], _ count: Int) {
    if array.count < count { array = [Float](repeating: 0, count: count) }
}

private func withPointers<R>(
    _ a: [Float], _ b: [Float], _ c: [Float], _ d: [Float], _ e: [Float], _ f: [Float],
    _ body: (SendableFloats, SendableFloats, SendableFloats, SendableFloats, SendableFloats, SendableFloats) -> R
) -> R {
    a.withUnsafeBufferPointer { a in
        b.withUnsafeBufferPointer { b in
            c.withUnsafeBufferPointer { c in
                d.withUnsafeBufferPointer { d in
                    e.withUnsafeBufferPointer { e in
                        f.withUnsafeBufferPointer { f in body(sendable(a), sendable(b), sendable(c), sendable(d), sendable(e), sendable(f))
                        }
                    }
                }
            }
        }
    }
}

private func withMutablePointers<R>(
    _ a: inout [Float], _ b: inout [Float], _ c: inout [Float], _ body: (SendableFloats, SendableFloats, SendableFloats) -> R
) -> R {
    a.withUnsafeMutableBufferPointer { a in
        b.withUnsafeMutableBufferPointer { b in
            c.withUnsafeMutableBufferPointer { c in body(sendable(a), sendable(b), sendable(c)) }
        }
    }
}
