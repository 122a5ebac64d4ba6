extension String {
    /// The string with `pad` in front until it is `width` characters long (unchanged if longer).
    public func leftPadded(to width: Int, with pad: Character = " ") -> String {
        count >= width ? self : String(repeating: pad, count: width - count) + self
    }
}

extension FixedWidthInteger {
    /// Lowercase hex digits, zero-padded to the type's width (`0000002a` for a UInt32 42).
    public var paddedHexDigits: String {
        String(self, radix: 16).leftPadded(to: Self.bitWidth / 4, with: "0")
    }
}
