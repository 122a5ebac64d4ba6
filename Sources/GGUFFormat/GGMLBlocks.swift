import TensorCore

/// ggml's block formats: dequantization of every type qtool reads and quantization of the types
/// it writes, each computed as gguf-py's `gguf.quants` computes it (numpy, float32, no fused
/// multiply-add), so that results agree bit for bit.
public enum GGMLBlocks {
    @inline(__always) static func half(_ bytes: UnsafeRawPointer, _ offset: Int) -> Float {
        Float(bitPattern: FloatConversion.f32Bits(fromF16: bytes.loadUnaligned(fromByteOffset: offset, as: UInt16.self).littleEndian))
    }

    @inline(__always) static func storeHalf(_ value: Float, _ bytes: UnsafeMutableRawPointer, _ offset: Int) {
        bytes.storeBytes(of: FloatConversion.f16Bits(fromF32: value.bitPattern).littleEndian, toByteOffset: offset, as: UInt16.self)
    }

    /// Turns whole blocks of `type` into floats: `blocks.count / typeSize` blocks into as many
    /// times `blockSize` values. Plain float types are decoded too.
    public static func dequantize(_ type: GGMLType, _ blocks: UnsafeRawBufferPointer, into output: UnsafeMutableBufferPointer<Float>) {
        let count = blocks.count / type.typeSize
        precondition(output.count >= count * type.blockSize && blocks.count == count * type.typeSize)
        guard count > 0, let source = blocks.baseAddress, let y = output.baseAddress else { return }
        if let dtype = type.plainDType {
            precondition(FloatConversion.decodable.contains(dtype), "\(type) holds integers")
            FloatConversion.decodeToFloat32(source, dtype, from: 0, count: count, into: y)
            return
        }
        for block in 0..<count {
            let b = source + block * type.typeSize
            let out = y + block * type.blockSize
            switch type {
            case .q4_0: q4_0(b, out)
            case .q4_1: q4_1(b, out)
            case .q5_0: q5(b, out, hasMinimum: false)
            case .q5_1: q5(b, out, hasMinimum: true)
            case .q8_0: q8_0(b, out)
            case .q2_K: q2_K(b, out)
            case .q3_K: q3_K(b, out)
            case .q4_K: k4or5(b, out, fiveBits: false)
            case .q5_K: k4or5(b, out, fiveBits: true)
            case .q6_K: q6_K(b, out)
            default: preconditionFailure("\(type) is not dequantizable")
            }
        }
    }

    // MARK: Dequantization, one block

    @inline(__always) private static func q4_0(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(b, 0)
        for j in 0..<16 {
            let byte = b.load(fromByteOffset: 2 + j, as: UInt8.self)
            y[j] = d * Float(Int(byte & 0x0F) - 8)
            y[j + 16] = d * Float(Int(byte >> 4) - 8)
        }
    }

    @inline(__always) private static func q4_1(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(b, 0)
        let m = half(b, 2)
        for j in 0..<16 {
            let byte = b.load(fromByteOffset: 4 + j, as: UInt8.self)
            y[j] = d * Float(byte & 0x0F) + m
            y[j + 16] = d * Float(byte >> 4) + m
        }
    }

    @inline(__always) private static func q5(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>, hasMinimum: Bool) {
        let d = half(b, 0)
        let m: Float = hasMinimum ? half(b, 2) : 0
        let base = hasMinimum ? 4 : 2
        let qh = UInt32(littleEndian: b.loadUnaligned(fromByteOffset: base, as: UInt32.self))
        for j in 0..<32 {
            let byte = b.load(fromByteOffset: base + 4 + (j & 15), as: UInt8.self)
            let low = j < 16 ? byte & 0x0F : byte >> 4
            let q = Int(low) | Int((qh >> UInt32(j)) & 1) << 4
            y[j] = hasMinimum ? d * Float(q) + m : d * Float(q - 16)
        }
    }

    @inline(__always) private static func q8_0(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(b, 0)
        for j in 0..<32 { y[j] = Float(b.load(fromByteOffset: 2 + j, as: Int8.self)) * d }
    }

