import Synchronization
import TensorCore

/// A base tensor with its merge applied, computed a block of rows at a time while it streams, so
/// merging a tensor never holds more than one block of it in float32.
///
/// Per block: the rows are widened to float32, each term adds `scale·B·A` (`BLAS.addProduct`),
/// a DoRA term then rescales each output unit by `m / ‖W₀ + scale·B·A‖`, and the result is
/// rounded once to `dtype`. That is PEFT's merge (`W + scaling·B@A` in float32 on CPU) with a
/// single rounding at the end.
///
/// Every element of the result must be finite in `dtype`: a scale that overflows, or a base that
/// holds NaN or infinity, is an error rather than a tensor of infinities.
public struct MergedTensor: TensorPayload {
    /// The tensor the merge starts from: the adapter's replacement if it has one, else the base
    /// (a stored tensor, or a 4-bit one dequantized a block of rows at a time).
    public let start: any FloatRowSource
    public let merge: TensorMerge
    public let dtype: DType
    /// The base tensor's name, for errors.
    public let name: String
    /// Threads for the merge (tasks of a fixed size: any count gives the same bits).
    public let threads: Int

    /// Refuses a merge that cannot be written as `dtype`: float32 values are written as F64,
    /// F32, F16 or BF16; a tensor an adapter only replaces is copied or cast.
    public init(
        base: any FloatRowSource, merge: TensorMerge, dtype: DType, name: String = "", threads: Int = ParallelismSettings.threadCount
    ) throws(LoRAError) {
        start = merge.replacement?.tensor ?? base
        self.merge = merge
        self.dtype = dtype
        self.name = name
        self.threads = threads
        let convertible =
            merge.terms.isEmpty
            ? start is Tensor && FloatConversion.canConvert(from: start.dtype, to: dtype) : FloatConversion.encodable.contains(dtype)
        guard convertible else {
            throw .cannotMerge(
                path: merge.adapterPath, tensor: name,
                problem:
                    "the merged tensor cannot be written as \(dtype.rawValue) (from \(start.dtype.rawValue)); choose an output --dtype of f32, f16 or bf16"
            )
        }
    }

    public var shape: Shape { start.shape }
    public var byteCount: Int { start.shape.elementCount * dtype.bitSize / 8 }

    public func stream(chunkBytes: Int, into sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        let total = start.shape.elementCount
        let rows = start.shape.rank == 2 ? start.shape.dimensions[0] : 1
        let columns = rows == 0 ? 0 : total / rows
        guard total > 0 else {
            return try sink(UnsafeRawBufferPointer(start: nil, count: 0))
        }
        if merge.terms.isEmpty {
            // Only replaced: the adapter's tensor as it is, or cast.
            return try CastTensor(start as! Tensor, to: dtype, threads: threads)!.stream(chunkBytes: chunkBytes, into: sink)
        }
        if merge.isBias {
            var values = [Float](repeating: 0, count: total)
            values.withUnsafeMutableBufferPointer { start.widenRows(0..<1, columns: total, into: $0.baseAddress!) }
            for term in merge.terms {
                let bias = LoRAModule.floats(term.module.biasB!)
                for index in values.indices { values[index] += term.scale * bias[index] }
            }
            return try values.withUnsafeBufferPointer { try emit($0, sink: sink) }
        }
        let factors = merge.terms.map { $0.module.floatFactors() }
        let doraScales = merge.terms.indices.map { index in
            merge.terms[index].module.isDoRA ? doraFactor(index, factors: factors[index], rows: rows, columns: columns) : nil
        }
        let rowsPerBlock = Self.rowsPerBlock(rows: rows, columns: columns)
        let rowsPerTask = max(1, (1 << 16) / max(1, columns))
        let width = dtype.bitSize / 8
        let block = OwnedBytes(count: rowsPerBlock * columns * 4)
        let output = dtype == .f32 ? block : OwnedBytes(count: rowsPerBlock * columns * width)
        let values = SendableMutablePointer(block.buffer.baseAddress!.assumingMemoryBound(to: Float.self))
        let destination = SendableMutableRawPointer(output.buffer.baseAddress!)
        let nonFinite = NonFiniteFlag()
        var firstRow = 0
        while firstRow < rows {
            let count = min(rowsPerBlock, rows - firstRow)
            let blockStart = firstRow
            // Tasks of a fixed number of rows (set by the shape, not the thread count), each
            // widened, merged and rounded on its own: the result never depends on the threads.
            parallelForChunks(count: count, chunk: rowsPerTask, threads: threads) { [self] range in
                let taskRows = (blockStart + range.lowerBound)..<(blockStart + range.upperBound)
                let taskValues = values.pointer + range.lowerBound * columns
                start.widenRows(taskRows, columns: columns, into: taskValues)
                for (index, term) in merge.terms.enumerated() {
                    addDelta(term, factors: factors[index], rows: taskRows, columns: columns, into: taskValues)
                    if let scales = doraScales[index] {
                        rescale(taskValues, rows: taskRows, columns: columns, by: scales, orientation: term.module.orientation)
                    }
                }
                if dtype != .f32 {
                    FloatConversion.encodeFromFloat32(
                        taskValues, count: range.count * columns, into: destination.raw, dtype, at: range.lowerBound * columns)
                }
                if !FloatConversion.allFinite(destination.raw, dtype, from: range.lowerBound * columns, count: range.count * columns) {
                    nonFinite.set()
                }
            }
            if nonFinite.isSet { throw nonFiniteError() }
            start.releaseRows(firstRow..<(firstRow + count), columns: columns)
            try sink(UnsafeRawBufferPointer(start: output.buffer.baseAddress, count: count * columns * width))
            firstRow += count
        }
    }

