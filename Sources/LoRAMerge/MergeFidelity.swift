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
    /// `baseIsStored`: `base` is `baseCodes` itself (a 4-bit base kept with its settings), read once.
    public static func measure(
        name: String, merged: MergedTensor, base: any FloatRowSource, baseCodes: QuantizedTensor, output: QuantizedTensor,
        baseIsStored: Bool = false
    ) throws -> MergeFidelity {
        try measure(
            name: name, merged: merged, base: base, landedBase: QuantizedRows(baseCodes), landedOutput: QuantizedRows(output),
            codes: (baseCodes, output), baseIsLanded: baseIsStored)
    }

    /// The general form: `landedBase` and `landedOutput` are the base and the merged tensor as the
    /// output stores them (4-bit ones with their `codes`, or floats of the output's type).
    public static func measure(
        name: String, merged: MergedTensor, base: any FloatRowSource, landedBase: any FloatRowSource, landedOutput: any FloatRowSource,
        codes: (before: QuantizedTensor, after: QuantizedTensor)?, baseIsLanded: Bool = false
    ) throws -> MergeFidelity {
        let total = merged.shape.elementCount
        let rows = merged.shape.rank == 2 ? merged.shape.dimensions[0] : 1
        let columns = rows == 0 ? 0 : total / rows
        var dot = 0.0, intendedSquares = 0.0, landedSquares = 0.0
        var pending: [Float] = []
        var row = 0
        // Tasks of a fixed number of rows, their sums added in order: any thread count gives the
        // same figures.
        let taskRows = max(1, (1 << 16) / max(1, columns))
        func process(_ count: Int) {
            let tasks = (count + taskRows - 1) / taskRows
            var partial = [Double](repeating: 0, count: tasks * 3)
            pending.withUnsafeBufferPointer { merged in
                partial.withUnsafeMutableBufferPointer { sums in
                    let mergedValues = SendableFloatPointer(UnsafeMutablePointer(mutating: merged.baseAddress!))
                    let out = SendableDoublePointer(sums.baseAddress!)
                    let firstRow = row
                    parallelForChunks(count: tasks, chunk: 1, threads: merged.count > 0 ? threadCount : 1) { range in
                        for task in range {
                            let rows = (firstRow + task * taskRows)..<min(firstRow + count, firstRow + (task + 1) * taskRows)
                            let elements = rows.count * columns
                            let b = UnsafeMutablePointer<Float>.allocate(capacity: elements * 3)
                            defer { b.deallocate() }
                            landedBase.widenRows(rows, columns: columns, into: b + elements)
                            if baseIsLanded {
                                b.update(from: b + elements, count: elements)
                            } else {
                                base.widenRows(rows, columns: columns, into: b)
                            }
                            landedOutput.widenRows(rows, columns: columns, into: b + 2 * elements)
                            let m = mergedValues.pointer + (rows.lowerBound - firstRow) * columns
                            // Float in 16 lanes within runs of 64 values, double across them.
                            var d = 0.0, ii = 0.0, ll = 0.0
                            let q0 = b + elements, q1 = b + 2 * elements
                            var i = 0
                            while i + 64 <= elements {
                                var sd = SIMD16<Float>(), si = SIMD16<Float>(), sl = SIMD16<Float>()
                                for j in stride(from: i, to: i + 64, by: 16) {
                                    let mv = UnsafeRawPointer(m + j).loadUnaligned(as: SIMD16<Float>.self)
                                    let bv = UnsafeRawPointer(b + j).loadUnaligned(as: SIMD16<Float>.self)
                                    let v0 = UnsafeRawPointer(q0 + j).loadUnaligned(as: SIMD16<Float>.self)
                                    let v1 = UnsafeRawPointer(q1 + j).loadUnaligned(as: SIMD16<Float>.self)
                                    let intended = mv - bv, landed = v1 - v0
                                    sd += intended * landed
                                    si += intended * intended
                                    sl += landed * landed
                                }
                                d += Double(sd.sum())
                                ii += Double(si.sum())
                                ll += Double(sl.sum())
                                i += 64
                            }
                            while i < elements {
                                let intended = Double(m[i]) - Double(b[i]), landed = Double(q1[i]) - Double(q0[i])
                                d += intended * landed
                                ii += intended * intended
                                ll += landed * landed
                                i += 1
                            }
                            out.pointer[task * 3] = d
                            out.pointer[task * 3 + 1] = ii
                            out.pointer[task * 3 + 2] = ll
                        }
                    }
                }
            }
            for task in 0..<tasks {
                dot += partial[task * 3]
                intendedSquares += partial[task * 3 + 1]
                landedSquares += partial[task * 3 + 2]
            }
            pending.removeFirst(count * columns)
            // Mapped inputs give their pages back as the merge itself does.
            base.releaseRows(row..<(row + count), columns: columns)
            landedBase.releaseRows(row..<(row + count), columns: columns)
            landedOutput.releaseRows(row..<(row + count), columns: columns)
            row += count
        }
        let threadCount = merged.threads
        try merged.stream(chunkBytes: 1 << 22) { bytes in
            let count = bytes.count / 4
            pending.append(contentsOf: UnsafeBufferPointer(start: bytes.baseAddress?.assumingMemoryBound(to: Float.self), count: count))
            if columns > 0, pending.count >= columns { process(pending.count / columns) }
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
            // The codes were read whole: a mapped base gives its pages back.
            landedBase.releaseRows(0..<rows, columns: columns)
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

struct SendableFloatPointer: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<Float>; init(_ p: UnsafeMutablePointer<Float>) { pointer = p }
}
struct SendableDoublePointer: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<Double>; init(_ p: UnsafeMutablePointer<Double>) { pointer = p }
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
        return (
            output, try MergeFidelity.measure(name: name, merged: merged, base: restored, baseCodes: q, output: result, baseIsStored: true)
        )
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
