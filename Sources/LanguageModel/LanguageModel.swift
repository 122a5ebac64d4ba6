import LoRAMerge
import TensorCore

/// A Llama-family decoder (Llama 2/3, Mistral, Qwen2) on the CPU, computing in float32 what
/// transformers computes: token embedding, per layer RMSNorm → attention (GQA, RoPE, causal,
/// optionally a sliding window) → residual → RMSNorm → SiLU-gated MLP → residual, a final
/// RMSNorm and the output head (the embedding when tied).
///
/// Weights stay as the checkpoint stores them: float32 mapped, other floats widened once, 4-bit
/// widened tile by tile into one reused buffer just before its product, a matrix at a time. LoRA adapters are applied un-merged.
/// Sequences of a batch may differ in length: linear layers run over all their rows at once,
/// attention over each sequence on its own.
public final class LanguageModel: @unchecked Sendable {
    public let config: ModelConfig
    let embedding: WeightMatrix
    let layers: [DecoderLayer]
    let finalNorm: [Float]
    let head: Linear
    let rotary: RotaryTable
    public let threads: Int
    /// Where 4-bit matrices are widened, one at a time.
    let workspace = Workspace()

    struct DecoderLayer {
        let inputNorm: [Float]
        let postNorm: [Float]
        let q, k, v, o, gate, up, down: Linear
    }

    /// Binds the tensors of a checkpoint (names as transformers saves them) to the config, and
    /// the adapters' modules to its linear layers. Every missing tensor and every shape that does
    /// not fit is a `ModelError` naming it.
    public init(
        config: ModelConfig, tensors: [String: StoredTensor], adapters: [(adapter: LoRAAdapter, weight: Float)] = [], path: String,
        threads: Int = ParallelismSettings.threadCount
    ) throws {
        self.config = config
        self.threads = threads
        let plan = try MergePlan(
            adapters: adapters,
            base: tensors.map { (name: $0.key, dtype: $0.value.dtype, shape: $0.value.shape) }.sorted { $0.name < $1.name })
        func stored(_ name: String) throws(ModelError) -> StoredTensor {
            if let replacement = plan.changes[name]?.replacement { return .plain(replacement.tensor) }
            guard let tensor = tensors[name] else { throw ModelError(path: path, "tensor '\(name)' is missing") }
            return tensor
        }
        func vector(_ name: String, _ count: Int) throws(ModelError) -> [Float] {
            guard case .plain(let tensor) = try stored(name) else {
                throw ModelError(path: path, "tensor '\(name)' is 4-bit; it must be float")
            }
            guard tensor.shape.dimensions == [count], tensor.dtype.isFloatingPoint else {
                throw ModelError(path: path, "tensor '\(name)' has shape \(tensor.shape.dimensions), the config says [\(count)]")
            }
            return LoRAModule.floats(tensor)
        }
        func linear(_ name: String, out: Int, in inputs: Int, bias: Bool) throws -> Linear {
            let weightName = name + ".weight"
            let weight = try WeightMatrix(try stored(weightName), name: weightName, rows: out, columns: inputs, path: path)
            let biasValues = bias ? try vector(name + ".bias", out) : nil
            var terms: [LowRankTerm] = []
            var magnitude: [Float]? = nil
            if let change = plan.changes[weightName] {
                for term in change.terms {
                    let module = term.module
                    guard module.orientation == .outputsByInputs, !module.isEmbedding, module.biasB == nil else {
                        throw ModelError(
                            path: change.adapterPath, "module '\(module.name)' is not a plain linear LoRA; qtool applies those un-merged")
                    }
                    let (a, b) = module.peftFactors()
                    terms.append(LowRankTerm(a: a, b: b, rank: module.rank, scale: term.scale))
                    if let m = module.magnitude {
                        guard change.terms.count == 1 else {
                            throw ModelError(path: change.adapterPath, "DoRA module '\(module.name)' is combined with another adapter")
                        }
                        magnitude = LoRAModule.floats(m)
                    }
                }
            }
            if let bias = plan.changes[name + ".bias"], bias.replacement == nil {
                throw ModelError(
                    path: bias.adapterPath, "the adapter trains '\(name).bias' (lora_bias); qtool does not apply that un-merged")
            }
            return Linear(weight: weight, bias: biasValues, terms: terms, doraMagnitude: magnitude, threads: threads)
        }

        let d = config.hiddenSize
        embedding = try WeightMatrix(
            try stored("model.embed_tokens.weight"), name: "model.embed_tokens.weight", rows: config.vocabSize, columns: d, path: path)
        if plan.changes["model.embed_tokens.weight"]?.terms.isEmpty == false {
            throw ModelError(path: path, "the adapter changes the embeddings; qtool applies linear LoRA modules un-merged only")
        }
        var layers: [DecoderLayer] = []
        for index in 0..<config.layers {
            let prefix = "model.layers.\(index)."
            let attention = prefix + "self_attn.", mlp = prefix + "mlp."
            layers.append(
                DecoderLayer(
                    inputNorm: try vector(prefix + "input_layernorm.weight", d),
                    postNorm: try vector(prefix + "post_attention_layernorm.weight", d),
                    q: try linear(attention + "q_proj", out: config.qDim, in: d, bias: config.qkvBias),
                    k: try linear(attention + "k_proj", out: config.kvDim, in: d, bias: config.qkvBias),
                    v: try linear(attention + "v_proj", out: config.kvDim, in: d, bias: config.qkvBias),
                    o: try linear(attention + "o_proj", out: d, in: config.qDim, bias: config.outputBias),
                    gate: try linear(mlp + "gate_proj", out: config.intermediateSize, in: d, bias: config.mlpBias),
                    up: try linear(mlp + "up_proj", out: config.intermediateSize, in: d, bias: config.mlpBias),
                    down: try linear(mlp + "down_proj", out: d, in: config.intermediateSize, bias: config.mlpBias)))
        }
        self.layers = layers
        finalNorm = try vector("model.norm.weight", d)
        if config.tiedEmbeddings && tensors["lm_head.weight"] == nil && plan.changes["lm_head.weight"] == nil {
            head = Linear(weight: embedding, bias: nil, threads: threads)
        } else {
            head = try linear("lm_head", out: config.vocabSize, in: d, bias: false)
        }
        rotary = RotaryTable(config: config)
    }

