import Quantization
import SafetensorsFormat
import TensorCore
import Testing
import TestSupport

/// The quantizer against bitsandbytes' own output (fixtures/bnb, made by fixtures/generate/bnb_goldens.py).
struct QuantizerGoldenTests {
    static let goldens = try! SafeTensorsFile(path: Fixtures.path("bnb/quantize-goldens.safetensors")).tensors()

    /// `<case>.<qt>.b<bs>` prefixes present in the goldens.
    static let keys: [String] = goldens.names.filter { $0.hasSuffix(".dq.offset") }.map { String($0.dropLast(".dq.offset".count)) }

    static func parse(_ key: String) -> (input: Tensor, type: QuantType, blocksize: Int) {
        let parts = key.split(separator: ".")
        let blocksize = Int(parts[parts.count - 1].dropFirst())!
        let type = QuantType(rawValue: String(parts[parts.count - 2]))!
        let name = parts.dropLast(2).joined(separator: ".")
        return (goldens[name + ".input"]!, type, blocksize)
    }

    static func bytes(_ name: String) -> [UInt8] { goldens[name]!.withBytes { Array($0) } }
    static func floats(_ name: String) -> [Float] { goldens[name]!.values(as: Float.self) }

    static func quantize(_ key: String, variant: BlockwiseQuantizer.Variant = .fastest) throws -> BlockwiseQuantization {
        let (input, type, blocksize) = parse(key)
        return try input.withBytes { raw in
            try BlockwiseQuantizer.quantize(
                raw.baseAddress!, dtype: input.dtype, count: input.elementCount, blocksize: blocksize, type: type, variant: variant)
        }
    }

    /// The portable kernel, and the AVX-512 one where this CPU runs it.
    static let variants: [BlockwiseQuantizer.Variant] = BlockwiseQuantizer.Variant.fastest == .avx512 ? [.portable, .avx512] : [.portable]

    @Test func everyCaseIsPresent() {
        #expect(Self.keys.count >= 60)
        #expect(Set(Self.keys.map { Self.parse($0).blocksize }) == Set(BlockwiseQuantizer.validBlocksizes))
    }

    @Test(arguments: keys)
    func codesAndAbsmaxAreBitExact(_ key: String) throws {
        for variant in Self.variants {
            let result = try Self.quantize(key, variant: variant)
            let expected = Self.bytes(key + ".codes")
            #expect(
                result.packed == expected,
                "\(variant) codes: first differing byte \(String(describing: result.packed.indices.first { $0 >= expected.count || result.packed[$0] != expected[$0] }))"
            )
            #expect(result.absmax.map(\.bitPattern) == Self.floats(key + ".absmax").map(\.bitPattern), "\(variant) absmax")
        }
    }

    @Test(arguments: keys)
    func referenceKernelAgrees(_ key: String) throws {
        let (input, type, blocksize) = Self.parse(key)
        let values = try #require(CastTensor(input, to: .f32)).collect().withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        let reference = try BlockwiseQuantizer.quantizeReference(values, blocksize: blocksize, type: type)
        let fast = try Self.quantize(key)
        #expect(reference.packed == fast.packed)
        #expect(reference.absmax.map(\.bitPattern) == fast.absmax.map(\.bitPattern))
    }

    @Test(arguments: keys)
    func doubleQuantizationMatches(_ key: String) throws {
        let first = try Self.quantize(key)
        let golden = Self.floats(key + ".dq.offset")[0]
        let ours = DoubleQuantizedAbsmax.quantize(first.absmax)
        // The offset is torch's float32 mean: within a few ulp.
        #expect(abs(ours.offset - golden) <= 4 * golden.ulp, "offset \(ours.offset) vs \(golden)")
        // Given bitsandbytes' offset, the nested codes and scales are exact.
        let exact = DoubleQuantizedAbsmax.quantize(first.absmax, offset: golden)
        #expect(exact.codes == Self.bytes(key + ".dq.nested_codes"), "nested codes")
        #expect(exact.nestedAbsmax.map(\.bitPattern) == Self.floats(key + ".dq.nested_absmax").map(\.bitPattern))
    }

    @Test(arguments: keys)
    func dequantizeEqualsBitsandbytes(_ key: String) throws {
        let (input, type, blocksize) = Self.parse(key)
        let state = DoubleQuantizedAbsmax(
            codes: Self.bytes(key + ".dq.nested_codes"), nestedAbsmax: Self.floats(key + ".dq.nested_absmax"),
            offset: Self.floats(key + ".dq.offset")[0])
        let absmax = state.dequantize()
        let packed = Self.bytes(key + ".dq.codes")
        for (name, dtype) in [("f32", DType.f32), ("bf16", .bf16), ("f16", .f16)] {
            let expected = Self.bytes(key + ".dequant." + name)
            var out = [UInt8](repeating: 0, count: input.elementCount * dtype.bitSize / 8)
            packed.withUnsafeBytes { p in
                out.withUnsafeMutableBytes { o in
                    Dequantizer.dequantize(
                        packed: p.baseAddress!, absmax: absmax, shape: input.shape, blocksize: blocksize, type: type,
                        into: o.baseAddress!, dtype: dtype)
                }
            }
            let firstWrong = out.indices.first { $0 >= expected.count || out[$0] != expected[$0] }
            #expect(out.count == expected.count && firstWrong == nil, "\(name): first differing byte \(String(describing: firstWrong))")
        }
    }

    @Test(arguments: ["noise", "ramp"])
    func eightBitBlockwiseFollowsTheCPUKernel(_ name: String) throws {
        let input = Self.floats("blockwise8.\(name).input")
        let (codes, absmax) = DynamicBlockwise8Bit.quantize(input, blocksize: 256)
        let expected = Self.bytes("blockwise8.\(name).codes")
        let wrong = zip(codes, expected).enumerated().filter { $0.element.0 != $0.element.1 }.prefix(5)
        #expect(wrong.isEmpty, "\(Array(wrong))")
        #expect(absmax.map(\.bitPattern) == Self.floats("blockwise8.\(name).absmax").map(\.bitPattern))
    }

    @Test func dynamicMapIsBitsandbytesOwn() {
        #expect(DynamicMap.values.map(\.bitPattern) == Self.floats("dynamic_map").map(\.bitPattern))
    }
}

extension TensorPayload {
    /// All the payload's bytes.
    func collect() throws -> [UInt8] {
        var out: [UInt8] = []
        try stream(chunkBytes: 1 << 20) { out.append(contentsOf: $0) }
        return out
    }
}
