import GGUFFormat
import TensorCore
import Testing

/// GGMLBlocks against gguf-py's `gguf.quants` (fixtures/gguf/quant-goldens.safetensors and
/// dequant-goldens.safetensors): bit for bit, NaN equal to NaN.
struct GGMLBlocksTests {
    /// Every type dequant-goldens.safetensors holds blocks of (gguf-py 0.17.1 has no Q8_K codec).
    static let dequantTypes: [GGMLType] = [.q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q2_K, .q3_K, .q4_K, .q5_K, .q6_K]
    /// The types gguf-py can quantize to that qtool writes.
    static let writeTypes: [GGMLType] = [.q8_0, .q4_0]
    /// The types gguf-py can quantize to that qtool only reads.
    static let readOnlyTypes: [GGMLType] = [.q4_1, .q5_0, .q5_1]

    @Test func theGoldensHoldEveryTypeAndCase() {
        let types = Set(GGUFGoldens.dequant.names.map { String($0.prefix { $0 != "." }) })
        #expect(types == Set(Self.dequantTypes.map(\.description)))
        let randn = Set(GGUFGoldens.dequant.names.filter { $0.contains(".randn.") }.map { String($0.prefix { $0 != "." }) })
        #expect(randn == ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"])
        #expect(GGUFGoldens.quantCases.count == 16)
        // Every tensor of quant-goldens.safetensors is an input or the output of a tested type.
        let suffixes = Set(
            GGUFGoldens.quant.names.map { name -> String in
                let parts = name.split(separator: ".")
                return parts.dropFirst().joined(separator: ".")
            })
        let written = (Self.writeTypes + Self.readOnlyTypes).map(\.description)
        #expect(suffixes == Set(["input"] + written.flatMap { ["\($0).quantized", "\($0).dequantized"] }))
    }

    @Test(arguments: dequantTypes)
    func dequantizesRandomBlocksAsGGUFPy(_ type: GGMLType) throws {
        let blocks = GGUFGoldens.tensor(GGUFGoldens.dequant, "\(type).blocks")
        let expected = GGUFGoldens.tensor(GGUFGoldens.dequant, "\(type).dequantized")
        #expect(blocks.shape == [16, type.typeSize])
        #expect(expected.shape == [16, type.blockSize])
        let got = dequantized(type, blocks.values(as: UInt8.self))
        #expect(firstFloatDifference(got, expected.values(as: Float.self)) == nil, "\(type)")
    }

    @Test(arguments: [GGMLType.q4_0, .q4_1, .q5_0, .q5_1, .q8_0])
    func dequantizesQuantizedNormalsAsGGUFPy(_ type: GGMLType) throws {
        let blocks = GGUFGoldens.tensor(GGUFGoldens.dequant, "\(type).randn.blocks").values(as: UInt8.self)
        let expected = GGUFGoldens.tensor(GGUFGoldens.dequant, "\(type).randn.dequantized").values(as: Float.self)
        #expect(firstFloatDifference(dequantized(type, blocks), expected) == nil, "\(type)")
        if Self.writeTypes.contains(type) {
            let input = GGUFGoldens.tensor(GGUFGoldens.dequant, "\(type).randn.input").values(as: Float.self)
            #expect(firstByteDifference(quantized(type, input), blocks) == nil, "\(type)")
        }
    }

    /// quantize of each row of `<case>.input` gives gguf-py's bytes, and dequantize of them its floats.
    @Test(arguments: GGUFGoldens.quantCases, writeTypes)
    func quantizesAsGGUFPy(_ name: String, _ type: GGMLType) throws {
        let input = GGUFGoldens.tensor(GGUFGoldens.quant, "\(name).input")
        let expectedBytes = GGUFGoldens.tensor(GGUFGoldens.quant, "\(name).\(type).quantized")
        let expectedFloats = GGUFGoldens.tensor(GGUFGoldens.quant, "\(name).\(type).dequantized").values(as: Float.self)
        let rows = input.shape.dimensions[0]
        let columns = input.shape.dimensions[1]
        #expect(expectedBytes.shape == [rows, columns / type.blockSize * type.typeSize])
        let values = input.values(as: Float.self)
        var bytes: [UInt8] = []
        for row in 0..<rows { bytes += quantized(type, Array(values[(row * columns)..<((row + 1) * columns)])) }
        #expect(firstByteDifference(bytes, expectedBytes.values(as: UInt8.self)) == nil, "\(name) \(type)")
        #expect(firstFloatDifference(dequantized(type, bytes), expectedFloats) == nil, "\(name) \(type)")
    }

