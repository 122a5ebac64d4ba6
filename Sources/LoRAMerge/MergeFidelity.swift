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
        try measure(
            name: name, merged: merged, base: base, landedBase: QuantizedRows(baseCodes), landedOutput: QuantizedRows(output),
            codes: (baseCodes, output))
    }

    /// The general form: `landedBase` and `landedOutput` are the base and the merged tensor as the
    /// output stores them (4-bit ones with their `codes`, or floats of the output's type).
    public static func measure(
        name: String, merged: MergedTensor, base: any FloatRowSource, landedBase: any FloatRowSource, landedOutput: any FloatRowSource,
        codes: (before: QuantizedTensor, after: QuantizedTensor)?
    ) throws -> MergeFidelity {
        let total = merged.shape.elementCount
        let rows = merged.shape.rank == 2 ? merged.shape.dimensions[0] : 1
        let columns = rows == 0 ? 0 : total / rows
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
            _ = first
            baseRows.withUnsafeMutableBufferPointer { base.widenRows(row..<(row + count), columns: columns, into: $0.baseAddress!) }
            q0.withUnsafeMutableBufferPointer { landedBase.widenRows(row..<(row + count), columns: columns, into: $0.baseAddress!) }
            q1.withUnsafeMutableBufferPointer { landedOutput.widenRows(row..<(row + count), columns: columns, into: $0.baseAddress!) }
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
        if let codes {
            codes.before.packed.withBytes { a in
                codes.after.packed.withBytes { b in
                    for i in 0..<min(a.count, b.count) {
                        let x = a[i] ^ b[i]
                        changed += (x & 0x0F != 0 ? 1 : 0) + (x & 0xF0 != 0 ? 1 : 0)
                    }
                }
            }
        }
        let cosine: Double =
            intendedSquares == 0
            ? (landedSquares == 0 ? 1 : 0)
            : landedSquares == 0 ? 0 : dot / (intendedSquares.squareRoot() * landedSquares.squareRoot())
        return MergeFidelity(
            name: name, updateCosine: cosine,
            relativeNorm: intendedSquares == 0 ? 0 : (landedSquares / intendedSquares).squareRoot(),
            codesChanged: codes == nil ? .nan : Double(changed) / Double(max(1, total)))
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
