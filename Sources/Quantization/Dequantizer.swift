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
        fp4NegativeZero: Bool, into destination: UnsafeMutableRawPointer, dtype: DType, threads: Int = ParallelismSettings.threadCount
    ) {
        let absmax = Array(absmax)
        var table = type.code
        if type == .fp4 && fp4NegativeZero { table[8] = -0.0 }
        let code = table
        let blocks = (n + blocksize - 1) / blocksize
        let input = SendableRawPointer(packed)
        let output = SendableMutableRawPointer(destination)
        // A table of both nibbles of every byte keeps the inner loop to loads and multiplies.
        let pairs: [SIMD2<Float>] = (0..<256).map { SIMD2(code[$0 >> 4], code[$0 & 15]) }
        absmax.withUnsafeBufferPointer { scales in
            pairs.withUnsafeBufferPointer { pairTable in
                let scalePointer = SendableRawPointer(UnsafeRawPointer(scales.baseAddress!))
                let table = SendableRawPointer(UnsafeRawPointer(pairTable.baseAddress!))
                parallelForChunks(count: blocks, chunk: max(1, 32768 / blocksize), threads: threads) { blockRange in
                    let bytes = input.raw.assumingMemoryBound(to: UInt8.self)
                    let lookup = table.raw.assumingMemoryBound(to: SIMD2<Float>.self)
                    let scaleOf = scalePointer.raw.assumingMemoryBound(to: Float.self)
                    for block in blockRange {
                        let start = block * blocksize
                        let length = min(blocksize, n - start)
                        let scale = SIMD8<Float>(repeating: scaleOf[block])
                        let base = bytes + start / 2
                        var i = 0
                        // Eight values a step: four bytes, their pairs looked up, scaled, stored.
                        while i + 8 <= length {
                            let b = base + i / 2
                            let (p0, p1, p2, p3) = (lookup[Int(b[0])], lookup[Int(b[1])], lookup[Int(b[2])], lookup[Int(b[3])])
                            let v = SIMD8<Float>(p0[0], p0[1], p1[0], p1[1], p2[0], p2[1], p3[0], p3[1]) * scale
                            store(v, dtype, output.raw, at: start + i)
                            i += 8
                        }
                        while i < length {
                            let byte = base[i / 2]
                            let value = code[Int(i % 2 == 0 ? byte >> 4 : byte & 15)] * scale[0]
                            withUnsafeTemporaryAllocation(of: Float.self, capacity: 1) { one in
                                one[0] = value
                                FloatConversion.encodeFromFloat32(one.baseAddress!, count: 1, into: output.raw, dtype, at: start + i)
                            }
                            i += 1
                        }
                    }
                }
            }
        }
    }

    /// Stores eight float32 values as `dtype` at element `index`, rounding to nearest even.
    @inline(__always)
    static func store(_ v: SIMD8<Float>, _ dtype: DType, _ destination: UnsafeMutableRawPointer, at index: Int) {
        switch dtype {
        case .f32:
            destination.storeBytes(of: v, toByteOffset: index * 4, as: SIMD8<Float>.self)
        case .bf16:
            // Products of finite values are finite here (no NaN), so plain round-to-nearest-even.
            let bits = unsafeBitCast(v, to: SIMD8<UInt32>.self)
            let rounded = (bits &+ 0x7FFF &+ ((bits &>> 16) & 1)) &>> 16
            destination.storeBytes(of: SIMD8<UInt16>(truncatingIfNeeded: rounded), toByteOffset: index * 2, as: SIMD8<UInt16>.self)
        default:
            withUnsafeTemporaryAllocation(of: Float.self, capacity: 8) { temp in
                for lane in 0..<8 { temp[lane] = v[lane] }
                FloatConversion.encodeFromFloat32(temp.baseAddress!, count: 8, into: destination, dtype, at: index)
            }
        }
    }
}