    /// Q2_K: scales[16], qs[64], d, dmin.
    @inline(__always) private static func q2_K(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(b, 80)
        let dmin = half(b, 82)
        for e in 0..<256 {
            let group = e / 16
            let scale = b.load(fromByteOffset: group, as: UInt8.self)
            let dl = d * Float(scale & 0x0F)
            let ml = dmin * Float(scale >> 4)
            let half = e / 128
            let shift = (e % 128) / 32
            let q = (b.load(fromByteOffset: 16 + half * 32 + e % 32, as: UInt8.self) >> UInt8(2 * shift)) & 3
            y[e] = dl * Float(q) - ml
        }
    }

    /// Q3_K: hmask[32], qs[64], scales[12] (6-bit, packed), d.
    @inline(__always) private static func q3_K(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(b, 108)
        var dl: (Float, Float, Float, Float, Float, Float, Float, Float, Float, Float, Float, Float, Float, Float, Float, Float) = (
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
        )
        withUnsafeMutableBytes(of: &dl) { raw in
            let dl = raw.bindMemory(to: Float.self)
            for k in 0..<16 {
                let lowByte = b.load(fromByteOffset: 96 + (k % 8), as: UInt8.self)
                let low = (k < 8 ? lowByte : lowByte >> 4) & 0x0F
                let high = (b.load(fromByteOffset: 96 + 8 + (k % 4), as: UInt8.self) >> UInt8(2 * (k / 4))) & 3
                let scale = Int8(bitPattern: low | high << 4) &- 32
                dl[k] = d * Float(scale)
            }
            for e in 0..<256 {
                let half = e / 128
                let shift = (e % 128) / 32
                let l = e % 32
                let low = (b.load(fromByteOffset: 32 + half * 32 + l, as: UInt8.self) >> UInt8(2 * shift)) & 3
                let bit = (b.load(fromByteOffset: l, as: UInt8.self) >> UInt8(e / 32)) & 1
                let q = Int8(low) - Int8((bit ^ 1) << 2)
                y[e] = dl[e / 16] * Float(q)
            }
        }
    }

    /// The eight 6-bit scales and minimums of Q4_K and Q5_K, from their 12 packed bytes.
    @inline(__always) private static func scaleMin(_ s: UnsafeRawPointer, _ i: Int) -> (scale: UInt8, minimum: UInt8) {
        func byte(_ k: Int) -> UInt8 { s.load(fromByteOffset: k, as: UInt8.self) }
        if i < 4 { return (byte(i) & 0x3F, byte(4 + i) & 0x3F) }
        let j = i - 4
        return ((byte(8 + j) & 0x0F) | ((byte(j) >> 2) & 0x30), (byte(8 + j) >> 4) | ((byte(4 + j) >> 2) & 0x30))
    }

    /// Q4_K (d, dmin, scales[12], qs[128]) and Q5_K (the same with qh[32] before qs, bit g of
    /// qh[l] the fifth bit of element l of group g).
    @inline(__always) private static func k4or5(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>, fiveBits: Bool) {
        let d = half(b, 0)
        let dmin = half(b, 2)
        let codes = fiveBits ? 48 : 16
        for group in 0..<8 {
            let (scale, minimum) = scaleMin(b + 4, group)
            let dd = d * Float(scale)
            let dm = dmin * Float(minimum)
            let chunk = group / 2
            let shift = UInt8(4 * (group % 2))
            for l in 0..<32 {
                var q = (b.load(fromByteOffset: codes + chunk * 32 + l, as: UInt8.self) >> shift) & 0x0F
                if fiveBits { q |= ((b.load(fromByteOffset: 16 + l, as: UInt8.self) >> UInt8(group)) & 1) << 4 }
                y[group * 32 + l] = dd * Float(q) - dm
            }
        }
    }

    /// Q6_K: ql[128], qh[64], scales[16] (int8), d.
    @inline(__always) private static func q6_K(_ b: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(b, 208)
        for e in 0..<256 {
            let half = e / 128
            let inHalf = e % 128
            let low = (b.load(fromByteOffset: half * 64 + inHalf % 64, as: UInt8.self) >> UInt8(4 * (inHalf / 64))) & 0x0F
            let high = (b.load(fromByteOffset: 128 + half * 32 + inHalf % 32, as: UInt8.self) >> UInt8(2 * (inHalf / 32))) & 3
            let q = Int8(bitPattern: low | high << 4) &- 32
            let scale = Float(b.load(fromByteOffset: 192 + e / 16, as: Int8.self))
            y[e] = (d * scale) * Float(q)
        }
    }