    /// Query rows attended at once: each block multiplies only the keys up to its last row.
    static let attentionBlock = 128

    /// Keys and values of the positions seen so far, per layer: what generation reuses.
    public final class Cache: @unchecked Sendable {
        var keys: [[Float]]
        var values: [[Float]]
        public private(set) var length = 0
        let kvDim: Int

        public init(model: LanguageModel) {
            kvDim = model.config.kvDim
            keys = Array(repeating: [], count: model.config.layers)
            values = keys
        }

        func reserve(_ total: Int) {
            for layer in keys.indices where keys[layer].count < total * kvDim {
                keys[layer] += [Float](repeating: 0, count: total * kvDim - keys[layer].count)
                values[layer] += [Float](repeating: 0, count: total * kvDim - values[layer].count)
            }
        }

        func advance(by count: Int) { length += count }
    }

    /// The final hidden states (after the last norm) of each token of each sequence, rows in
    /// order: `[Σ lengths, hidden]`. With a cache (one sequence only), the tokens continue the
    /// cached ones and their keys and values are added to it.
    public func hiddenStates(_ sequences: [[Int]], cache: Cache? = nil) -> [Float] {
        precondition(cache == nil || sequences.count == 1, "a cache holds one sequence")
        let d = config.hiddenSize
        let rows = sequences.reduce(0) { $0 + $1.count }
        var starts: [Int] = []
        var positions: [Int] = []
        let offset = cache?.length ?? 0
        for sequence in sequences {
            starts.append(positions.count)
            positions += (0..<sequence.count).map { $0 + offset }
        }
        let (cos, sin) = rotary.table(positions: positions)
        var x = [Float](repeating: 0, count: rows * d)
        x.withUnsafeMutableBufferPointer { x in
            var row = 0
            for sequence in sequences {
                for token in sequence {
                    precondition(token >= 0 && token < config.vocabSize, "token id outside the vocabulary")
                    embedding.widenRows(token..<(token + 1), into: x.baseAddress! + row * d)
                    row += 1
                }
            }
        }
        cache?.reserve(offset + rows)
        var scratch = Scratch(config: config, rows: rows)
        for (index, layer) in layers.enumerated() {
            forward(
                layer, index: index, x: &x, rows: rows, sequences: sequences.map(\.count), starts: starts, cos: cos, sin: sin,
                cache: cache, scratch: &scratch)
        }
        cache?.advance(by: rows)
        var out = [Float](repeating: 0, count: rows * d)
        let eps = config.rmsNormEps
        x.withUnsafeBufferPointer { x in
            out.withUnsafeMutableBufferPointer { out in
                finalNorm.withUnsafeBufferPointer { w in
                    let (xp, wp) = (
                        SendableRawPointer(UnsafeRawPointer(x.baseAddress!)), SendableRawPointer(UnsafeRawPointer(w.baseAddress!))
                    )
                    let op = SendableMutableRawPointer(UnsafeMutableRawPointer(out.baseAddress!))
                    rowParallel(rows) { range in
                        Kernels.rmsNorm(
                            xp.raw.assumingMemoryBound(to: Float.self) + range.lowerBound * d,
                            weight: wp.raw.assumingMemoryBound(to: Float.self),
                            rows: range.count, width: d, eps: eps, into: op.raw.assumingMemoryBound(to: Float.self) + range.lowerBound * d)
                    }
                }
            }
        }
        return out
    }

