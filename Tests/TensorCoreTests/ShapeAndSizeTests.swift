import Testing

@testable import TensorCore

struct ShapeAndSizeTests {
    @Test func elementAndByteCountsAreOverflowChecked() {
        #expect(Shape([3, 4]).checkedByteCount(of: .bf16) == 24)
        #expect(Shape([]).checkedElementCount == 1)
        #expect(Shape([0, 5]).checkedByteCount(of: .f32) == 0)
        #expect(Shape([1 << 62, 4]).checkedElementCount == nil)
        #expect(Shape([1 << 61]).checkedByteCount(of: .f64) == nil)
        #expect(Shape([3]).checkedByteCount(of: .f4) == nil, "half a byte left over")
        #expect(Shape([4]).checkedByteCount(of: .f4) == 2)
        #expect(Shape([-1]).checkedElementCount == nil)
    }

    @Test func byteReaderStopsAtTheEnd() {
        let bytes: [UInt8] = [1, 0, 0, 0, 0, 0, 0, 0, 9]
        bytes.withUnsafeBytes { raw in
            var reader = ByteReader(raw)
            #expect(reader.read(UInt64.self) == 1)
            #expect(reader.read(UInt16.self) == nil)
            #expect(reader.readBytes(2) == nil)
            #expect(reader.read(UInt8.self) == 9)
            #expect(reader.remaining == 0)
        }
    }

    @Test func dtypeOrderIsTheReferenceWriters() {
        // safetensors sorts by this rank, descending: 8-byte types first, BOOL last.
        let order = DType.allCases.sorted { $0.safetensorsRank > $1.safetensorsRank }.map(\.rawValue)
        #expect(order.prefix(5) == ["U64", "I64", "F64", "C64", "F32"])
        #expect(order.last == "BOOL")
        #expect(DType(userName: "bfloat16") == .bf16 && DType(userName: "F16") == .f16 && DType(userName: "x") == nil)
    }
}