    // MARK: Quantization

    /// Encodes `values` (a whole number of blocks) as `type` into `output`
    /// (`values.count / blockSize * typeSize` bytes). F32, F16, BF16, Q8_0 and Q4_0.
    public static func quantize(_ type: GGMLType, _ values: UnsafeBufferPointer<Float>, into output: UnsafeMutableRawBufferPointer) {
        let count = values.count / type.blockSize
        precondition(type.isWritable && values.count == count * type.blockSize && output.count >= count * type.typeSize)
        guard count > 0, let x = values.baseAddress, let out = output.baseAddress else { return }
        switch type {
        case .f32:
            out.copyMemory(from: x, byteCount: count * 4)
        case .f16:
            for i in 0..<count {
                out.storeBytes(of: FloatConversion.f16Bits(fromF32: x[i].bitPattern).littleEndian, toByteOffset: 2 * i, as: UInt16.self)
            }
        case .bf16:
            for i in 0..<count { out.storeBytes(of: bf16Bits(x[i]).littleEndian, toByteOffset: 2 * i, as: UInt16.self) }
        case .q8_0:
            for block in 0..<count { quantizeQ8_0Fast(x + 32 * block, out + 34 * block) }
        case .q4_0:
            for block in 0..<count { quantizeQ4_0(x + 32 * block, out + 18 * block) }
        default:
            preconditionFailure("\(type) is not writable")
        }
    }

    /// float32 → bfloat16 as gguf-py (`ggml_compute_fp32_to_bf16`): NaN made quiet, keeping its
    /// sign and upper payload; round to nearest even.
    @inline(__always) public static func bf16Bits(_ value: Float) -> UInt16 {
        var n = value.bitPattern
        if n & 0x7FFF_FFFF > 0x7F80_0000 { n = (n & 0xFFFF_0000) | (64 << 16) }
        return UInt16(truncatingIfNeeded: (UInt64(n) + UInt64(0x7FFF + ((n >> 16) & 1))) >> 16)
    }

    /// A float to an integer type as numpy's cast does on x86 for values in range; NaN gives 0.
    @inline(__always) static func clampedInt(_ value: Float, _ range: ClosedRange<Int>) -> Int {
        guard !value.isNaN else { return 0 }
        return Int(max(Float(range.lowerBound), min(Float(range.upperBound), value.rounded(.towardZero))))
    }

