/// Element-wise conversions between floating types, bit for bit as torch's `Tensor.to()` does
/// them on x86-64 CPUs (checked against torch goldens in Tests/TensorCoreTests):
///
/// - every conversion goes through float32, as torch's does (float64 → bfloat16 rounds twice);
/// - rounding is to nearest, ties to even; overflow gives infinity; NaN stays NaN;
/// - NaN bit patterns follow torch's kernels, which differ between its vector loop and the scalar
///   loop it runs on a 0-dimensional tensor and on the last `n % width` elements of some
///   conversions: see `scalarKernelStart`. Vector loops give float32 → bfloat16 0xFFFF and
///   float16 → float32 the quiet payload-keeping NaN of vcvtph2ps; scalar loops give 0x7FC0 and
///   0x7FFFFFFF. float32 → float16 keeps sign and top payload bits and sets the quiet bit
///   (vcvtps2ph) everywhere.
public enum FloatConversion {
    /// The float types qtool converts from: every real float type whole bytes can hold.
    public static func canConvert(from source: DType, to target: DType) -> Bool {
        source == target || (decodable.contains(source) && encodable.contains(target))
    }

    /// The types whose elements widen to float32 (the sub-byte MX types F4/F6 do not).
    public static let decodable: Set<DType> = [.f64, .f32, .f16, .bf16, .f8E4M3, .f8E5M2, .f8E4M3FNUZ, .f8E5M2FNUZ, .f8E8M0]
    /// The types float32 values are written as.
    public static let encodable: Set<DType> = [.f64, .f32, .f16, .bf16]

    /// Index of the first element of a tensor of `total` elements that torch converts with its
    /// scalar loop (whose NaN patterns differ); `total` when none is.
    public static func scalarKernelStart(from source: DType, to target: DType, total: Int, isScalarTensor: Bool) -> Int {
        if isScalarTensor { return 0 }
        switch (source, target) {
        case (.f16, .f32): return total - total % 8  // Vectorized<float> is 8 lanes
        case (.f64, .bf16): return total - total % 16  // two Vectorized<double> per bf16 vector
        default: return total
        }
    }

    /// Converts `count` elements from `source` (of `sourceType`) into `destination` (of
    /// `targetType`). The elements are those at `firstIndex...` of a tensor with `total` elements,
    /// whose position decides which of torch's loops, and so which NaN pattern, applies.
    public static func convert(
        _ source: UnsafeRawPointer, _ sourceType: DType,
        into destination: UnsafeMutableRawPointer, _ targetType: DType,
        count: Int, firstIndex: Int = 0, total: Int? = nil, isScalarTensor: Bool = false
    ) {
        precondition(canConvert(from: sourceType, to: targetType))
        if sourceType == targetType {
            destination.copyMemory(from: source, byteCount: count * sourceType.bitSize / 8)
            return
        }
        let bf16NaN: UInt16 = sourceType == .f32 || sourceType == .f64 ? 0xFFFF : 0x7FC0
        let scalarStart = scalarKernelStart(from: sourceType, to: targetType, total: total ?? count, isScalarTensor: isScalarTensor)
        let tile = 1024
        withUnsafeTemporaryAllocation(of: UInt32.self, capacity: tile) { bits in
            var start = 0
            while start < count {
                let n = min(tile, count - start)
                decode(source, sourceType, from: start, count: n, into: bits.baseAddress!)
                encode(bits.baseAddress!, count: n, into: destination, targetType, at: start, bf16NaN: bf16NaN)
                let scalarFrom = max(start, scalarStart - firstIndex)
                if scalarFrom < start + n {
                    applyScalarNaN(
                        bits.baseAddress!, tileStart: start, range: scalarFrom..<(start + n), sourceType, into: destination, targetType)
                }
                start += n
            }
        }
    }

    /// Rewrites NaN outputs in `range` with the pattern of torch's scalar loop.
    private static func applyScalarNaN(
        _ bits: UnsafeMutablePointer<UInt32>, tileStart: Int, range: Range<Int>, _ sourceType: DType,
        into destination: UnsafeMutableRawPointer, _ targetType: DType
    ) {
        for i in range where (bits[i - tileStart] & 0x7FFF_FFFF) > 0x7F80_0000 {
            switch targetType {
            case .bf16: destination.assumingMemoryBound(to: UInt16.self)[i] = 0x7FC0
            case .f32 where sourceType == .f16: destination.assumingMemoryBound(to: UInt32.self)[i] = 0x7FFF_FFFF
            default: break
            }
        }
    }