    /// Logits `[rows, vocab]` of the given hidden rows.
    public func logits(hidden: UnsafePointer<Float>, rows: Int, into output: UnsafeMutablePointer<Float>) {
        head.forward(
            MatrixView(hidden, rows: rows, columns: config.hiddenSize),
            into: MutableMatrixView(output, rows: rows, columns: config.vocabSize), threads: threads, workspace: workspace)
    }

    /// The final hidden rows that predict a next token, gathered `[targets, hidden]`, and the token
    /// each predicts: every position of every sequence that has a next token, from `scoredFrom`
    /// on in each sequence (the positions before are context only).
    public func targetRows(_ sequences: [[Int]], scoredFrom: Int = 0) -> (hidden: [Float], tokens: [Int]) {
        let hidden = hiddenStates(sequences)
        let d = config.hiddenSize
        var rows: [Int] = []
        var tokens: [Int] = []
        var row = 0
        for sequence in sequences {
            let last = max(0, sequence.count - 1)
            for i in min(scoredFrom, last)..<last {
                rows.append(row + i)
                tokens.append(sequence[i + 1])
            }
            row += sequence.count
        }
        var gathered = [Float](repeating: 0, count: rows.count * d)
        hidden.withUnsafeBufferPointer { hidden in
            gathered.withUnsafeMutableBufferPointer { g in
                for (i, row) in rows.enumerated() { (g.baseAddress! + i * d).update(from: hidden.baseAddress! + row * d, count: d) }
            }
        }
        return (gathered, tokens)
    }