    /// `quantizeQ8_0` with vector arithmetic: the same operations in the same order on 16 lanes
    /// (a block with a NaN takes the scalar path, which follows numpy's NaN rules).
    @inline(__always) static func quantizeQ8_0Fast(_ x: UnsafePointer<Float>, _ out: UnsafeMutableRawPointer) {
        let raw = UnsafeRawPointer(x)
        let a = raw.loadUnaligned(as: SIMD16<Float>.self)
        let b = raw.loadUnaligned(fromByteOffset: 64, as: SIMD16<Float>.self)
        let magnitudeMask = SIMD16<UInt32>(repeating: 0x7FFF_FFFF)
        let aBits = unsafeBitCast(a, to: SIMD16<UInt32>.self) & magnitudeMask
        let bBits = unsafeBitCast(b, to: SIMD16<UInt32>.self) & magnitudeMask
        // A NaN or an infinity takes the scalar path (numpy's max propagates NaN; inf · 0 is NaN).
        let infinity = SIMD16<UInt32>(repeating: 0x7F80_0000)
        if any(aBits .>= infinity) || any(bBits .>= infinity) {
            quantizeQ8_0(x, out)
            return
        }
        // Non-negative floats order as their bit patterns.
        let amax = Float(bitPattern: pointwiseMax(aBits, bBits).max())
        let d = amax / 127
        let id: Float = d == 0 ? 0 : 1 / d
        storeHalf(d, out, 0)
        @inline(__always) func codes(_ v: SIMD16<Float>) -> SIMD16<Int8> {
            let t = v * id
            // Halves away from zero, exactly as np_roundf: floor(|t|) + (frac >= 0.5), signed.
            // |t| ≤ 127 (+ rounding): adding and removing 2²³ rounds it to an integer (to even);
            // one less where that went up gives the floor, exactly.
            let magnitude = unsafeBitCast(unsafeBitCast(t, to: SIMD16<UInt32>.self) & magnitudeMask, to: SIMD16<Float>.self)
            let shift = SIMD16<Float>(repeating: 8_388_608)
            let nearest = (magnitude + shift) - shift
            let whole = nearest.replacing(with: nearest - 1, where: nearest .> magnitude)
            let rounded = whole.replacing(with: whole + 1, where: (magnitude - whole) .>= SIMD16<Float>(repeating: 0.5))
            // An integer float plus 1.5·2²³ holds the integer in its low mantissa bits.
            let bits = unsafeBitCast(rounded + SIMD16<Float>(repeating: 12_582_912), to: SIMD16<Int32>.self) &- 0x4B40_0000
            let signed = bits.replacing(with: 0 &- bits, where: t .< SIMD16<Float>(repeating: 0))
            return SIMD16<Int8>(truncatingIfNeeded: signed.clamped(lowerBound: SIMD16(repeating: -128), upperBound: SIMD16(repeating: 127)))
        }
        (out + 2).storeBytes(of: codes(a), as: SIMD16<Int8>.self)
        (out + 18).storeBytes(of: codes(b), as: SIMD16<Int8>.self)
    }

    /// Q8_0: `d = amax / 127`, `q = round(x · (1/d))` with halves away from zero (gguf-py's
    /// `np_roundf`, ggml's `roundf`); d stored as float16.
    @inline(__always) static func quantizeQ8_0(_ x: UnsafePointer<Float>, _ out: UnsafeMutableRawPointer) {
        var amax: Float = 0
        for j in 0..<32 {
            let a = abs(x[j])
            // numpy's max propagates NaN.
            if a > amax || a.isNaN && !amax.isNaN { amax = a }
        }
        let d = amax / 127
        let id: Float = d == 0 ? 0 : 1 / d
        storeHalf(d, out, 0)
        for j in 0..<32 {
            let q = (x[j] * id).rounded(.toNearestOrAwayFromZero)
            out.storeBytes(of: Int8(clampedInt(q, -128...127)), toByteOffset: 2 + j, as: Int8.self)
        }
    }

    /// Q4_0: `d = m / -8` where m is the value of largest magnitude (the first, with its sign);
    /// `q = min(15, trunc(float32(float64(x) · float64(1/d) + 8.5)))`: the product and the sum in
    /// double, rounded to float before the truncation (gguf-py's rule; ggml's C reference computes
    /// `x·id + 8.5f` in float, where a compiler may fuse it). Element j goes to the low nibble of
    /// byte j, element j + 16 to its high nibble.
    @inline(__always) static func quantizeQ4_0(_ x: UnsafePointer<Float>, _ out: UnsafeMutableRawPointer) {
        var maxIndex = 0
        var amax: Float = -1
        for j in 0..<32 {
            let a = abs(x[j])
            // numpy's argmax: the first maximum; a NaN counts as the maximum.
            if a.isNaN {
                if !amax.isNaN { maxIndex = j; amax = a }
            } else if a > amax {
                maxIndex = j
                amax = a
            }
        }
        let d = x[maxIndex] / -8
        let id: Float = d == 0 ? 0 : 1 / d
        storeHalf(d, out, 0)
        @inline(__always) func code(_ j: Int) -> UInt8 {
            UInt8(clampedInt(Float(Double(x[j]) * Double(id) + 8.5), 0...255).clamped(to: 0...15))
        }
        for j in 0..<16 { out.storeBytes(of: code(j) | code(j + 16) << 4, toByteOffset: 2 + j, as: UInt8.self) }
    }
}

extension Comparable {
    @inline(__always) func clamped(to range: ClosedRange<Self>) -> Self { min(max(self, range.lowerBound), range.upperBound) }
}
