import TensorCore

/// The absmax values of a 4-bit quantization stored in 8 bits, as bitsandbytes'
/// `compress_statistics=True`: `offset = mean(absmax)`, then `absmax - offset` quantized block-wise
/// (256 values a block) with the signed dynamic map.
public struct DoubleQuantizedAbsmax: Sendable, Equatable {
    public static let nestedBlocksize = 256

    /// One 8-bit code per first-level block.
    public var codes: [UInt8]
    /// One float32 scale per 256 codes.
    public var nestedAbsmax: [Float]
    public var offset: Float

    public init(codes: [UInt8], nestedAbsmax: [Float], offset: Float) {
        self.codes = codes
        self.nestedAbsmax = nestedAbsmax
        self.offset = offset
    }

    /// Quantizes first-level absmax values. The offset is their mean, summed in double
    /// precision; torch's float32 mean agrees to within a few ulp (its summation order depends on
    /// its thread count, so no one can match it bit for bit).
    public static func quantize(_ absmax: [Float]) -> DoubleQuantizedAbsmax {
        quantize(absmax, offset: mean(absmax))
    }

    /// Quantizes with a given offset (bit for bit as bitsandbytes given the same offset).
    public static func quantize(_ absmax: [Float], offset: Float) -> DoubleQuantizedAbsmax {
        let centered = absmax.map { $0 - offset }
        let (codes, scales) = DynamicBlockwise8Bit.quantize(centered, blocksize: nestedBlocksize)
        return DoubleQuantizedAbsmax(codes: codes, nestedAbsmax: scales, offset: offset)
    }

    /// The first-level absmax values back: `map[code] * nestedAbsmax[block] + offset`, rounded
    /// after the product and after the sum, as bitsandbytes' dequantize_blockwise then `+= offset`.
    public func dequantize() -> [Float] {
        let map = DynamicMap.values
        return codes.enumerated().map { index, code in
            let product = map[Int(code)] * nestedAbsmax[index / Self.nestedBlocksize]
            return product + offset
        }
    }

    /// Float32 mean of `values`, summed pairwise in double.
    public static func mean(_ values: [Float]) -> Float {
        guard !values.isEmpty else { return .nan }
        func sum(_ slice: ArraySlice<Float>) -> Double {
            if slice.count <= 64 { return slice.reduce(0.0) { $0 + Double($1) } }
            let middle = slice.startIndex + slice.count / 2
            return sum(slice[..<middle]) + sum(slice[middle...])
        }
        return Float(sum(values[...]) / Double(values.count))
    }
}

/// bitsandbytes' 8-bit block-wise quantization on CPU (`quantize_cpu_impl` in csrc/cpu_ops.cpp).
///
/// It does not search for the nearest map entry: it scales each value into [-1, 1], maps it to one
/// of 65536 evenly spaced bins, and looks the bin up in a table built from the map's midpoints. Near
/// zero, where map entries are closer together than a bin, this picks a neighbour of the nearest
/// entry; qtool reproduces the table and the bin arithmetic exactly.
public enum DynamicBlockwise8Bit {
    static let binCount = 65536

    /// The bin → map index table of `build_quantize_lut` for the dynamic map.
    static let table: [UInt8] = {
        let map = DynamicMap.values
        let midpoints = (0..<255).map { 0.5 as Float * (map[$0] + map[$0 + 1]) }
        var table = [UInt8](repeating: 0, count: binCount)
        var index = 0
        for bin in 0..<binCount {
            let value: Float = -1.0 + (2.0 * Float(bin)) / Float(binCount - 1)
            while index < 255 && midpoints[index] < value { index += 1 }
            table[bin] = UInt8(index)
        }
        return table
    }()

    /// `norm_to_lut_index`: clamp, shift to [0, 1], scale to the bins and round half up. GCC
    /// contracts its last multiply-add into one fused operation.
    @inline(__always)
    static func bin(_ value: Float) -> Int {
        let clamped = min(max(value, -1), 1)
        let half = (clamped + 1) * 0.5
        return Int(UInt16(half.mulAdd(Float(binCount - 1), 0.5)))
    }

    public static func quantize(_ values: [Float], blocksize: Int) -> (codes: [UInt8], absmax: [Float]) {
        let blocks = (values.count + blocksize - 1) / blocksize
        var codes = [UInt8](repeating: 0, count: values.count)
        var absmax = [Float](repeating: 0, count: blocks)
        values.withUnsafeBufferPointer { values in
            table.withUnsafeBufferPointer { table in
                codes.withUnsafeMutableBufferPointer { codes in
                    for block in 0..<blocks {
                        let range = (block * blocksize)..<min(values.count, (block + 1) * blocksize)
                        // The largest magnitude, eight lanes at a time: for finite values the
                        // masked bit patterns order as the magnitudes do.
                        var widest = SIMD8<UInt32>()
                        var j = range.lowerBound
                        while j + 8 <= range.upperBound {
                            let bits = UnsafeRawPointer(values.baseAddress! + j).loadUnaligned(as: SIMD8<UInt32>.self) & 0x7FFF_FFFF
                            widest = widest.replacing(with: bits, where: bits .> widest)
                            j += 8
                        }
                        var blockMax = Float(bitPattern: widest.max())
                        while j < range.upperBound {
                            blockMax = max(blockMax, abs(values[j]))
                            j += 1
                        }
                        absmax[block] = blockMax
                        // An all-zero block gets code 0 throughout, as in bitsandbytes.
                        guard blockMax != 0 else { continue }
                        let inverse = 1 / blockMax
                        var i = range.lowerBound
                        // Eight at a time: the same operations as `bin`, lane by lane.
                        while i + 8 <= range.upperBound {
                            let v = UnsafeRawPointer(values.baseAddress! + i).loadUnaligned(as: SIMD8<Float>.self) * inverse
                            let half = (v.clamped(lowerBound: SIMD8(repeating: -1), upperBound: SIMD8(repeating: 1)) + 1) * 0.5
                            let x = SIMD8<Float>(repeating: 0.5).addingProduct(half, Float(binCount - 1))
                            // Truncation of x (0.5 ≤ x ≤ 65535.5) without a conversion call: round
                            // to an integer by adding and taking away 2^23, step down where that
                            // rounded up, and read the integer from the bits of it plus 2^23.
                            let magic = SIMD8<Float>(repeating: 8_388_608)
                            var whole = (x + magic) - magic
                            whole = whole.replacing(with: whole - 1, where: whole .> x)
                            let bins = unsafeBitCast(whole + magic, to: SIMD8<Int32>.self) &- 0x4B00_0000
                            for lane in 0..<8 { codes[i + lane] = table[Int(bins[lane])] }
                            i += 8
                        }
                        while i < range.upperBound {
                            codes[i] = table[bin(values[i] * inverse)]
                            i += 1
                        }
                    }
                }
            }
        }
        return (codes, absmax)
    }
}

extension Float {
    /// `self * factor + addend` with one rounding.
    @inline(__always)
    func mulAdd(_ factor: Float, _ addend: Float) -> Float { addend.addingProduct(self, factor) }
}
