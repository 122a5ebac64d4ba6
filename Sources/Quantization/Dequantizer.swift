import TensorCore

/// 4-bit codes back to floats, as bitsandbytes' `dequantize_4bit`: `code[q] * absmax[block]` in
/// float32, then rounded to the output type (nearest even).
public enum Dequantizer {
    /// Writes the `shape.elementCount` values of `dtype` (f32, f16 or bf16) to `destination`.
    ///
    /// bitsandbytes dequantizes a tensor whose last dimension is even with its C kernel, whose FP4
    /// table has -0.0 for code 8, and other tensors with torch, whose table has +0.0; the shape
    /// picks the table here too.
    public static func dequantize(
        packed: UnsafeRawPointer, absmax: [Float], shape: Shape, blocksize: Int, type: QuantType,
        into destination: UnsafeMutableRawPointer, dtype: DType
    ) {
        dequantize(
            packed: packed, absmax: absmax[...], count: shape.elementCount, blocksize: blocksize, type: type,
            fp4NegativeZero: (shape.dimensions.last ?? 1) % 2 == 0, into: destination, dtype: dtype)
    }

    /// Dequantizes `count` elements that start on a block boundary: `packed` points at their first
    /// byte and `absmax` holds their blocks' scales.
    public static func dequantize(
        packed: UnsafeRawPointer, absmax: ArraySlice<Float>, count n: Int, blocksize: Int, type: QuantType,
        fp4NegativeZero: Bool, into destination: UnsafeMutableRawPointer, dtype: DType
    ) {
        let absmax = Array(absmax)
        var table = type.code
        if type == .fp4 && fp4NegativeZero { table[8] = -0.0 }
        let code = table
        let blocks = (n + blocksize - 1) / blocksize
        let input = SendableRawPointer(packed)
        let output = SendableMutableRawPointer(destination)
        absmax.withUnsafeBufferPointer { scales in
            let scalePointer = SendableRawPointer(UnsafeRawPointer(scales.baseAddress!))
            // A table of both nibbles of every byte keeps the inner loop to loads and multiplies.
            let pairs: [SIMD2<Float>] = (0..<256).map { SIMD2(code[$0 >> 4], code[$0 & 15]) }
            pairs.withUnsafeBufferPointer { pairTable in
                let table = SendableRawPointer(UnsafeRawPointer(pairTable.baseAddress!))
                parallelForChunks(count: blocks, chunk: max(1, 16384 / blocksize)) { blockRange in
                    withUnsafeTemporaryAllocation(of: Float.self, capacity: blocksize) { temp in
                        let bytes = input.raw.assumingMemoryBound(to: UInt8.self)
                        let lookup = table.raw.assumingMemoryBound(to: SIMD2<Float>.self)
                        for block in blockRange {
                            let start = block * blocksize
                            let length = min(blocksize, n - start)
                            let scale = SIMD2<Float>(repeating: scalePointer.raw.assumingMemoryBound(to: Float.self)[block])
                            let base = bytes + start / 2
                            var i = 0
                            while i + 2 <= length {
                                let v = lookup[Int(base[i / 2])] * scale
                                temp[i] = v[0]
                                temp[i + 1] = v[1]
                                i += 2
                            }
                            if i < length { temp[i] = code[Int(base[i / 2] >> 4)] * scale[0] }
                            FloatConversion.encodeFromFloat32(temp.baseAddress!, count: length, into: output.raw, dtype, at: start)
                        }
                    }
                }
            }
        }
    }
}
