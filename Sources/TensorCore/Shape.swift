/// The dimensions of a tensor, outermost first (row-major, as torch and safetensors store them).
public struct Shape: Hashable, Sendable, CustomStringConvertible, ExpressibleByArrayLiteral {
    public var dimensions: [Int]

    public init(_ dimensions: [Int]) { self.dimensions = dimensions }
    public init(arrayLiteral elements: Int...) { self.dimensions = elements }

    public var rank: Int { dimensions.count }

    /// Number of elements, or nil when the product overflows or a dimension is negative.
    public var checkedElementCount: Int? { CheckedSize.product(dimensions) }

    /// Number of elements of a shape already known to be valid.
    public var elementCount: Int { dimensions.reduce(1, *) }

    /// Bytes taken by `dtype` elements of this shape, or nil on overflow or when sub-byte
    /// elements do not end on a byte boundary.
    public func checkedByteCount(of dtype: DType) -> Int? {
        guard let count = checkedElementCount, let bits = CheckedSize.multiply(count, dtype.bitSize),
            bits % 8 == 0
        else { return nil }
        return bits / 8
    }

    public var description: String { "[" + dimensions.map(String.init).joined(separator: ", ") + "]" }
}
