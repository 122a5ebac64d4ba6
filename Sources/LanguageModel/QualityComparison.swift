import Foundation

/// How far one model's next-token distributions are from another's on the same tokens, as
/// llama.cpp's `llama-perplexity --kl-divergence` reports it: both perplexities, the KL divergence
/// `Σ p_source·log(p_source / p_artifact)` at every position (mean, median, 99th percentile, max),
/// the share of positions where both pick the same top token, and the RMS change in the
/// probability of the correct token. Each position is computed in double from float32 logits.
public struct QualityComparison: Sendable {
    public private(set) var divergences: [Double] = []
    var sourceNLL = 0.0
    var artifactNLL = 0.0
    var sameTop = 0
    var squaredDeltaP = 0.0

    public init() {}

    public var tokens: Int { divergences.count }
    public var sourcePerplexity: Double { Foundation.exp(sourceNLL / Double(max(1, tokens))) }
    public var artifactPerplexity: Double { Foundation.exp(artifactNLL / Double(max(1, tokens))) }
    public var perplexityRatio: Double { artifactPerplexity / sourcePerplexity }
    public var meanDivergence: Double { divergences.reduce(0, +) / Double(max(1, tokens)) }
    public var sameTopShare: Double { Double(sameTop) / Double(max(1, tokens)) }
    public var rmsDeltaP: Double { (squaredDeltaP / Double(max(1, tokens))).squareRoot() }

    /// The `q`-th percentile (0…100) of the divergences, numpy's linear interpolation.
    public func divergencePercentile(_ q: Double) -> Double {
        guard !divergences.isEmpty else { return 0 }
        let sorted = divergences.sorted()
        let rank = q / 100 * Double(sorted.count - 1)
        let low = Int(rank.rounded(.down)), high = min(sorted.count - 1, low + 1)
        return sorted[low] + (sorted[high] - sorted[low]) * (rank - Double(low))
    }

    /// Adds the positions of one batch: the source's and the artifact's logits for the same rows
    /// (`rows × vocab` each) and the correct next token of each row.
    public mutating func add(source: UnsafePointer<Float>, artifact: UnsafePointer<Float>, rows: Int, vocab: Int, targets: ArraySlice<Int>)
    {
        precondition(targets.count == rows)
        var logP = [Double](repeating: 0, count: vocab)
        var logQ = [Double](repeating: 0, count: vocab)
        for (row, target) in targets.enumerated() {
            let s = source + row * vocab, a = artifact + row * vocab
            Self.logSoftmax(s, vocab, into: &logP)
            Self.logSoftmax(a, vocab, into: &logQ)
            var divergence = 0.0
            var bestS = 0, bestA = 0
            for v in 0..<vocab {
                let p = Foundation.exp(logP[v])
                divergence += p * (logP[v] - logQ[v])
                if s[v] > s[bestS] { bestS = v }
                if a[v] > a[bestA] { bestA = v }
            }
            divergences.append(max(0, divergence))
            sourceNLL -= logP[target]
            artifactNLL -= logQ[target]
            if bestS == bestA { sameTop += 1 }
            let delta = Foundation.exp(logQ[target]) - Foundation.exp(logP[target])
            squaredDeltaP += delta * delta
        }
    }

    static func logSoftmax(_ logits: UnsafePointer<Float>, _ count: Int, into out: inout [Double]) {
        var largest = -Double.infinity
        for i in 0..<count { largest = max(largest, Double(logits[i])) }
        var sum = 0.0
        for i in 0..<count { sum += Foundation.exp(Double(logits[i]) - largest) }
        let shift = largest + Foundation.log(sum)
        for i in 0..<count { out[i] = Double(logits[i]) - shift }
    }
}

extension LanguageModel {
    /// Runs `self` (the source) and `artifact` on the same sequences and adds every scored position
    /// to `comparison`. Both must share the vocabulary.
    public func compare(
        with artifact: LanguageModel, _ sequences: [[Int]], scoredFrom: Int = 0, into comparison: inout QualityComparison
    ) {
        precondition(config.vocabSize == artifact.config.vocabSize)
        let (sourceHidden, targets) = targetRows(sequences, scoredFrom: scoredFrom)
        let (artifactHidden, _) = artifact.targetRows(sequences, scoredFrom: scoredFrom)
        let vocab = config.vocabSize
        let block = 128
        var s = [Float](repeating: 0, count: block * vocab)
        var a = s
        var start = 0
        while start < targets.count {
            let count = min(block, targets.count - start)
            sourceHidden.withUnsafeBufferPointer { h in
                s.withUnsafeMutableBufferPointer {
                    logits(hidden: h.baseAddress! + start * config.hiddenSize, rows: count, into: $0.baseAddress!)
                }
            }
            artifactHidden.withUnsafeBufferPointer { h in
                a.withUnsafeMutableBufferPointer {
                    artifact.logits(hidden: h.baseAddress! + start * artifact.config.hiddenSize, rows: count, into: $0.baseAddress!)
                }
            }
            s.withUnsafeBufferPointer { sp in
                a.withUnsafeBufferPointer { ap in
                    comparison.add(
                        source: sp.baseAddress!, artifact: ap.baseAddress!, rows: count, vocab: vocab,
                        targets: targets[start..<(start + count)])
                }
            }
            start += count
        }
    }
}