    private func nonFiniteError() -> LoRAError {
        .cannotMerge(
            path: merge.adapterPath, tensor: name,
            problem:
                "the merge gives values that are not finite in \(dtype.rawValue) (a scale or weight too large, or NaN/infinity in the base)"
        )
    }

    /// Rows per block: about 4 MB of float32, fixed by the tensor's shape alone. OpenBLAS may
    /// take another path for another block height (a single row goes to gemv), so the blocks
    /// never follow the caller's chunk size: the same tensor always merges to the same bits.
    static func rowsPerBlock(rows: Int, columns: Int) -> Int {
        max(1, min(rows, (4 << 20) / max(1, columns * 4)))
    }

    /// `values[rows] += scale · Δ[rows]`, Δ = `B·A` laid out as the base tensor is.
    private func addDelta(
        _ term: MergeTerm, factors: (a: [Float], b: [Float]), rows: Range<Int>, columns: Int, into values: UnsafeMutablePointer<Float>
    ) {
        let module = term.module
        let r = module.rank
        factors.a.withUnsafeBufferPointer { a in
            factors.b.withUnsafeBufferPointer { b in
                let a = a.baseAddress!, b = b.baseAddress!
                let delta: (MatrixView, MatrixView)
                switch (module.orientation, module.factorsTransposed) {
                case (.outputsByInputs, false):
                    // Δ[o, i] = Σ_k B[o, k] A[k, i]: rows of B [out, r] times A [r, in].
                    delta = (
                        MatrixView(b, rows: module.outFeatures, columns: r).rows(rows),
                        MatrixView(a, rows: r, columns: module.inFeatures)
                    )
                case (.outputsByInputs, true):
                    // mlx-lm: lora_b [r, out] = Bᵀ, lora_a [in, r] = Aᵀ.
                    delta = (
                        MatrixView(b, rows: r, columns: module.outFeatures).transpose.rows(rows),
                        MatrixView(a, rows: module.inFeatures, columns: r).transpose
                    )
                case (.inputsByOutputs, false):
                    // Δᵀ[i, o] = Σ_k A[k, i] B[o, k].
                    delta = (
                        MatrixView(a, rows: r, columns: module.inFeatures).transpose.rows(rows),
                        MatrixView(b, rows: module.outFeatures, columns: r).transpose
                    )
                case (.inputsByOutputs, true):
                    delta = (
                        MatrixView(a, rows: module.inFeatures, columns: r).rows(rows),
                        MatrixView(b, rows: r, columns: module.outFeatures)
                    )
                }
                BLAS.addProduct(delta.0, delta.1, scaledBy: term.scale, to: MutableMatrixView(values, rows: rows.count, columns: columns))
            }
        }
    }

