import Foundation
import GGUFFormat
import TensorCore
import TestSupport
import Testing

/// The streamed decoding `dequantize` and the way back to transformers use: the same values as
/// `GGUFFile.tensor`, rows reordered when asked, rounded to f16/bf16 as FloatConversion does.
struct GGUFDequantizedPayloadTests {
    static func streamed(_ payload: GGUFDequantizedPayload, chunk: Int) throws -> [UInt8] {
        var bytes: [UInt8] = []
        try payload.stream(chunkBytes: chunk) { bytes += $0 }
        return bytes
    }

    @Test(arguments: [64, 1 << 20])
    func streamsWhatTheReaderDecodes(_ chunk: Int) throws {
        let file = try GGUFFile(path: Fixtures.path("gguf/reference/llama-gqa-q8_0.gguf"))
        for info in file.tensors {
            let expected = try file.tensor(info).values(as: Float.self)
            let payload = try #require(GGUFDequantizedPayload(file, info, threads: 2))
            #expect(payload.byteCount == expected.count * 4 && payload.shape == info.shape)
            let bytes = try Self.streamed(payload, chunk: chunk)
            #expect(bytes.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) } == expected, "\(info.name)")
        }
    }

    @Test func reordersRowsAndRounds() throws {
        let file = try GGUFFile(path: Fixtures.path("gguf/reference/llama-gqa-q8_0.gguf"))
        let info = try #require(file.info("blk.0.attn_k.weight"))
        let rows = info.shape.dimensions[0]
        let columns = info.shape.dimensions[1]
        let values = try file.tensor(info).values(as: Float.self)
        let order = Array((0..<rows).reversed())
        let reversed = try Self.streamed(try #require(GGUFDequantizedPayload(file, info, rowOrder: order)), chunk: 4096)
        let floats = reversed.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        for row in 0..<rows {
            #expect(
                Array(floats[(row * columns)..<((row + 1) * columns)])
                    == Array(values[((rows - 1 - row) * columns)..<((rows - row) * columns)]))
        }
        let bf16 = try Self.streamed(try #require(GGUFDequantizedPayload(file, info, dtype: .bf16)), chunk: 4096)
        var expected = [UInt8](repeating: 0, count: values.count * 2)
        values.withUnsafeBufferPointer { v in
            expected.withUnsafeMutableBytes {
                FloatConversion.encodeFromFloat32(v.baseAddress!, count: v.count, into: $0.baseAddress!, .bf16, at: 0)
            }
        }
        #expect(bf16 == expected)
        #expect(GGUFDequantizedPayload(file, info, rowOrder: [0]) == nil, "not a permutation")
        #expect(GGUFDequantizedPayload(file, info, dtype: .i8) == nil)
    }
}
