import CQuantKernel
import Synchronization
import TensorCore

/// What quantizing can refuse.
public enum QuantizationError: Error, Equatable, CustomStringConvertible {
    /// bitsandbytes would quantize NaN and infinity into garbage; qtool refuses them.
    case nonFinite(elementIndex: Int)
    case unsupportedDType(DType)
    case invalidBlocksize(Int)
    /// A tensor stored in bitsandbytes' layout that does not add up.
    case invalidLayout(tensor: String, problem: String)

    public var description: String {
        switch self {
        case .invalidLayout(let tensor, let problem): "tensor '\(tensor)': \(problem)"
        case .nonFinite(let index): "holds NaN or infinity (element \(index)); cannot quantize"
        case .unsupportedDType(let dtype): "is \(dtype.rawValue); only float tensors can be quantized"
        case .invalidBlocksize(let size): "blocksize \(size) is not a power of two from 32 to 4096"
        }
    }
}

/// The first level of 4-bit quantization: packed codes and one float32 absmax per block.
public struct BlockwiseQuantization: Sendable {
    public var quantType: QuantType
    public var blocksize: Int
    public var elementCount: Int
    /// Two codes a byte, the first element in the high nibble; `ceil(elementCount / 2)` bytes.
    public var packed: [UInt8]
    public var absmax: [Float]

    public init(quantType: QuantType, blocksize: Int, elementCount: Int, packed: [UInt8], absmax: [Float]) {
        self.quantType = quantType
        self.blocksize = blocksize
        self.elementCount = elementCount
        self.packed = packed
        self.absmax = absmax
    }

    public var blockCount: Int { (elementCount + blocksize - 1) / blocksize }
}

/// Block-wise 4-bit quantization, bit for bit as bitsandbytes' `quantize_4bit` on CPU
/// (`backends/default/ops.py`):
///
/// - values are widened to float32; each block of `blocksize` has `absmax = max |x|`;
/// - a full block is scaled by the float32 reciprocal `1 / max(absmax, 1e-38)` (a multiplication),
///   the last partial block by a division by `max(absmax, 1e-38)`, whose clamped value is stored;
/// - scaled values are clamped to [-1, 1] and bucketed against the 15 sorted midpoints with
///   torch.bucketize's `right=False`: the code is the number of midpoints strictly below the value,
///   so a value on a midpoint takes the lower code; FP4 maps it through `QuantType.order`;
/// - an odd count is padded with one 0.0 after scaling; two codes pack into a byte, high nibble first.
public enum BlockwiseQuantizer {
    public static let validBlocksizes = [32, 64, 128, 256, 512, 1024, 2048, 4096]
    /// `absmax.clamp(min=1e-38)` as float32.
    static let smallestScale: Float = 1e-38

    public static func checkBlocksize(_ blocksize: Int) throws(QuantizationError) {
        guard validBlocksizes.contains(blocksize) else { throw .invalidBlocksize(blocksize) }
    }

    /// The plain version that defines the format; `quantize` is held to it by the tests.
    public static func quantizeReference(_ values: [Float], blocksize: Int, type: QuantType) throws(QuantizationError)
        -> BlockwiseQuantization
    {
        try checkBlocksize(blocksize)
        if let bad = values.firstIndex(where: { !$0.isFinite }) { throw .nonFinite(elementIndex: bad) }
        let n = values.count
        let blocks = (n + blocksize - 1) / blocksize
        let midpoints = type.midpoints
        let order = type.order
        func code(_ scaled: Float) -> UInt8 {
            let clamped = min(max(scaled, -1), 1)
            return order[midpoints.reduce(0) { $0 + ($1 < clamped ? 1 : 0) }]
        }
        var codes = [UInt8](repeating: 0, count: n + n % 2)
        var absmax = [Float](repeating: 0, count: blocks)
        for block in 0..<blocks {
            let range = (block * blocksize)..<min(n, (block + 1) * blocksize)
            let blockMax = values[range].reduce(Float(0)) { max($0, abs($1)) }
            if range.count == blocksize {
                absmax[block] = blockMax
                let inverse = 1 / max(blockMax, smallestScale)
                for i in range { codes[i] = code(values[i] * inverse) }
            } else {
                let scale = max(blockMax, smallestScale)
                absmax[block] = scale
                for i in range { codes[i] = code(values[i] / scale) }
            }
        }
        if n % 2 == 1 { codes[n] = code(0) }
        let packed = stride(from: 0, to: codes.count, by: 2).map { codes[$0] << 4 | codes[$0 + 1] }
        return BlockwiseQuantization(quantType: type, blocksize: blocksize, elementCount: n, packed: packed, absmax: absmax)
    }

