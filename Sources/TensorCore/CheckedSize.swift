/// Overflow-checked size arithmetic for sizes that come from untrusted files.
public enum CheckedSize {
    /// `a * b`, or nil when it overflows `Int`.
    @inlinable public static func multiply(_ a: Int, _ b: Int) -> Int? {
        let (value, overflow) = a.multipliedReportingOverflow(by: b)
        return overflow ? nil : value
    }

    /// `a + b`, or nil when it overflows `Int`.
    @inlinable public static func add(_ a: Int, _ b: Int) -> Int? {
        let (value, overflow) = a.addingReportingOverflow(b)
        return overflow ? nil : value
    }

    /// The product of `values`, or nil when it overflows (an empty list gives 1).
    @inlinable public static func product(_ values: [Int]) -> Int? {
        var result = 1
        for value in values {
            guard value >= 0, let next = multiply(result, value) else { return nil }
            result = next
        }
        return result
    }
}
