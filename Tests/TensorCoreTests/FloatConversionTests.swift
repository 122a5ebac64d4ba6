import SafetensorsFormat
import Testing
import TestSupport

@testable import TensorCore

/// Casts against torch's own `.to()` (fixtures/casts, made by fixtures/generate/safetensors_goldens.py).
struct FloatConversionTests {
    static let goldens = try! SafeTensorsFile(path: Fixtures.path("casts/torch-casts.safetensors")).tensors()
    static let sources = [
        "f32", "f16", "bf16", "f64", "f16_tail", "f64_tail", "f8_e4m3", "f8_e5m2", "f8_e4m3fnuz", "f8_e5m2fnuz", "f8_e8m0",
    ]
    static let targets: [(String, DType)] = [("f32", .f32), ("f16", .f16), ("bf16", .bf16)]

    static var cases: [String] {
        var names: [String] = []
        for source in sources {
            names.append(source)
            for i in 0..<4 where goldens["\(source).scalar\(i)"] != nil { names.append("\(source).scalar\(i)") }
        }
        return names
    }

    @Test(arguments: cases)
    func castEqualsTorchBitForBit(sourceName: String) throws {
        let source = try #require(Self.goldens[sourceName])
        for (targetName, target) in Self.targets {
            let expected = try #require(Self.goldens["\(sourceName).to_\(targetName)"])
            let cast = try #require(CastTensor(source, to: target))
            var produced: [UInt8] = []
            try cast.stream(chunkBytes: 4096) { produced.append(contentsOf: $0) }
            let wanted = expected.withBytes { Array($0) }
            let width = target.bitSize / 8
            var mismatches: [String] = []
            for i in stride(from: 0, to: min(produced.count, wanted.count), by: width)
            where produced[i..<(i + width)] != wanted[i..<(i + width)] {
                mismatches.append("element \(i / width): got \(hex(produced[i..<(i + width)])) want \(hex(wanted[i..<(i + width)]))")
                if mismatches.count >= 5 { break }
            }
            #expect(produced.count == wanted.count, "\(sourceName) → \(targetName): size")
            #expect(mismatches.isEmpty, "\(sourceName) → \(targetName): \(mismatches.joined(separator: "; "))")
        }
    }

    @Test func chunkingAndThreadsDoNotChangeTheResult() throws {
        let source = try #require(Self.goldens["f32"])
        func run(chunk: Int, threads: Int) throws -> [UInt8] {
            var out: [UInt8] = []
            try CastTensor(source, to: .bf16, threads: threads)!.stream(chunkBytes: chunk) { out.append(contentsOf: $0) }
            return out
        }
        let reference = try run(chunk: 1 << 20, threads: 1)
        #expect(try run(chunk: 12, threads: 2) == reference)
        #expect(try run(chunk: 4000, threads: 2) == reference)
    }

    @Test func integerAndSubByteTypesAreNotCast() {
        let ints = Tensor(dtype: .i32, shape: [2], values: [Int32(1), 2])
        #expect(CastTensor(ints, to: .bf16) == nil)
        #expect(!FloatConversion.canConvert(from: .f4, to: .f32))
        #expect(FloatConversion.canConvert(from: .f8E4M3, to: .bf16))
    }

    private func hex(_ bytes: ArraySlice<UInt8>) -> String {
        "0x" + bytes.reversed().map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
    }
}
