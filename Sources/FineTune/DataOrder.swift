import LanguageModel

/// Which sequences each optimizer step trains on, as transformers' Trainer walks a dataset: each
/// epoch visits every sequence once, in file order or shuffled from the seed (a new order each
/// epoch); a micro-batch is `batchSize` consecutive sequences of that order (the epoch's last
/// may be smaller), a step is `gradAccum` consecutive micro-batches (the epoch's last may have
/// fewer). The order of any step follows from its number alone, so a resumed run needs no state
/// beyond the step it resumes at.
public struct DataOrder: Sendable {
    public let count: Int
    public let batchSize: Int
    public let gradAccum: Int
    public let shuffle: Bool
    public let seed: UInt64

    public init(count: Int, batchSize: Int, gradAccum: Int, shuffle: Bool, seed: UInt64) {
        precondition(count > 0 && batchSize > 0 && gradAccum > 0)
        self.count = count
        self.batchSize = batchSize
        self.gradAccum = gradAccum
        self.shuffle = shuffle
        self.seed = seed
    }

    public var microBatchesPerEpoch: Int { (count + batchSize - 1) / batchSize }
    public var stepsPerEpoch: Int { (microBatchesPerEpoch + gradAccum - 1) / gradAccum }

    /// The sequences of `epoch` (from 0) in the order it visits them.
    public func order(epoch: Int) -> [Int] {
        var order = Array(0..<count)
        guard shuffle else { return order }
        var random = SplitMix64(seed: SplitMix64.mix(seed ^ SplitMix64.mix(UInt64(epoch) &+ 0x5348_5546_464C_4531)))
        for i in stride(from: count - 1, to: 0, by: -1) {
            order.swapAt(i, random.next(below: i + 1))
        }
        return order
    }

    /// The micro-batches of optimizer step `step` (from 0): sequence indices.
    public func microBatches(step: Int) -> [[Int]] {
        let epoch = step / stepsPerEpoch, inEpoch = step % stepsPerEpoch
        let order = order(epoch: epoch)
        let first = inEpoch * gradAccum
        return (first..<min(microBatchesPerEpoch, first + gradAccum)).map { micro in
            Array(order[(micro * batchSize)..<min(count, (micro + 1) * batchSize)])
        }
    }
}