    /// Next-token negative log-likelihood summed over every position of every sequence that has a
    /// next token, and the number of such positions. The head runs a block of rows at a time.
    /// Positions before `scoredFrom` in each sequence are context only.
    public func negativeLogLikelihood(_ sequences: [[Int]], scoredFrom: Int = 0) -> (sum: Double, tokens: Int) {
        let (hidden, targets) = targetRows(sequences, scoredFrom: scoredFrom)
        let block = 128
        let vocab = config.vocabSize, d = config.hiddenSize
        var logits = [Float](repeating: 0, count: block * vocab)
        var sum = 0.0
        var start = 0
        while start < targets.count {
            let count = min(block, targets.count - start)
            hidden.withUnsafeBufferPointer { g in
                logits.withUnsafeMutableBufferPointer {
                    self.logits(hidden: g.baseAddress! + start * d, rows: count, into: $0.baseAddress!)
                }
            }
            var partial = [Double](repeating: 0, count: count)
            logits.withUnsafeBufferPointer { l in
                partial.withUnsafeMutableBufferPointer { p in
                    let out = SendableMutableRawPointer(UnsafeMutableRawPointer(p.baseAddress!))
                    let input = SendableRawPointer(UnsafeRawPointer(l.baseAddress!))
                    let chosen = Array(targets[start..<(start + count)])
                    parallelForChunks(count: count, chunk: 16, threads: threads) { range in
                        let values = input.raw.assumingMemoryBound(to: Float.self)
                        let nll = out.raw.assumingMemoryBound(to: Double.self)
                        for i in range {
                            nll[i] = Kernels.negativeLogLikelihood(values + i * vocab, count: vocab, target: chosen[i])
                        }
                    }
                }
            }
            sum += partial.reduce(0, +)
            start += count
        }
        return (sum, targets.count)
    }

    /// Buffers a forward pass reuses from layer to layer.
    struct Scratch {
        var normed: [Float]
        var q: [Float]
        var k: [Float]
        var v: [Float]
        var attended: [Float]
        var projected: [Float]
        var gate: [Float]
        var up: [Float]

        init(config: ModelConfig, rows: Int) {
            normed = [Float](repeating: 0, count: rows * config.hiddenSize)
            q = [Float](repeating: 0, count: rows * config.qDim)
            k = [Float](repeating: 0, count: rows * config.kvDim)
            v = k
            attended = q
            projected = normed
            gate = [Float](repeating: 0, count: rows * config.intermediateSize)
            up = gate
        }
    }

    func rowParallel(_ rows: Int, _ body: @Sendable (Range<Int>) -> Void) {
        parallelForChunks(count: rows, chunk: 64, threads: threads, body)
    }

    private func forward(
        _ layer: DecoderLayer, index: Int, x: inout [Float], rows: Int, sequences: [Int], starts: [Int], cos: [Float], sin: [Float],
        cache: Cache?, scratch: inout Scratch
    ) {
        let c = config
        let d = c.hiddenSize
        let eps = c.rmsNormEps
        x.withUnsafeMutableBufferPointer { xb in
            let xp = SendableMutableRawPointer(UnsafeMutableRawPointer(xb.baseAddress!))
            func norm(_ weight: [Float], into out: inout [Float]) {
                out.withUnsafeMutableBufferPointer { ob in
                    let op = SendableMutableRawPointer(UnsafeMutableRawPointer(ob.baseAddress!))
                    weight.withUnsafeBufferPointer { wb in
                        let wp = SendableRawPointer(UnsafeRawPointer(wb.baseAddress!))
                        rowParallel(rows) { range in
                            Kernels.rmsNorm(
                                xp.raw.assumingMemoryBound(to: Float.self) + range.lowerBound * d,
                                weight: wp.raw.assumingMemoryBound(to: Float.self), rows: range.count, width: d, eps: eps,
                                into: op.raw.assumingMemoryBound(to: Float.self) + range.lowerBound * d)
                        }
                    }
                }
            }
            func apply(_ linear: Linear, _ input: [Float], width: Int, into out: inout [Float]) {
                input.withUnsafeBufferPointer { ib in
                    out.withUnsafeMutableBufferPointer { ob in
                        linear.forward(
                            MatrixView(ib.baseAddress!, rows: rows, columns: width),
                            into: MutableMatrixView(ob.baseAddress!, rows: rows, columns: linear.outFeatures), threads: threads,
                            workspace: workspace)
                    }
                }
            }
            func addResidual(_ delta: [Float]) {
                delta.withUnsafeBufferPointer { db in
                    let dp = SendableRawPointer(UnsafeRawPointer(db.baseAddress!))
                    rowParallel(rows) { range in
                        let x = xp.raw.assumingMemoryBound(to: Float.self), delta = dp.raw.assumingMemoryBound(to: Float.self)
                        for i in (range.lowerBound * d)..<(range.upperBound * d) { x[i] += delta[i] }
                    }
                }
            }

            // Attention.
            norm(layer.inputNorm, into: &scratch.normed)
            apply(layer.q, scratch.normed, width: d, into: &scratch.q)
            apply(layer.k, scratch.normed, width: d, into: &scratch.k)
            apply(layer.v, scratch.normed, width: d, into: &scratch.v)
            rotate(&scratch.q, heads: c.heads, rows: rows, cos: cos, sin: sin)
            rotate(&scratch.k, heads: c.kvHeads, rows: rows, cos: cos, sin: sin)
            attend(
                q: scratch.q, k: scratch.k, v: scratch.v, into: &scratch.attended, rows: rows, sequences: sequences, starts: starts,
                cache: cache, layer: index)
            apply(layer.o, scratch.attended, width: c.qDim, into: &scratch.projected)
            addResidual(scratch.projected)

            // MLP.
            norm(layer.postNorm, into: &scratch.normed)
            apply(layer.gate, scratch.normed, width: d, into: &scratch.gate)
            apply(layer.up, scratch.normed, width: d, into: &scratch.up)
            let width = c.intermediateSize
            scratch.gate.withUnsafeMutableBufferPointer { g in
                scratch.up.withUnsafeBufferPointer { u in
                    let gp = SendableMutableRawPointer(UnsafeMutableRawPointer(g.baseAddress!))
                    let up = SendableRawPointer(UnsafeRawPointer(u.baseAddress!))
                    rowParallel(rows) { range in
                        Kernels.siluGate(
                            gp.raw.assumingMemoryBound(to: Float.self) + range.lowerBound * width,
                            up: up.raw.assumingMemoryBound(to: Float.self) + range.lowerBound * width, count: range.count * width)
                    }
                }
            }
            apply(layer.down, scratch.gate, width: width, into: &scratch.projected)
            addResidual(scratch.projected)
        }
    }

