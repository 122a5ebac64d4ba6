import TensorCore

/// The streaming loop both GGUF payloads share: output rows of `rowBytes` bytes made a chunk at a
/// time, the rows of a chunk split over `threads`, each chunk handed to `sink` when complete.
enum RowStream {
    /// `fill(rows, destination)` writes output rows `rows` (global indexes) at `destination`,
    /// where row `rows.lowerBound` begins; it runs concurrently with itself on disjoint rows and
    /// allocates its own scratch. `done(rows)` follows each chunk's `sink`.
    static func stream(
        rows: Int, rowBytes: Int, rowsPerChunk: Int, rowsPerTask: Int, threads: Int,
        fill: @Sendable (Range<Int>, UnsafeMutableRawPointer) -> Void,
        sink: (UnsafeRawBufferPointer) throws -> Void, done: (Range<Int>) -> Void = { _ in }
    ) throws {
        let chunkRows = Swift.max(1, Swift.min(rows, rowsPerChunk))
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Swift.max(1, chunkRows * rowBytes), alignment: 64)
        defer { buffer.deallocate() }
        let base = SendableMutableRawPointer(buffer.baseAddress!)
        var start = 0
        while start < rows {
            let count = Swift.min(chunkRows, rows - start)
            let first = start
            parallelForChunks(count: count, chunk: Swift.max(1, rowsPerTask), threads: threads) { part in
                fill((first + part.lowerBound)..<(first + part.upperBound), base.raw + part.lowerBound * rowBytes)
            }
            try sink(UnsafeRawBufferPointer(start: buffer.baseAddress, count: count * rowBytes))
            done(first..<(first + count))
            start += count
        }
    }
}