    /// float32 bit patterns of elements `start..<start+count`.
    @inline(__always)
    @usableFromInline static func decode(
        _ source: UnsafeRawPointer, _ type: DType, from start: Int, count: Int, into bits: UnsafeMutablePointer<UInt32>
    ) {
        switch type {
        case .f32:
            let p = source.assumingMemoryBound(to: UInt32.self) + start
            bits.update(from: p, count: count)
        case .bf16:
            let p = source.assumingMemoryBound(to: UInt16.self) + start
            for i in 0..<count { bits[i] = UInt32(p[i]) << 16 }
        case .f16:
            let p = source.assumingMemoryBound(to: UInt16.self) + start
            for i in 0..<count { bits[i] = f32Bits(fromF16: p[i]) }
        case .f64:
            let p = source.assumingMemoryBound(to: Double.self) + start
            for i in 0..<count { bits[i] = Float(p[i]).bitPattern }
        case .f8E4M3, .f8E5M2, .f8E4M3FNUZ, .f8E5M2FNUZ, .f8E8M0:
            let table = Float8Tables.table(for: type)
            let p = source.assumingMemoryBound(to: UInt8.self) + start
            table.withUnsafeBufferPointer { t in
                for i in 0..<count { bits[i] = t[Int(p[i])] }
            }
        default:
            preconditionFailure("no float32 decoding for \(type)")
        }
    }

    @inline(__always)
    @usableFromInline static func encode(
        _ bits: UnsafePointer<UInt32>, count: Int, into destination: UnsafeMutableRawPointer, _ type: DType, at start: Int, bf16NaN: UInt16
    ) {
        switch type {
        case .f32:
            (destination.assumingMemoryBound(to: UInt32.self) + start).update(from: bits, count: count)
        case .bf16:
            let p = destination.assumingMemoryBound(to: UInt16.self) + start
            for i in 0..<count { p[i] = bf16Bits(fromF32: bits[i], nan: bf16NaN) }
        case .f16:
            let p = destination.assumingMemoryBound(to: UInt16.self) + start
            for i in 0..<count { p[i] = f16Bits(fromF32: bits[i]) }
        case .f64:
            // Widening is exact.
            let p = destination.assumingMemoryBound(to: Double.self) + start
            for i in 0..<count { p[i] = Double(Float(bitPattern: bits[i])) }
        default:
            preconditionFailure("no encoding into \(type)")
        }
    }

    /// Whether elements `start..<start+count` of `source` (f64, f32, f16 or bf16) are all finite:
    /// no exponent of all ones. Branch-free, so the loops vectorize.
    public static func allFinite(_ source: UnsafeRawPointer, _ type: DType, from start: Int, count: Int) -> Bool {
        @inline(__always) func none<T: FixedWidthInteger>(_: T.Type, exponent: T) -> Bool {
            let p = source.assumingMemoryBound(to: T.self) + start
            var bad: T = 0
            for i in 0..<count { bad |= (p[i] & exponent) == exponent ? 1 : 0 }
            return bad == 0
        }
        switch type {
        case .f32: return none(UInt32.self, exponent: 0x7F80_0000)
        case .bf16: return none(UInt16.self, exponent: 0x7F80)
        case .f16: return none(UInt16.self, exponent: 0x7C00)
        case .f64: return none(UInt64.self, exponent: 0x7FF0_0000_0000_0000)
        default: return true
        }
    }

    /// float32 → bfloat16, round to nearest even; NaN becomes `nan`.
    @inline(__always)
    public static func bf16Bits(fromF32 u: UInt32, nan: UInt16 = 0xFFFF) -> UInt16 {
        let rounded = UInt16(truncatingIfNeeded: (u &+ 0x7FFF &+ ((u >> 16) & 1)) >> 16)
        return (u & 0x7FFF_FFFF) > 0x7F80_0000 ? nan : rounded
    }

    /// float32 → float16, round to nearest even, as x86's vcvtps2ph.
    @inline(__always)
    public static func f16Bits(fromF32 u: UInt32) -> UInt16 {
        let sign = (u >> 16) & 0x8000
        let a = u & 0x7FFF_FFFF
        // Normal range: move the exponent bias from 127 to 15, then round off 13 mantissa bits.
        let rebiased = a &- 0x3800_0000
        let normal = (rebiased &+ 0xFFF &+ ((rebiased >> 13) & 1)) >> 13
        // Below 2^-14: adding 0.5 makes the FPU round at float16's subnormal step 2^-24.
        let subnormal = (Float(bitPattern: a) + 0.5).bitPattern &- 0x3F00_0000
        var result = a < 0x3880_0000 ? subnormal : normal
        // 65520 and above round to infinity (65504 is the largest float16).
        result = a >= 0x477F_F000 ? 0x7C00 : result
        result = a > 0x7F80_0000 ? 0x7E00 | ((a >> 13) & 0x3FF) : result
        return UInt16(truncatingIfNeeded: result | sign)
    }

