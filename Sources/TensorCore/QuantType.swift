/// The 4-bit data types of bitsandbytes: a 16-entry code table each.
public enum QuantType: String, Sendable, CaseIterable {
    case nf4
    case fp4

    /// Value of each 4-bit code, in code order (`get_4bit_type` in bitsandbytes' functional.py).
    public var code: [Float] {
        switch self {
        case .nf4: NF4Codebook.values
        case .fp4: FP4Codebook.values
        }
    }

    /// `order[i]` is the code of the i-th smallest value: bitsandbytes buckets against sorted
    /// midpoints and maps the bucket through this (torch.argsort of the code table; identity for NF4).
    public var order: [UInt8] {
        switch self {
        case .nf4: Array(0...15)
        case .fp4: FP4Codebook.order
        }
    }

    /// The 15 decision points: `(sorted[i] + sorted[i+1]) / 2` in float32, as bitsandbytes computes them.
    public var midpoints: [Float] {
        let sorted = order.map { code[Int($0)] }
        return (0..<15).map { (sorted[$0] + sorted[$0 + 1]) / 2 }
    }
}

/// NormalFloat4 (QLoRA paper; `get_4bit_type("nf4")`).
public enum NF4Codebook {
    public static let values: [Float] = [
        -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
        -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
        0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
        0.7229568362236023, 1.0,
    ]
}

/// bitsandbytes' FP4 (E2M1 with its own scaling; `get_4bit_type("fp4")`).
public enum FP4Codebook {
    public static let values: [Float] = [
        0.0, 0.0052083334885537624, 0.6666666865348816, 1.0, 0.3333333432674408, 0.5, 0.1666666716337204, 0.25,
        0.0, -0.0052083334885537624, -0.6666666865348816, -1.0, -0.3333333432674408, -0.5, -0.1666666716337204, -0.25,
    ]
    /// torch.argsort of `values` as bitsandbytes computes it (its choice between the two zeros included).
    public static let order: [UInt8] = [11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3]
}