    /// The fast kernel: SIMD over each block, blocks in parallel (a fixed split, so the result
    /// does not depend on the thread count). `source` holds `count` elements of `dtype`.
    public static func quantize(
        _ source: UnsafeRawPointer, dtype: DType, count n: Int, blocksize: Int, type: QuantType, threads: Int = 1,
        variant: Variant = .fastest
    ) throws(QuantizationError) -> BlockwiseQuantization {
        try checkBlocksize(blocksize)
        var packed = [UInt8](repeating: 0, count: (n + 1) / 2)
        var absmax = [Float](repeating: 0, count: (n + blocksize - 1) / blocksize)
        let outcome = packed.withUnsafeMutableBytes { codes in
            absmax.withUnsafeMutableBufferPointer { scales in
                Result { () throws(QuantizationError) in
                    try quantize(
                        source, dtype: dtype, count: n, blocksize: blocksize, type: type, codes: codes.baseAddress,
                        scales: scales.baseAddress, threads: threads, variant: variant)
                }
            }
        }
        try outcome.get()
        return BlockwiseQuantization(quantType: type, blocksize: blocksize, elementCount: n, packed: packed, absmax: absmax)
    }

    /// The kernel writing where the caller says: `(count + 1) / 2` bytes of codes and one scale a
    /// block, so a streaming caller fills its result in place.
    public static func quantize(
        _ source: UnsafeRawPointer, dtype: DType, count n: Int, blocksize: Int, type: QuantType,
        codes: UnsafeMutableRawPointer?, scales: UnsafeMutablePointer<Float>?, threads: Int, variant: Variant = .fastest
    ) throws(QuantizationError) {
        try checkBlocksize(blocksize)
        guard [.f32, .f16, .bf16, .f64].contains(dtype) else { throw .unsupportedDType(dtype) }
        guard n > 0, let codes, let scales else { return }
        let blocks = (n + blocksize - 1) / blocksize
        let firstBad = AtomicMinimum()
        let input = SendableRawPointer(source)
        let out = SendableMutableRawPointer(codes)
        let scaleOut = SendableMutableRawPointer(UnsafeMutableRawPointer(scales))
        let kernel = Kernel(type: type)
        let cells = variant == .avx512 && (dtype == .bf16 || dtype == .f32) ? CellTables.of(type) : nil
        // About 64 KiB of input per task. Full blocks of f32 and bf16 are read in place;
        // other types, and the last partial block, are widened into a scratch block first.
        let blocksPerTask = max(1, 16384 / blocksize)
        parallelForChunks(count: blocks, chunk: blocksPerTask, threads: threads) { blockRange in
            let codes = out.raw.assumingMemoryBound(to: UInt8.self)
            let scales = scaleOut.raw.assumingMemoryBound(to: Float.self)
            var portable = blockRange
            if var tables = cells?.tables {
                // The AVX-512 kernel takes the full blocks; a block it finds NaN or infinity in
                // is left to the portable loop below, which reports the element.
                let full = blockRange.lowerBound..<min(blockRange.upperBound, n / blocksize)
                let width = dtype == .bf16 ? 2 : 4
                let refused = qtool_q4_quantize_avx512(
                    input.raw + full.lowerBound * blocksize * width, dtype == .bf16 ? 1 : 0, full.count, blocksize, &tables,
                    codes + full.lowerBound * blocksize / 2, scales + full.lowerBound)
                if refused > 0, let bad = full.first(where: { scales[$0].isNaN }) {
                    portable = bad..<bad + 1
                } else {
                    portable = full.upperBound..<blockRange.upperBound
                }
            }
            withUnsafeTemporaryAllocation(of: Float.self, capacity: blocksize) { temp in
                for block in portable {
                    let start = block * blocksize
                    let length = min(blocksize, n - start)
                    let scale: Float?
                    if length < blocksize {
                        // The last, partial block (at most one per tensor).
                        FloatConversion.decodeToFloat32(input.raw, dtype, from: start, count: length, into: temp.baseAddress!)
                        scale = kernel.quantizePartialBlock(temp.baseAddress!, count: length, into: codes + start / 2)
                    } else if dtype == .bf16 {
                        scale = kernel.quantizeFullBlock(bf16: input.raw + start * 2, count: length, into: codes + start / 2)
                    } else if dtype == .f32 {
                        scale = kernel.quantizeFullBlock(f32: input.raw + start * 4, count: length, into: codes + start / 2)
                    } else {
                        FloatConversion.decodeToFloat32(input.raw, dtype, from: start, count: length, into: temp.baseAddress!)
                        scale = kernel.quantizeFullBlock(f32: UnsafeRawPointer(temp.baseAddress!), count: length, into: codes + start / 2)
                    }
                    guard let scale else {
                        FloatConversion.decodeToFloat32(input.raw, dtype, from: start, count: length, into: temp.baseAddress!)
                        let bad = (0..<length).first { !temp[$0].isFinite } ?? 0
                        firstBad.record(start + bad)
                        continue
                    }
                    scales[block] = scale
                }
            }
        }
        if let bad = firstBad.value { throw .nonFinite(elementIndex: bad) }
    }