    @Test(arguments: GGUFGoldens.quantCases, readOnlyTypes)
    func dequantizesGGUFPyQuantizationOfReadOnlyTypes(_ name: String, _ type: GGMLType) throws {
        let bytes = GGUFGoldens.tensor(GGUFGoldens.quant, "\(name).\(type).quantized").values(as: UInt8.self)
        let expected = GGUFGoldens.tensor(GGUFGoldens.quant, "\(name).\(type).dequantized").values(as: Float.self)
        #expect(firstFloatDifference(dequantized(type, bytes), expected) == nil, "\(name) \(type)")
    }

    // MARK: F32, F16, BF16

    /// Every input of quant-goldens.safetensors, and the values around the f16 and bf16 limits.
    static let plainInputs: [Float] = {
        var values = GGUFGoldens.quantCases.flatMap { GGUFGoldens.tensor(GGUFGoldens.quant, "\($0).input").values(as: Float.self) }
        let edges: [Float] = [
            0, -0, 1, -1, 65504, -65504, 65519.996, 65520, -65520, 1e5, 0x1p-24, 0x1p-25, 0x1.8p-25, 0x1p-14,
            Float(bitPattern: 0x0001_16C2), .infinity,
            -.infinity, .greatestFiniteMagnitude, -.greatestFiniteMagnitude, .leastNonzeroMagnitude, 1.00390625, 1.01171875,
        ]
        values += edges
        values += [Float](repeating: 0, count: (32 - values.count % 32) % 32)
        return values
    }()

    @Test func f32IsStoredAsItIs() {
        let values = Self.plainInputs + [.nan, -.nan, Float(bitPattern: 0x7F80_0001), Float(bitPattern: 0xFFC1_2345)]
        let bytes = quantized(.f32, values)
        #expect(bytes == values.withUnsafeBytes { Array($0) })
        #expect(dequantized(.f32, bytes).map(\.bitPattern) == values.map(\.bitPattern))
    }

    @Test func f16IsFloatConversionsRounding() {
        let values = Self.plainInputs
        let bytes = quantized(.f16, values)
        let expected = values.flatMap { le(FloatConversion.f16Bits(fromF32: $0.bitPattern)) }
        #expect(firstByteDifference(bytes, expected) == nil)
        let back = dequantized(.f16, bytes)
        let expectedBack = values.map {
            Float(bitPattern: FloatConversion.f32Bits(fromF16: FloatConversion.f16Bits(fromF32: $0.bitPattern)))
        }
        #expect(firstFloatDifference(back, expectedBack) == nil)
        // f16 limits: 65504 stays, 65520 is the first value that rounds to infinity.
        #expect(quantized(.f16, [Float](repeating: 65519.996, count: 1)) == le(UInt16(0x7BFF)))
        #expect(quantized(.f16, [Float](repeating: -65520, count: 1)) == le(UInt16(0xFC00)))
    }

    @Test func f16ValuesRoundTripExactly() {
        let values = GGUFGoldens.tensor(GGUFGoldens.quant, "f16_values.input").values(as: Float.self)
        #expect(firstFloatDifference(dequantized(.f16, quantized(.f16, values)), values) == nil)
    }

    @Test func bf16IsRoundToNearestEvenAsFloatConversion() {
        let values = Self.plainInputs
        let bytes = quantized(.bf16, values)
        let expected = values.flatMap { le(FloatConversion.bf16Bits(fromF32: $0.bitPattern)) }
        #expect(firstByteDifference(bytes, expected) == nil)
        // 1 + 2⁻⁸ is a tie that goes to the even 1.0; 1 + 3·2⁻⁸ goes up to 1 + 2⁻⁶.
        #expect(quantized(.bf16, [1.00390625]) == le(UInt16(0x3F80)))
        #expect(quantized(.bf16, [1.01171875]) == le(UInt16(0x3F82)))
    }

    /// gguf-py's NaN rule (`(n & 0xffff0000) | (64 << 16)`, then the rounding): quiet, keeping
    /// the sign and the upper payload.
    @Test func bf16NaNIsMadeQuietKeepingSignAndUpperPayload() {
        let cases: [(UInt32, UInt16)] = [(0x7FC0_0000, 0x7FC0), (0x7F80_0001, 0x7FC0), (0xFF81_2345, 0xFFC1), (0x7FFF_FFFF, 0x7FFF)]
        for (input, output) in cases {
            #expect(quantized(.bf16, [Float(bitPattern: input)]) == le(output), "0x\(String(input, radix: 16))")
        }
    }

    @Test func bf16ValuesRoundTripExactly() {
        let values = GGUFGoldens.tensor(GGUFGoldens.quant, "bf16_values.input").values(as: Float.self)
        let bytes = quantized(.bf16, values)
        #expect(firstFloatDifference(dequantized(.bf16, bytes), values) == nil)
        #expect(bytes == values.flatMap { le(UInt16($0.bitPattern >> 16)) })
    }
}