    /// float16 → float32 (exact), as vcvtph2ps: NaN keeps sign and payload and becomes quiet.
    @inline(__always)
    public static func f32Bits(fromF16 h: UInt16) -> UInt32 {
        let sign = UInt32(h & 0x8000) << 16
        let exponent = UInt32(h >> 10) & 0x1F
        let mantissa = UInt32(h & 0x3FF)
        let normal = ((exponent &+ 112) << 23) | (mantissa << 13)
        let subnormal = (Float(mantissa) * 0x1p-24).bitPattern
        var result = exponent == 0 ? subnormal : normal
        result = exponent == 31 ? 0x7F80_0000 | (mantissa << 13) | (mantissa != 0 ? 0x40_0000 : 0) : result
        return result | sign
    }
}

/// float32 values of every byte of the 8-bit float types.
enum Float8Tables {
    static let e4m3 = make(nanMantissaShift: 20) { b in
        // OCP E4M3FN: bias 7, no infinities, S.1111.111 is NaN.
        decodeMinifloat(b, exponentBits: 4, mantissaBits: 3, bias: 7, nan: { $0 & 0x7F == 0x7F }, hasInfinity: false)
    }
    static let e5m2 = make(nanMantissaShift: 21) { b in
        decodeMinifloat(b, exponentBits: 5, mantissaBits: 2, bias: 15, nan: { $0 & 0x7F > 0x7C }, hasInfinity: true)
    }
    static let e4m3fnuz = make { b in
        // FNUZ: bias one higher, no negative zero, 0x80 is the only NaN.
        decodeMinifloat(b, exponentBits: 4, mantissaBits: 3, bias: 8, nan: { $0 == 0x80 }, hasInfinity: false)
    }
    static let e5m2fnuz = make { b in
        decodeMinifloat(b, exponentBits: 5, mantissaBits: 2, bias: 16, nan: { $0 == 0x80 }, hasInfinity: false)
    }
    static let e8m0 = make { b in
        // Exponent only: 2^(b-127), 0xFF is NaN.
        b == 0xFF ? Float.nan : Float(sign: .plus, exponent: Int(b) - 127, significand: 1)
    }

    static func table(for type: DType) -> [UInt32] {
        switch type {
        case .f8E4M3: e4m3
        case .f8E5M2: e5m2
        case .f8E4M3FNUZ: e4m3fnuz
        case .f8E5M2FNUZ: e5m2fnuz
        case .f8E8M0: e8m0
        default: preconditionFailure("\(type) is not an 8-bit float")
        }
    }

    /// torch widens an OCP 8-bit NaN by moving its sign and mantissa into a quiet float32 NaN,
    /// and gives the FNUZ and E8M0 NaNs the pattern 0x7F800001.
    private static func make(nanMantissaShift: Int? = nil, _ value: (UInt8) -> Float) -> [UInt32] {
        (0...255).map { b in
            let v = value(UInt8(b))
            guard v.isNaN else { return v.bitPattern }
            guard let shift = nanMantissaShift else { return 0x7F80_0001 }
            let mantissa = UInt32(b) & ((1 << (23 - shift)) - 1)
            return (UInt32(b & 0x80) << 24) | 0x7FC0_0000 | (mantissa << shift)
        }
    }

    private static func decodeMinifloat(
        _ b: UInt8, exponentBits: Int, mantissaBits: Int, bias: Int, nan: (UInt8) -> Bool, hasInfinity: Bool
    ) -> Float {
        if nan(b) { return .nan }
        let negative = b & 0x80 != 0
        let exponent = Int(b >> mantissaBits) & ((1 << exponentBits) - 1)
        let mantissa = Int(b) & ((1 << mantissaBits) - 1)
        if hasInfinity && exponent == (1 << exponentBits) - 1 && mantissa == 0 {
            return negative ? -.infinity : .infinity
        }
        let magnitude: Float =
            exponent == 0
            ? Float(mantissa) * Float(sign: .plus, exponent: 1 - bias - mantissaBits, significand: 1)
            : Float(sign: .plus, exponent: exponent - bias, significand: 1 + Float(mantissa) / Float(1 << mantissaBits))
        return negative ? -magnitude : magnitude
    }
}

extension FloatConversion {
    /// Widens elements `start..<start+count` of `source` (any type `canConvert` reads) to float32,
    /// exactly as torch's `.float()` of a tensor with more than `count` elements.
    @inlinable
    public static func decodeToFloat32(
        _ source: UnsafeRawPointer, _ type: DType, from start: Int, count: Int, into destination: UnsafeMutablePointer<Float>
    ) {
        destination.withMemoryRebound(to: UInt32.self, capacity: count) { bits in
            decode(source, type, from: start, count: count, into: bits)
        }
    }

    /// Narrows float32 values into elements `start..<start+count` of `destination` (f32, f16 or
    /// bf16, rounding to nearest even; or f64, exactly).
    @inlinable
    public static func encodeFromFloat32(
        _ values: UnsafePointer<Float>, count: Int, into destination: UnsafeMutableRawPointer, _ type: DType, at start: Int
    ) {
        values.withMemoryRebound(to: UInt32.self, capacity: count) { bits in
            encode(bits, count: count, into: destination, type, at: start, bf16NaN: 0x7FC0)
        }
    }
}
