import Quantization
import TensorCore

/// How much of an adapter's update survived a merge into a 4-bit tensor: the update that landed
/// (the merged tensor's 4-bit values minus the base's, the base quantized with the same settings,
/// both dequantized) against the intended one (the merge in float32 minus the base), as a cosine
/// and a ratio of norms, and the share of 4-bit codes the merge changed. Requantization rounds a
/// small update away: most codes come back unchanged and what survives barely points the
/// intended way.
public struct MergeFidelity: Sendable {
    public let name: String
    public let updateCosine: Double
    public let relativeNorm: Double
    public let codesChanged: Double

    /// `merged`: the merge in float32 (streamed again here); `base`: the base's float rows;
    /// `baseCodes`: the base as the output would store it unmerged; `output`: what was written.
    public static func measure(
        name: String, merged: MergedTensor, base: any FloatRowSource, baseCodes: QuantizedTensor, output: QuantizedTensor
    ) throws -> MergeFidelity {
        let total = output.shape.elementCount
        let rows = output.shape.rank == 2 ? output.shape.dimensions[0] : 1
        let columns = rows == 0 ? 0 : total / rows
        let before = Dequantizer(baseCodes), after = Dequantizer(output)
        var dot = 0.0, intendedSquares = 0.0, landedSquares = 0.0
        var pending: [Float] = []
        var row = 0
        var baseRows: [Float] = [], q0: [Float] = [], q1: [Float] = []
        func process(_ count: Int) {
            let elements = count * columns
            let first = row * columns
            if baseRows.count < elements {
                baseRows = [Float](repeating: 0, count: elements)
                q0 = baseRows
                q1 = baseRows
            }
            baseRows.withUnsafeMutableBufferPointer { base.widenRows(row..<(row + count), columns: columns, into: $0.baseAddress!) }
            baseCodes.packed.withBytes { packed in
                q0.withUnsafeMutableBytes { before.decode(first..<(first + elements), packed: packed.baseAddress!, into: $0.baseAddress!, dtype: .f32) }
            }
            output.packed.withBytes { packed in
                q1.withUnsafeMutableBytes { after.decode(first..<(first + elements), packed: packed.baseAddress!, into: $0.baseAddress!, dtype: .f32) }
            }
            for i in 0..<elements {
                let intended = Double(pending[i]) - Double(baseRows[i])
                let landed = Double(q1[i]) - Double(q0[i])
                dot += intended * landed
                intendedSquares += intended * intended
                landedSquares += landed * landed
            }
            pending.removeFirst(elements)
            row += count
        }
        let block = max(1, (1 << 18) / max(1, columns))
        try merged.stream(chunkBytes: 1 << 22) { bytes in
            let count = bytes.count / 4
            pending.append(contentsOf: UnsafeBufferPointer(start: bytes.baseAddress?.assumingMemoryBound(to: Float.self), count: count))
            while columns > 0, pending.count >= block * columns { process(block) }
        }
        if columns > 0, pending.count >= columns { process(pending.count / columns) }

        var changed = 0
        baseCodes.packed.withBytes { a in
            output.packed.withBytes { b in
                for i in 0..<min(a.count, b.count) {
                    let x = a[i] ^ b[i]
                    changed += (x & 0x0F != 0 ? 1 : 0) + (x & 0xF0 != 0 ? 1 : 0)
                }
            }
        }
        let cosine: Double =
            intendedSquares == 0 ? (landedSquares == 0 ? 1 : 0)
            : landedSquares == 0 ? 0 : dot / (intendedSquares.squareRoot() * landedSquares.squareRoot())
        return MergeFidelity(
            name: name, updateCosine: cosine,
            relativeNorm: intendedSquares == 0 ? 0 : (landedSquares / intendedSquares).squareRoot(),
            codesChanged: Double(changed) / Double(max(1, total)))
    }
}

extension MergeStage {
    /// A merge into a 4-bit output, with what survived of the update.
    public static func mergeMeasuring(
        quantized q: QuantizedTensor, change: TensorMerge, name: String, path: String, threads: Int = ParallelismSettings.threadCount
    ) throws -> (Output, MergeFidelity) {
        let output = try merge(quantized: q, change: change, name: name, floatType: nil, path: path, threads: threads)
        guard case .quantized(let result) = output else { preconditionFailure("a 4-bit merge gives a 4-bit tensor") }
        let restored = QuantizedRows(q)
        let merged = try MergedTensor(base: restored, merge: change, dtype: .f32, name: name, threads: threads)
        return (output, try MergeFidelity.measure(name: name, merged: merged, base: restored, baseCodes: q, output: result))
    }

    /// A float base merged into a 4-bit output (NF4, blocks of 64, double quantization), with what
    /// survived of the update against the base quantized the same way.
    public static func mergeMeasuring(
        plain tensor: Tensor, change: TensorMerge, name: String, castTo: DType?, path: String,
        threads: Int = ParallelismSettings.threadCount
    ) throws -> (Output, MergeFidelity) {
        let output = try merge(plain: tensor, change: change, name: name, castTo: castTo, quantize: true, path: path, threads: threads)
        guard case .quantized(let result) = output else { preconditionFailure("a 4-bit merge gives a 4-bit tensor") }
        let baseCodes = try QuantizedTensor.quantize(tensor, type: .nf4, blocksize: 64, doubleQuantization: true, threads: threads)
        let merged = try MergedTensor(base: tensor, merge: change, dtype: .f32, name: name, threads: threads)
        return (output, try MergeFidelity.measure(name: name, merged: merged, base: tensor, baseCodes: baseCodes, output: result))
    }
}