    /// Which block kernel runs: the portable SIMD8 one (AVX2 on x86-64), or the AVX-512 one in
    /// CQuantKernel where the CPU and the OS run it. Both give the same bits.
    public enum Variant: Sendable {
        case portable
        case avx512

        /// The AVX-512 kernel needs F, BW, VL and DQ.
        public static let fastest: Variant = {
            let features = CPUInfo.current.features
            return ["avx512f", "avx512bw", "avx512vl", "avx512dq"].allSatisfy(features.contains) ? .avx512 : .portable
        }()
    }

    /// The AVX-512 kernel's tables (see CQuantKernel.h): 32 cells over [-1, 1], the number of
    /// midpoints before each cell and the one midpoint inside it. Built with the kernel's own
    /// cell arithmetic; nil when some cell would hold two midpoints (FP4's three midpoints
    /// around zero), and that type keeps the portable kernel.
    struct CellTables {
        var tables: qtool_q4_tables

        /// `clamp(trunc(16 v + 16), 0, 31)` with one rounding, as the kernel's fused multiply-add.
        static func cell(_ v: Float) -> Int {
            min(max(Int(Float(16).addingProduct(v, 16).rounded(.towardZero)), 0), 31)
        }

        static func of(_ type: QuantType) -> CellTables? {
            type == .nf4 ? nf4 : fp4
        }
        private static let nf4 = CellTables(type: .nf4)
        private static let fp4 = CellTables(type: .fp4)

        init?(type: QuantType) {
            var below = [Int32](repeating: 0, count: 32)
            var midpoint = [Float](repeating: .infinity, count: 32)
            for m in type.midpoints {
                let cell = Self.cell(m)
                guard midpoint[cell] == .infinity else { return nil }
                midpoint[cell] = m
                for later in (cell + 1)..<32 { below[later] += 1 }
            }
            var tables = qtool_q4_tables()
            let order = type.order.map { Int32($0) }
            below.withUnsafeBytes { source in withUnsafeMutableBytes(of: &tables.below) { $0.copyMemory(from: source) } }
            midpoint.withUnsafeBytes { source in withUnsafeMutableBytes(of: &tables.midpoint) { $0.copyMemory(from: source) } }
            order.withUnsafeBytes { source in withUnsafeMutableBytes(of: &tables.order) { $0.copyMemory(from: source) } }
            tables.reorder = order == (0..<16).map { Int32($0) } ? 0 : 1
            self.tables = tables
        }
    }

    /// Block kernels with the midpoints held in vectors. It holds no references, so passing it
    /// around costs no reference counting in the per-block loop.
    struct Kernel: Sendable {
        let isFP4: Bool
        let m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14: SIMD8<Float>
        let order: SIMD16<UInt8>
        let zeroCode: UInt8

        init(type: QuantType) {
            isFP4 = type == .fp4
            let m = type.midpoints.map { SIMD8<Float>(repeating: $0) }
            (m0, m1, m2, m3, m4, m5, m6, m7) = (m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7])
            (m8, m9, m10, m11, m12, m13, m14) = (m[8], m[9], m[10], m[11], m[12], m[13], m[14])
            order = SIMD16<UInt8>(type.order)
            zeroCode = type.order[type.midpoints.reduce(0) { $0 + ($1 < 0 ? 1 : 0) }]
        }

        /// A full block of bf16 read in place: the largest magnitude from the 16-bit patterns, then
        /// each value widened to float32 (exact) as it is scaled.
        @inline(__always)
        func quantizeFullBlock(bf16 source: UnsafeRawPointer, count: Int, into out: UnsafeMutablePointer<UInt8>) -> Float? {
            // Masked patterns compare as the magnitudes do (Inf/NaN above every finite value);
            // signed 16-bit lanes hold them exactly (at most 0x7FFF).
            var widest = SIMD16<Int16>(repeating: 0)
            var i = 0
            while i + 16 <= count {
                let x = source.loadUnaligned(fromByteOffset: i * 2, as: SIMD16<Int16>.self) & 0x7FFF
                widest = widest.replacing(with: x, where: x .> widest)
                i += 16
            }
            let low = widest.lowHalf, high = widest.highHalf
            let top = low.replacing(with: high, where: high .> low)
            var widestBits = UInt32(0)
            for lane in 0..<8 { widestBits = Swift.max(widestBits, UInt32(UInt16(bitPattern: top[lane]))) }
            widestBits <<= 16
            guard widestBits < 0x7F80_0000 else { return nil }
            let blockMax = Float(bitPattern: widestBits)
            let factor = SIMD8<Float>(repeating: 1 / max(blockMax, smallestScale))
            i = 0
            while i < count {
                let half = SIMD8<UInt32>(truncatingIfNeeded: source.loadUnaligned(fromByteOffset: i * 2, as: SIMD8<UInt16>.self))
                let v = unsafeBitCast(half &<< 16, to: SIMD8<Float>.self) * factor
                store(bucket(v), into: out + i / 2)
                i += 8
            }
            return blockMax
        }

