/// A tensor converted to another float type while it streams, a chunk at a time, so a cast never
/// holds more than one chunk of output in memory.
public struct CastTensor: TensorPayload {
    public let source: Tensor
    public let dtype: DType
    /// Threads for the conversion (element-wise: any count gives the same bytes).
    public let threads: Int

    /// nil when `FloatConversion` cannot convert the source's type to `dtype`.
    public init?(_ source: Tensor, to dtype: DType, threads: Int = ParallelismSettings.threadCount) {
        guard FloatConversion.canConvert(from: source.dtype, to: dtype) else { return nil }
        self.source = source
        self.dtype = dtype
        self.threads = threads
    }

    public var shape: Shape { source.shape }
    public var byteCount: Int { source.elementCount * dtype.bitSize / 8 }

    public func stream(chunkBytes: Int, into sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        if source.dtype == dtype { return try source.stream(chunkBytes: chunkBytes, into: sink) }
        let sourceWidth = source.dtype.bitSize / 8
        let targetWidth = dtype.bitSize / 8
        let elementsPerChunk = max(1, chunkBytes / max(sourceWidth, targetWidth))
        let output = OwnedBytes(count: min(elementsPerChunk, source.elementCount) * targetWidth)
        let sourceType = source.dtype
        let targetType = dtype
        let isScalar = source.shape.rank == 0
        let total = source.elementCount
        var done = 0
        try source.stream(chunkBytes: elementsPerChunk * sourceWidth) { piece in
            let count = piece.count / sourceWidth
            guard count > 0 else { return }
            let from = SendableRawPointer(piece.baseAddress!)
            let to = SendableMutableRawPointer(output.buffer.baseAddress!)
            let first = done
            done += count
            // Element-wise, so any split gives the same bytes.
            parallelForChunks(count: count, chunk: 1 << 16, threads: threads) { range in
                FloatConversion.convert(
                    from.raw + range.lowerBound * sourceWidth, sourceType,
                    into: to.raw + range.lowerBound * targetWidth, targetType,
                    count: range.count, firstIndex: first + range.lowerBound, total: total, isScalarTensor: isScalar)
            }
            try sink(UnsafeRawBufferPointer(start: output.buffer.baseAddress, count: count * targetWidth))
        }
    }
}
