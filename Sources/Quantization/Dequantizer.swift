import TensorCore

/// 4-bit codes back to floats, as bitsandbytes' `dequantize_4bit`: `code[q] * absmax[block]` in
/// float32, then rounded to the output type (nearest even).
///
/// A dequantizer holds what decoding a tensor needs, made once per tensor: its float32 block
/// scales (double quantization undone) and a table of both nibbles of every byte. `decode` is
/// the single-threaded kernel over any range of elements (a range of rows for the forward pass,
/// which runs it inside its own parallel loop); `decodeInParallel` is the driver that splits a
/// range over threads. No kernel starts a parallel loop of its own.
///
/// bitsandbytes dequantizes a tensor whose last dimension is even with its C kernel, whose FP4
/// table has -0.0 for code 8, and other tensors with torch, whose table has +0.0; the shape picks
/// the table here too.
public struct Dequantizer: Sendable {
    public let type: QuantType
    public let blocksize: Int
    public let count: Int
    let scales: [Float]
    let code: [Float]
    /// `pairs[byte]` is the value of its high nibble and of its low nibble.
    let pairs: [SIMD2<Float>]

    /// Elements each task of the parallel driver takes: a whole number of blocks of every block
    /// size, fixed, so the split never depends on the thread count.
    static let taskElements = 32768

    public init(scales: [Float], count: Int, blocksize: Int, type: QuantType, fp4NegativeZero: Bool) {
        precondition(scales.count == (count + blocksize - 1) / blocksize, "one scale a block")
        var table = type.code
        if type == .fp4 && fp4NegativeZero { table[8] = -0.0 }
        let code = table
        self.type = type
        self.blocksize = blocksize
        self.count = count
        self.scales = scales
        self.code = code
        pairs = (0..<256).map { SIMD2(code[$0 >> 4], code[$0 & 15]) }
    }

    /// The dequantizer of a stored 4-bit tensor (its scales decoded here, once).
    public init(_ tensor: QuantizedTensor) {
        self.init(
            scales: tensor.blockScales(), count: tensor.elementCount, blocksize: tensor.blocksize, type: tensor.quantType,
            fp4NegativeZero: Self.fp4NegativeZero(tensor.shape))
    }

    static func fp4NegativeZero(_ shape: Shape) -> Bool { (shape.dimensions.last ?? 1) % 2 == 0 }

    /// Writes all `shape.elementCount` values as `dtype` (f32, f16 or bf16) to `destination`.
    public static func dequantize(
        packed: UnsafeRawPointer, absmax: [Float], shape: Shape, blocksize: Int, type: QuantType,
        into destination: UnsafeMutableRawPointer, dtype: DType, threads: Int = ParallelismSettings.threadCount
    ) {
        let dequantizer = Dequantizer(
            scales: absmax, count: shape.elementCount, blocksize: blocksize, type: type, fp4NegativeZero: fp4NegativeZero(shape))
        dequantizer.decodeInParallel(0..<shape.elementCount, packed: packed, into: destination, dtype: dtype, threads: threads)
    }

    /// The kernel, on the calling thread: elements `range` (any start and end) of the tensor whose
    /// codes start at `packed`, written as `dtype` from the start of `destination`.
    public func decode(_ range: Range<Int>, packed: UnsafeRawPointer, into destination: UnsafeMutableRawPointer, dtype: DType) {
        precondition(range.lowerBound >= 0 && range.upperBound <= count, "elements outside the tensor")
        let bytes = packed.assumingMemoryBound(to: UInt8.self)
        scales.withUnsafeBufferPointer { scales in
            pairs.withUnsafeBufferPointer { lookup in
                var i = range.lowerBound
                while i < range.upperBound {
                    let block = i / blocksize
                    let blockEnd = min(range.upperBound, (block + 1) * blocksize)
                    let scale = SIMD8<Float>(repeating: scales[block])
                    // Blocks start on a byte; a range may start or end inside one.
                    if i % 2 == 1 {
                        storeOne(i, scale: scale[0], bytes, destination, dtype, at: i - range.lowerBound)
                        i += 1
                    }
                    // Eight values a step: four bytes, their pairs looked up, scaled, stored.
                    while i + 8 <= blockEnd {
                        let b = bytes + i / 2
                        let (p0, p1, p2, p3) = (lookup[Int(b[0])], lookup[Int(b[1])], lookup[Int(b[2])], lookup[Int(b[3])])
                        let v = SIMD8<Float>(p0[0], p0[1], p1[0], p1[1], p2[0], p2[1], p3[0], p3[1]) * scale
                        Self.store(v, dtype, destination, at: i - range.lowerBound)
                        i += 8
                    }
                    while i < blockEnd {
                        storeOne(i, scale: scale[0], bytes, destination, dtype, at: i - range.lowerBound)
                        i += 1
                    }
                }
            }
        }
    }

    /// The driver: `range` split into fixed pieces of whole blocks, decoded on `threads` threads.
    public func decodeInParallel(
        _ range: Range<Int>, packed: UnsafeRawPointer, into destination: UnsafeMutableRawPointer, dtype: DType, threads: Int
    ) {
        let input = SendableRawPointer(packed)
        let output = SendableMutableRawPointer(destination)
        let width = dtype.bitSize / 8
        let task = Self.taskElements
        // Pieces end on multiples of `task` counted from the tensor's start.
        let firstPiece = range.lowerBound / task
        let pieces = range.isEmpty ? 0 : (range.upperBound - 1) / task - firstPiece + 1
        parallelForChunks(count: pieces, chunk: 1, threads: threads) { chunk in
            for piece in chunk {
                let start = max(range.lowerBound, (firstPiece + piece) * task)
                let end = min(range.upperBound, (firstPiece + piece + 1) * task)
                decode(start..<end, packed: input.raw, into: output.raw + (start - range.lowerBound) * width, dtype: dtype)
            }
        }
    }

    @inline(__always)
    private func storeOne(
        _ index: Int, scale: Float, _ bytes: UnsafePointer<UInt8>, _ destination: UnsafeMutableRawPointer, _ dtype: DType, at position: Int
    ) {
        let byte = bytes[index / 2]
        let value = code[Int(index % 2 == 0 ? byte >> 4 : byte & 15)] * scale
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 1) { one in
            one[0] = value
            FloatConversion.encodeFromFloat32(one.baseAddress!, count: 1, into: destination, dtype, at: position)
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
