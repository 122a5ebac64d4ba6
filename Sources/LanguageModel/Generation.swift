import Foundation

/// How the next token is chosen from the logits: the largest (greedy, `temperature` 0, as
/// transformers' `do_sample=False`), or drawn from the softmax at `temperature` restricted to the
/// smallest set of most likely tokens whose probability reaches `topP`.
public struct Sampler: Sendable {
    public var temperature: Float
    public var topP: Float
    private var random: SplitMix64

    public init(temperature: Float = 0, topP: Float = 1, seed: UInt64 = 0) {
        self.temperature = temperature
        self.topP = topP
        random = SplitMix64(seed: seed)
    }

    /// A fixed sequence for a seed on every machine.
    private mutating func nextUniform() -> Double {
        Double(random.next() >> 11) / Double(1 << 53)
    }

    public mutating func choose(_ logits: UnsafeBufferPointer<Float>) -> Int {
        guard temperature > 0 else {
            // The first of equal largest values, as torch.argmax.
            var best = 0
            for i in 1..<logits.count where logits[i] > logits[best] { best = i }
            return best
        }
        let largest = logits.max() ?? 0
        var weights = logits.map { Foundation.exp(Double(($0 - largest) / temperature)) }
        let total = weights.reduce(0, +)
        var order = Array(weights.indices)
        if topP < 1 {
            order.sort { weights[$0] > weights[$1] }
            var kept = 0.0
            var cut = order.count
            for (rank, index) in order.enumerated() {
                kept += weights[index] / total
                if kept >= Double(topP) {
                    cut = rank + 1
                    break
                }
            }
            let keep = Set(order[0..<cut])
            for i in weights.indices where !keep.contains(i) { weights[i] = 0 }
            order = Array(order[0..<cut])
        }
        let sum = order.reduce(0.0) { $0 + weights[$1] }
        var target = nextUniform() * sum
        for index in order {
            target -= weights[index]
            if target < 0 { return index }
        }
        return order.last ?? 0
    }
}

extension LanguageModel {
    /// Continues `prompt` one token at a time with a key/value cache, calling `emit` with each new
    /// token; stops after `maxTokens`, at a token of `stop`, or when `emit` returns false. Returns
    /// the new tokens.
    @discardableResult
    public func generate(
        prompt: [Int], maxTokens: Int, stop: Set<Int>, sampler: Sampler, emit: (Int) -> Bool = { _ in true }
    ) -> [Int] {
        guard !prompt.isEmpty, maxTokens > 0 else { return [] }
        var sampler = sampler
        let cache = Cache(model: self)
        var logits = [Float](repeating: 0, count: config.vocabSize)
        var produced: [Int] = []
        var input = prompt
        while produced.count < maxTokens {
            let hidden = hiddenStates([input], cache: cache)
            let last = hidden.count / config.hiddenSize - 1
            hidden.withUnsafeBufferPointer { h in
                logits.withUnsafeMutableBufferPointer {
                    self.logits(hidden: h.baseAddress! + last * config.hiddenSize, rows: 1, into: $0.baseAddress!)
                }
            }
            let token = logits.withUnsafeBufferPointer { sampler.choose($0) }
            produced.append(token)
            if !emit(token) || stop.contains(token) { break }
            input = [token]
        }
        return produced
    }

    /// llama.cpp's `llama-perplexity` over `tokens` (the whole text, tokenized as it does, with
    /// the BOS its tokenizer adds): chunks of `context` tokens (the remainder dropped), the first
    /// token of each replaced by `bos` when there is one, each chunk run on its own, and only the
    /// second half scored: the logits at positions `context/2 … context-2` predicting the token
    /// after each. Returns the summed negative log-likelihood, the scored tokens and the chunks.
    public func chunkedNegativeLogLikelihood(
        _ tokens: [Int], context: Int, bos: Int?, batch: Int = 1, progress: (Int) -> Void = { _ in }
    ) -> (sum: Double, scored: Int, chunks: Int) {
        precondition(context >= 2)
        let chunks = Self.perplexityChunks(tokens, context: context, bos: bos)
        var sum = 0.0
        var scored = 0
        var chunk = 0
        while chunk < chunks.count {
            let group = Array(chunks[chunk..<min(chunks.count, chunk + max(1, batch))])
            let result = negativeLogLikelihood(group, scoredFrom: context / 2)
            sum += result.sum
            scored += result.tokens
            chunk += group.count
            progress(group.count * context)
        }
        return (sum, scored, chunks.count)
    }

    /// llama-perplexity's chunks of a token stream: whole chunks of `context` tokens (the rest
    /// dropped), each one's first token replaced by `bos` when given; the second half of each is
    /// scored.
    public static func perplexityChunks(_ tokens: [Int], context: Int, bos: Int?) -> [[Int]] {
        (0..<(tokens.count / context)).map { index in
            var piece = Array(tokens[(index * context)..<((index + 1) * context)])
            if let bos { piece[0] = bos }
            return piece
        }
    }
}
