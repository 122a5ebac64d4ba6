#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// How far a candidate tensor is from a reference: the one set of measures that `quantize
/// --error`, the tests' tolerances and `verify` report. Values are compared as float32 and summed
/// in double precision, a chunk at a time, so comparing holds no tensor whole.
public struct TensorComparison: Sendable, Equatable {
    public private(set) var count = 0
    public private(set) var squaredError = 0.0
    public private(set) var squaredReference = 0.0
    public private(set) var squaredCandidate = 0.0
    public private(set) var dotProduct = 0.0
    public private(set) var maxAbsError = 0.0
    /// The largest distance in float32 units in the last place (0: the same bits, or ±0).
    public private(set) var maxULPs: UInt32 = 0

    public init() {}

    /// Adds `reference[i]` against `candidate[i]` for every i.
    public mutating func add(reference: UnsafeBufferPointer<Float>, candidate: UnsafeBufferPointer<Float>) {
        precondition(reference.count == candidate.count, "compared chunks differ in length")
        for index in 0..<reference.count {
            let r = reference[index], c = candidate[index]
            let (x, y) = (Double(r), Double(c))
            let difference = y - x
            squaredError += difference * difference
            squaredReference += x * x
            squaredCandidate += y * y
            dotProduct += x * y
            maxAbsError = Swift.max(maxAbsError, abs(difference))
            maxULPs = Swift.max(maxULPs, Self.ulpDistance(r, c))
        }
        count += reference.count
    }

    public mutating func add(reference: [Float], candidate: [Float]) {
        reference.withUnsafeBufferPointer { r in candidate.withUnsafeBufferPointer { add(reference: r, candidate: $0) } }
    }

    /// Root of the mean squared difference.
    public var rmse: Double { count == 0 ? 0 : (squaredError / Double(count)).squareRoot() }
    /// RMSE relative to the reference's root mean square.
    public var relativeRMSE: Double { squaredReference == 0 ? 0 : (squaredError / squaredReference).squareRoot() }
    /// Cosine similarity (1 when either side is all zeros and the other is too).
    public var cosine: Double {
        let norms = (squaredReference * squaredCandidate).squareRoot()
        return norms == 0 ? (squaredReference == squaredCandidate ? 1 : 0) : dotProduct / norms
    }
    /// Signal-to-quantization-noise ratio in dB: `10·log10(Σ reference² / Σ error²)`
    /// (infinite for an exact match).
    public var sqnr: Double {
        squaredError == 0 ? .infinity : 10 * log10(squaredReference / squaredError)
    }

    /// Units in the last place between two float32 values on the ordered line of bit patterns;
    /// NaN against anything else is the largest distance.
    public static func ulpDistance(_ a: Float, _ b: Float) -> UInt32 {
        if a.isNaN || b.isNaN { return a.isNaN && b.isNaN ? 0 : .max }
        func ordered(_ x: Float) -> Int64 {
            let bits = Int64(x.bitPattern & 0x7FFF_FFFF)
            return x.sign == .minus ? -bits : bits
        }
        let distance = abs(ordered(a) - ordered(b))
        return distance > Int64(UInt32.max) ? .max : UInt32(distance)
    }

    public var json: JSONValue {
        .object([
            JSONMember(key: "count", value: .integer(count)),
            JSONMember(key: "rmse", value: .double(rmse)),
            JSONMember(key: "relative_rmse", value: .double(relativeRMSE)),
            JSONMember(key: "max_abs_error", value: .double(maxAbsError)),
            JSONMember(key: "cosine", value: .double(cosine)),
            JSONMember(key: "sqnr_db", value: sqnr.isFinite ? .double(sqnr) : .null),
            JSONMember(key: "max_ulps", value: .integer(Int(maxULPs))),
        ])
    }
}