    /// DoRA's `m / ‖W₀ + scale·Δ‖` per output unit (rows of `[out, in]`, columns of `[in, out]`),
    /// W₀ being the weight before any adapter, as PEFT takes the norm of the unmerged weight.
    private func doraFactor(_ index: Int, factors: (a: [Float], b: [Float]), rows: Int, columns: Int) -> [Float] {
        let term = merge.terms[index]
        let orientation = term.module.orientation
        var squares = [Double](repeating: 0, count: orientation == .outputsByInputs ? rows : columns)
        let rowsPerBlock = Self.rowsPerBlock(rows: rows, columns: columns)
        var block = [Float](repeating: 0, count: rowsPerBlock * columns)
        var firstRow = 0
        while firstRow < rows {
            let count = min(rowsPerBlock, rows - firstRow)
            block.withUnsafeMutableBufferPointer { buffer in
                let values = buffer.baseAddress!
                start.widenRows(firstRow..<(firstRow + count), columns: columns, into: values)
                addDelta(term, factors: factors, rows: firstRow..<(firstRow + count), columns: columns, into: values)
                for row in 0..<count {
                    for column in 0..<columns {
                        let value = Double(values[row * columns + column])
                        squares[orientation == .outputsByInputs ? firstRow + row : column] += value * value
                    }
                }
            }
            firstRow += count
        }
        let magnitude = LoRAModule.floats(term.module.magnitude!)
        return zip(magnitude, squares).map { m, sum in m / Float(sum.squareRoot()) }
    }

    private func rescale(
        _ values: UnsafeMutablePointer<Float>, rows: Range<Int>, columns: Int, by scales: [Float], orientation: LoRAModule.Orientation
    ) {
        for row in 0..<rows.count {
            for column in 0..<columns {
                values[row * columns + column] *= orientation == .outputsByInputs ? scales[rows.lowerBound + row] : scales[column]
            }
        }
    }

    /// Rounds float32 values once to `dtype` and hands them on.
    private func emit(_ values: UnsafeBufferPointer<Float>, sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        let width = dtype.bitSize / 8
        if dtype == .f32 {
            guard values.allSatisfy(\.isFinite) else { throw nonFiniteError() }
            return try sink(UnsafeRawBufferPointer(values))
        }
        let output = OwnedBytes(count: values.count * width)
        let source = SendablePointer(values.baseAddress!)
        let destination = SendableMutableRawPointer(output.buffer.baseAddress!)
        let type = dtype
        parallelForChunks(count: values.count, chunk: 1 << 16, threads: threads) { range in
            FloatConversion.encodeFromFloat32(
                source.pointer + range.lowerBound, count: range.count, into: destination.raw, type, at: range.lowerBound)
        }
        guard FloatConversion.allFinite(output.buffer.baseAddress!, dtype, from: 0, count: values.count) else { throw nonFiniteError() }
        try sink(UnsafeRawBufferPointer(start: output.buffer.baseAddress, count: values.count * width))
    }
}

/// Set by any task that meets a non-finite value.
final class NonFiniteFlag: @unchecked Sendable {
    private let flag = Mutex(false)
    func set() { flag.withLock { $0 = true } }
    var isSet: Bool { flag.withLock { $0 } }
}

/// Typed pointers that may cross into `parallelForChunks`; each chunk touches its own elements.
struct SendablePointer: @unchecked Sendable {
    let pointer: UnsafePointer<Float>
    init(_ pointer: UnsafePointer<Float>) { self.pointer = pointer }
}

struct SendableMutablePointer: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<Float>
    init(_ pointer: UnsafeMutablePointer<Float>) { self.pointer = pointer }
}