        /// A full block of f32 read in place.
        @inline(__always)
        func quantizeFullBlock(f32 source: UnsafeRawPointer, count: Int, into out: UnsafeMutablePointer<UInt8>) -> Float? {
            var widest = SIMD8<UInt32>(repeating: 0)
            var i = 0
            while i + 8 <= count {
                widest = pointwiseMax(widest, source.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<UInt32>.self) & 0x7FFF_FFFF)
                i += 8
            }
            let widestBits = widest.max()
            guard widestBits < 0x7F80_0000 else { return nil }
            let blockMax = Float(bitPattern: widestBits)
            let factor = SIMD8<Float>(repeating: 1 / max(blockMax, smallestScale))
            i = 0
            while i < count {
                store(bucket(source.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self) * factor), into: out + i / 2)
                i += 8
            }
            return blockMax
        }

        /// Packs eight bucket indices (FP4: through its order) into four bytes, high nibble first.
        @inline(__always)
        func store(_ buckets: SIMD8<Int32>, into out: UnsafeMutablePointer<UInt8>) {
            var q = buckets
            if isFP4 { for lane in 0..<8 { q[lane] = Int32(order[Int(q[lane])]) } }
            let bytes = SIMD4<UInt8>(truncatingIfNeeded: (q.evenHalf &<< 4) | q.oddHalf)
            UnsafeMutableRawPointer(out).storeBytes(of: bytes, as: SIMD4<UInt8>.self)
        }

        /// The last, partial block: it is divided by its absmax instead of multiplied by the
        /// reciprocal, stores the clamped absmax, and an odd count is padded with the code of 0.
        /// Returns nil when the block holds NaN or infinity.
        func quantizePartialBlock(_ values: UnsafeMutablePointer<Float>, count: Int, into out: UnsafeMutablePointer<UInt8>) -> Float? {
            // For non-negative floats the bit patterns order as the values do, so the largest
            // magnitude is the largest masked pattern, and anything from 0x7F800000 up is Inf/NaN.
            let widestBits = (0..<count).reduce(UInt32(0)) { max($0, values[$1].bitPattern & 0x7FFF_FFFF) }
            guard widestBits < 0x7F80_0000 else { return nil }
            let stored = max(Float(bitPattern: widestBits), smallestScale)
            var i = 0
            while i + 8 <= count {
                var v = SIMD8<Float>()
                for lane in 0..<8 { v[lane] = values[i + lane] / stored }
                store(bucket(v), into: out + i / 2)
                i += 8
            }
            while i < count {
                let high = code(values[i] / stored)
                let low = i + 1 < count ? code(values[i + 1] / stored) : zeroCode
                out[i / 2] = high << 4 | low
                i += 2
            }
            return stored
        }

        /// The number of midpoints below each lane: the code before FP4's reordering. Fifteen
        /// independent comparisons summed (a true lane is -1): no chain of dependent steps, so
        /// the CPU overlaps them, and no blends.
        @inline(__always)
        func bucket(_ v: SIMD8<Float>) -> SIMD8<Int32> {
            @inline(__always) func below(_ m: SIMD8<Float>) -> SIMD8<Int32> { unsafeBitCast(m .< v, to: SIMD8<Int32>.self) }
            let a = (below(m0) &+ below(m1)) &+ (below(m2) &+ below(m3))
            let b = (below(m4) &+ below(m5)) &+ (below(m6) &+ below(m7))
            let c = (below(m8) &+ below(m9)) &+ (below(m10) &+ below(m11))
            let d = (below(m12) &+ below(m13)) &+ below(m14)
            return SIMD8<Int32>.zero &- ((a &+ b) &+ (c &+ d))
        }

        @inline(__always)
        func code(_ scaled: Float) -> UInt8 {
            order[Int(bucket(SIMD8(repeating: scaled))[0])]
        }
    }
}

/// The smallest index any thread recorded.
final class AtomicMinimum: Sendable {
    private let stored = Mutex<Int?>(nil)
    func record(_ value: Int) { stored.withLock { $0 = min($0 ?? value, value) } }
    var value: Int? { stored.withLock { $0 } }
}
