import Testing

@testable import TensorCore

struct ParallelForTests {
    @Test func parallelChunksCoverEveryIndexOnce() {
        final class Counts: @unchecked Sendable { var hits = [Int](repeating: 0, count: 1000) }
        let counts = Counts()
        let pointer = SendableMutableRawPointer(UnsafeMutableRawPointer(mutating: counts.hits.withUnsafeBufferPointer { $0.baseAddress! }))
        parallelForChunks(count: 1000, chunk: 37, threads: 3) { range in
            let p = pointer.raw.assumingMemoryBound(to: Int.self)
            for i in range { p[i] += 1 }
        }
        #expect(counts.hits.allSatisfy { $0 == 1 })
    }
}