    func rotate(_ values: inout [Float], heads: Int, rows: Int, cos: [Float], sin: [Float], inverse: Bool = false) {
        let headDim = config.headDim, half = headDim / 2
        values.withUnsafeMutableBufferPointer { vb in
            cos.withUnsafeBufferPointer { cb in
                sin.withUnsafeBufferPointer { sb in
                    let vp = SendableMutableRawPointer(UnsafeMutableRawPointer(vb.baseAddress!))
                    let cp = SendableRawPointer(UnsafeRawPointer(cb.baseAddress!)),
                        sp = SendableRawPointer(UnsafeRawPointer(sb.baseAddress!))
                    rowParallel(rows) { range in
                        Kernels.rope(
                            vp.raw.assumingMemoryBound(to: Float.self) + range.lowerBound * heads * headDim, rows: range.count,
                            heads: heads,
                            headDim: headDim, cos: cp.raw.assumingMemoryBound(to: Float.self) + range.lowerBound * half,
                            sin: sp.raw.assumingMemoryBound(to: Float.self) + range.lowerBound * half, inverse: inverse)
                    }
                }
            }
        }
    }

    /// Causal attention of each sequence over its own keys (and the cache's), head by head:
    /// scores `q·kᵀ/√d`, softmax over the visible keys, the values weighted by it.
    /// With `statistics` (`[rows, heads, 2]`), each row's softmax statistics are kept for the
    /// backward pass (see `Kernels.softmaxRows`).
    func attend(
        q: [Float], k: [Float], v: [Float], into out: inout [Float], rows: Int, sequences: [Int], starts: [Int], cache: Cache?,
        layer: Int, statistics: UnsafeMutablePointer<Float>? = nil
    ) {
        let stats = statistics.map { SendableMutableRawPointer(UnsafeMutableRawPointer($0)) }
        let c = config
        let headDim = c.headDim, kvDim = c.kvDim, qDim = c.qDim
        let group = c.heads / c.kvHeads
        let scale = 1 / Float(headDim).squareRoot()
        let window = c.slidingWindow
        let offset = cache?.length ?? 0
        let cached = cache != nil
        if let cache {
            // The new keys and values join the cached ones.
            cache.keys[layer].withUnsafeMutableBufferPointer { keys in
                k.withUnsafeBufferPointer { (keys.baseAddress! + offset * kvDim).update(from: $0.baseAddress!, count: rows * kvDim) }
            }
            cache.values[layer].withUnsafeMutableBufferPointer { values in
                v.withUnsafeBufferPointer { (values.baseAddress! + offset * kvDim).update(from: $0.baseAddress!, count: rows * kvDim) }
            }
        }
        let keys = cache?.keys[layer] ?? k
        let values = cache?.values[layer] ?? v
        let tasks = sequences.count * c.heads
        q.withUnsafeBufferPointer { qb in
            keys.withUnsafeBufferPointer { kb in
                values.withUnsafeBufferPointer { vb in
                    out.withUnsafeMutableBufferPointer { ob in
                        let qp = SendableRawPointer(UnsafeRawPointer(qb.baseAddress!))
                        let kp = SendableRawPointer(UnsafeRawPointer(kb.baseAddress!))
                        let vp = SendableRawPointer(UnsafeRawPointer(vb.baseAddress!))
                        let op = SendableMutableRawPointer(UnsafeMutableRawPointer(ob.baseAddress!))
                        // One scores buffer per chunk, a chunk per thread: each (sequence, head)
                        // is computed on its own, so the split does not change the result.
                        let longest = sequences.max() ?? 0
                        let capacity = max(1, longest * (offset + longest))
                        parallelForChunks(count: tasks, chunk: (tasks + threads - 1) / max(1, threads), threads: threads) { chunk in
                            let scores = UnsafeMutablePointer<Float>.allocate(capacity: capacity)
                            defer { scores.deallocate() }
                            for task in chunk {
                                let sequence = task / c.heads, head = task % c.heads
                                let length = sequences[sequence], start = starts[sequence]
                                // Without a cache, a sequence's keys are its own rows; with one,
                                // every cached position precedes the new rows.
                                let keyStart = cached ? 0 : start
                                let first = cached ? offset : 0
                                let kvHead = head / group
                                let qBase = qp.raw.assumingMemoryBound(to: Float.self) + start * qDim + head * headDim
                                let kBase = kp.raw.assumingMemoryBound(to: Float.self) + keyStart * kvDim + kvHead * headDim
                                let vBase = vp.raw.assumingMemoryBound(to: Float.self) + keyStart * kvDim + kvHead * headDim
                                // Causal: a block of query rows sees the keys up to its last row,
                                // so each block multiplies only those.
                                var blockStart = 0
                                while blockStart < length {
                                    let blockEnd = min(length, blockStart + LanguageModel.attentionBlock)
                                    let rows = blockEnd - blockStart
                                    let seen = first + blockEnd
                                    BLAS.multiply(
                                        MatrixView(qBase + blockStart * qDim, rows: rows, columns: headDim, rowStride: qDim),
                                        MatrixView(kBase, rows: seen, columns: headDim, rowStride: kvDim).transpose,
                                        into: MutableMatrixView(scores, rows: rows, columns: seen), scale: scale)
                                    let rowStatistics = stats.map {
                                        $0.raw.assumingMemoryBound(to: Float.self) + ((start + blockStart) * c.heads + head) * 2
                                    }
                                    Kernels.softmaxRows(
                                        scores, rows: rows, stride: seen, statistics: rowStatistics, statisticsStride: c.heads * 2
                                    ) { row in
                                        let position = first + blockStart + row
                                        let lowest = window.map { max(0, position - $0 + 1) } ?? 0
                                        return lowest..<(position + 1)
                                    }
                                    BLAS.multiply(
                                        MatrixView(scores, rows: rows, columns: seen),
                                        MatrixView(vBase, rows: seen, columns: headDim, rowStride: kvDim),
                                        into: MutableMatrixView(
                                            op.raw.assumingMemoryBound(to: Float.self) + (start + blockStart) * qDim + head * headDim,
                                            rows: rows,
                                            columns: headDim, rowStride: qDim))
                                    blockStart = blockEnd
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
