import LoRAMerge
import Quantization
import TensorCore

/// A weight matrix `[rows, columns]` as products read it: float32 in memory (mapped when the file
/// holds float32, widened once otherwise), or 4-bit, widened tile by tile into a reused buffer
/// just before its product (one matrix of the model at a time).
public final class WeightMatrix: @unchecked Sendable {
    public let rows: Int
    public let columns: Int
    private enum Storage {
        case dense(UnsafePointer<Float>, owner: AnyObject)
        case quantized(QuantizedRows)
    }
    private let storage: Storage

    init(_ stored: StoredTensor, name: String, rows: Int, columns: Int, path: String) throws(ModelError) {
        guard stored.shape.dimensions == [rows, columns] else {
            throw ModelError(path: path, "tensor '\(name)' has shape \(stored.shape.dimensions), the config says [\(rows), \(columns)]")
        }
        self.rows = rows
        self.columns = columns
        switch stored {
        case .quantized(let q):
            storage = .quantized(QuantizedRows(q))
        case .plain(let tensor):
            guard tensor.dtype.isFloatingPoint, [DType.f32, .f16, .bf16, .f64].contains(tensor.dtype) else {
                throw ModelError(path: path, "tensor '\(name)' is \(tensor.dtype.rawValue); weights must be float")
            }
            if tensor.dtype == .f32 {
                let pointer = tensor.withBytes { UnsafeRawPointer($0.baseAddress!) }
                storage = .dense(pointer.assumingMemoryBound(to: Float.self), owner: TensorOwner(tensor))
            } else {
                let owned = OwnedBytes(count: rows * columns * 4)
                let out = owned.buffer.baseAddress!.assumingMemoryBound(to: Float.self)
                tensor.withBytes {
                    FloatConversion.decodeToFloat32($0.baseAddress!, tensor.dtype, from: 0, count: rows * columns, into: out)
                }
                storage = .dense(UnsafePointer(out), owner: owned)
            }
        }
    }

    /// Float32 rows `[rows, columns]` already in memory.
    init(floats: [Float], rows: Int, columns: Int) {
        precondition(floats.count == rows * columns)
        let owned = OwnedBytes(count: max(1, rows * columns) * 4)
        let out = owned.buffer.baseAddress!.assumingMemoryBound(to: Float.self)
        floats.withUnsafeBufferPointer { out.update(from: $0.baseAddress!, count: floats.count) }
        self.rows = rows
        self.columns = columns
        storage = .dense(UnsafePointer(out), owner: owned)
    }

    /// The matrix in float32 when it is stored so; nil for a 4-bit one.
    public var dense: UnsafePointer<Float>? {
        if case .dense(let pointer, _) = storage { pointer } else { nil }
    }

    public var isQuantized: Bool { dense == nil }

    /// Rows `range` as float32 into `destination` (`range.count × columns`), on this thread.
    public func widenRows(_ range: Range<Int>, into destination: UnsafeMutablePointer<Float>) {
        switch storage {
        case .dense(let pointer, _): destination.update(from: pointer + range.lowerBound * columns, count: range.count * columns)
        case .quantized(let q): q.widenRows(range, columns: columns, into: destination)
        }
    }

    /// `output = input·selfᵀ` (`[n, columns]·[columns, rows]`). A 4-bit matrix is first widened
    /// into `workspace` (the threads each taking a share of its tiles of rows), then multiplied as
    /// a float one: only one matrix of the model is ever widened at a time.
    public func product(_ input: MatrixView, into output: MutableMatrixView, threads: Int, workspace: Workspace) {
        precondition(input.columns == columns && output.columns == rows && output.rows == input.rows)
        let weight = floats(threads: threads, workspace: workspace)
        BLAS.linear(input: input, weight: weight, into: output, threads: threads)
    }

    /// The gradient a product passes back to its input: `inputGradient (+)= outputGradient·self`
    /// (`[n, rows]·[rows, columns]`), a 4-bit matrix widened as for `product`.
    public func inputGradient(
        _ outputGradient: MatrixView, into inputGradient: MutableMatrixView, accumulate: Bool, threads: Int, workspace: Workspace
    ) {
        precondition(outputGradient.columns == rows && inputGradient.columns == columns && inputGradient.rows == outputGradient.rows)
        let weight = floats(threads: threads, workspace: workspace)
        BLAS.linearInputGradient(
            outputGradient: outputGradient, weight: weight, into: inputGradient, accumulate: accumulate, threads: threads)
    }

    /// The matrix as float32: itself when it is stored so, else widened into `workspace`.
    private func floats(threads: Int, workspace: Workspace) -> MatrixView {
        if let dense { return MatrixView(dense, rows: rows, columns: columns) }
        let buffer = workspace.floats(rows * columns)
        let target = SendableMutableRawPointer(UnsafeMutableRawPointer(buffer))
        let tile = WeightMatrix.tileRows
        let tiles = (rows + tile - 1) / tile
        parallelForChunks(count: tiles, chunk: (tiles + threads - 1) / max(1, threads), threads: threads) { chunk in
            for index in chunk {
                let range = (index * tile)..<min(self.rows, (index + 1) * tile)
                self.widenRows(range, into: target.raw.assumingMemoryBound(to: Float.self) + range.lowerBound * self.columns)
            }
        }
        return MatrixView(buffer, rows: rows, columns: columns)
    }

    /// Rows of a 4-bit matrix a task widens at a time.
    static let tileRows = 128
}

/// Memory a forward pass reuses for the matrix it is widening: grown to the largest 4-bit
/// matrix, never freed while the model lives. One forward pass uses it at a time.
public final class Workspace: @unchecked Sendable {
    private var buffer: UnsafeMutablePointer<Float>?
    private var capacity = 0

    public init() {}

    /// At least `count` floats (their contents undefined).
    func floats(_ count: Int) -> UnsafeMutablePointer<Float> {
        if count > capacity {
            buffer?.deallocate()
            buffer = UnsafeMutablePointer<Float>.allocate(capacity: max(count, 1))
            capacity = max(count, 1)
        }
        return buffer!
    }

    deinit { buffer?.deallocate() }
}

/// Keeps a mapped tensor (and so its file) alive while a matrix points into it.
private final class TensorOwner {
    let tensor: Tensor
    init(_ tensor: Tensor) { self.tensor = tensor }
}

/// A low-rank term of a linear layer, un-merged: `y += scale·(x·Aᵀ)·Bᵀ`.
struct LowRankTerm: @unchecked Sendable {
    /// `[rank, in]` and `[out, rank]`, float32.
    let a: [Float]
    let b: [Float]
    let rank: Int
    let scale: Float
}

/// A linear layer `y = x·Wᵀ + b`, with LoRA terms applied un-merged (DoRA: the rows rescaled by
/// `magnitude / ‖W + s·B·A‖`, as PEFT computes them).
public struct Linear: @unchecked Sendable {
    public let weight: WeightMatrix
    let bias: [Float]?
    let terms: [LowRankTerm]
    /// DoRA's `magnitude / ‖W + Σ s·B·A‖` per output row.
    let doraScale: [Float]?

    var outFeatures: Int { weight.rows }
    var inFeatures: Int { weight.columns }

    init(weight: WeightMatrix, bias: [Float]?, terms: [LowRankTerm] = [], doraMagnitude: [Float]? = nil, threads: Int) {
        self.weight = weight
        self.bias = bias
        self.terms = terms
        if let doraMagnitude {
            doraScale = Linear.doraScale(weight: weight, terms: terms, magnitude: doraMagnitude, threads: threads)
        } else {
            doraScale = nil
        }
    }

    /// `magnitude / ‖W + Σ s·B·A‖₂` for each output row, the norms in float32 as PEFT computes them.
    private static func doraScale(weight: WeightMatrix, terms: [LowRankTerm], magnitude: [Float], threads: Int) -> [Float] {
        zip(magnitude, rowNorms(weight: weight, terms: terms, threads: threads)).map { $0 / $1 }
    }

    /// `‖W + Σ s·B·A‖₂` of each row, in float32 as PEFT computes it.
    static func rowNorms(weight: WeightMatrix, terms: [LowRankTerm], threads: Int) -> [Float] {
        var scale = [Float](repeating: 0, count: weight.rows)
        let tile = WeightMatrix.tileRows
        let tiles = (weight.rows + tile - 1) / tile
        scale.withUnsafeMutableBufferPointer { out in
            let result = SendableMutableRawPointer(UnsafeMutableRawPointer(out.baseAddress!))
            parallelForChunks(count: tiles, chunk: 1, threads: threads) { chunk in
                let buffer = UnsafeMutablePointer<Float>.allocate(capacity: tile * weight.columns)
                defer { buffer.deallocate() }
                let norms = result.raw.assumingMemoryBound(to: Float.self)
                for index in chunk {
                    let range = (index * tile)..<min(weight.rows, (index + 1) * tile)
                    weight.widenRows(range, into: buffer)
                    let rows = MutableMatrixView(buffer, rows: range.count, columns: weight.columns)
                    for term in terms {
                        term.b.withUnsafeBufferPointer { b in
                            term.a.withUnsafeBufferPointer { a in
                                BLAS.addProduct(
                                    MatrixView(b.baseAddress! + range.lowerBound * term.rank, rows: range.count, columns: term.rank),
                                    MatrixView(a.baseAddress!, rows: term.rank, columns: weight.columns), scaledBy: term.scale, to: rows)
                            }
                        }
                    }
                    for row in 0..<range.count {
                        var sum: Float = 0
                        let values = buffer + row * weight.columns
                        for column in 0..<weight.columns { sum += values[column] * values[column] }
                        norms[range.lowerBound + row] = sum.squareRoot()
                    }
                }
            }
        }
        return scale
    }

    /// `output = input·Wᵀ (+ bias) (+ LoRA)`, input `[n, in]`, output `[n, out]`.
    func forward(_ input: MatrixView, into output: MutableMatrixView, threads: Int, workspace: Workspace) {
        weight.product(input, into: output, threads: threads, workspace: workspace)
        let n = input.rows, out = outFeatures
        if !terms.isEmpty {
            // DoRA scales W·x and the low-rank part alike: (m/‖·‖)·(W·x + s·B·A·x).
            for term in terms {
                var low = [Float](repeating: 0, count: n * term.rank)
                low.withUnsafeMutableBufferPointer { low in
                    term.a.withUnsafeBufferPointer { a in
                        BLAS.linear(
                            input: input, weight: MatrixView(a.baseAddress!, rows: term.rank, columns: inFeatures),
                            into: MutableMatrixView(low.baseAddress!, rows: n, columns: term.rank), threads: threads)
                    }
                    term.b.withUnsafeBufferPointer { b in
                        BLAS.multiply(
                            MatrixView(low.baseAddress!, rows: n, columns: term.rank),
                            MatrixView(b.baseAddress!, rows: out, columns: term.rank).transpose, into: output, scale: term.scale,
                            accumulate: true, threads: threads)
                    }
                }
            }
        }
        if let doraScale {
            for row in 0..<n {
                let values = output.base + row * output.rowStride
                for column in 0..<out { values[column] *= doraScale[column] }
            }
        }
        if let bias {
            for row in 0..<n {
                let values = output.base + row * output.rowStride
                for column in 0..<out { values[column] += bias[column] }
            }
        }
    }
}
