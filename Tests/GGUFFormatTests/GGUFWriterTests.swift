import Foundation
import GGUFFormat
import TensorCore
import Testing
import TestSupport

/// GGUFWriter: gguf-py's files written again byte for byte, encoded payloads read back, and
/// every refusal leaving nothing behind.
struct GGUFWriterTests {
    /// Reads `name` and writes it back with the same metadata, tensor plans, data and alignment.
    static func rewrite(_ name: String, to path: String) throws {
        let file = try GGUFFile(path: GGUFGoldens.path(name))
        let plans = file.tensors.map { GGUFTensorPlan(name: $0.name, dimensions: $0.dimensions, type: $0.type) }
        let writer = try GGUFWriter(path: path, metadata: file.metadata, tensors: plans, alignment: file.alignment)
        for info in file.tensors { try writer.writeTensor(file.rawTensor(info)) }
        try writer.commit()
    }

    @Test(arguments: ["metadata.gguf", "metadata-align64.gguf", "metadata-arrays.gguf"])
    func rewritesGGUFPysFilesByteForByte(_ name: String) throws {
        let folder = Fixtures.temporaryFolder()
        let path = folder + "/" + name
        try Self.rewrite(name, to: path)
        #expect(firstByteDifference(Fixtures.bytes(path), Fixtures.bytes(GGUFGoldens.path(name))) == nil)
        #expect(Fixtures.listing(folder) == [name])
    }

    static let rowOrders: [[Int]?] = [nil, [2, 0, 3, 1, 5, 4]]

    /// A float32 source [6, 64] encoded as each written type (rows reordered or not), through the
    /// writer and the reader: the stored bytes are GGMLBlocks.quantize's of the source rows in
    /// that order, and the tensor read back is their dequantization.
    @Test(arguments: [GGMLType.f32, .f16, .bf16, .q8_0, .q4_0], rowOrders)
    func encodedPayloadRoundTrips(_ type: GGMLType, _ rowOrder: [Int]?) throws {
        let rows = 6
        let columns = 64
        let values = (0..<(rows * columns)).map { Float(sin(Double($0) * 0.37)) * Float(1 + $0 % 7) }
        let source = Tensor(dtype: .f32, shape: [rows, columns], values: values)
        let order = rowOrder ?? Array(0..<rows)
        let ordered = order.flatMap { values[($0 * columns)..<(($0 + 1) * columns)] }
        let expectedBytes = quantized(type, ordered)

        let payload = GGMLEncodedPayload(source, as: type, rowOrder: rowOrder)
        #expect(payload.byteCount == expectedBytes.count)
        // Streamed in small chunks, the bytes are the same.
        var streamed: [UInt8] = []
        try payload.stream(chunkBytes: 100) { streamed += $0 }
        #expect(firstByteDifference(streamed, expectedBytes) == nil)

        let folder = Fixtures.temporaryFolder()
        let path = folder + "/out.gguf"
        var metadata = GGUFMetadata()
        metadata["general.architecture"] = .string("llama")
        let bias = Tensor(dtype: .f32, shape: [5], values: [Float(1), 2, 3, 4, 5])
        let writer = try GGUFWriter(
            path: path, metadata: metadata,
            tensors: [GGUFTensorPlan(name: "bias", shape: [5], type: .f32), GGUFTensorPlan(name: "w", shape: [rows, columns], type: type)])
        try writer.writeTensor(bias)
        try writer.writeTensor(payload)
        try writer.commit()

        let file = try GGUFFile(path: path)
        #expect(file.version == 3 && file.alignment == 32)
        #expect(file.metadata.entries.map(\.key) == ["general.architecture"])
        #expect(file.tensors.map(\.name) == ["bias", "w"])
        #expect(file.tensors[0].offset == 0 && file.tensors[1].offset == 32)
        let info = try #require(file.info("w"))
        #expect(info.type == type && info.dimensions == [columns, rows] && info.shape == [rows, columns])
        #expect(firstByteDifference(file.rawTensor(info).values(as: UInt8.self), expectedBytes) == nil)
        #expect(firstFloatDifference(floats(try file.tensor(info)), dequantized(type, expectedBytes)) == nil)
        #expect(floats(try file.tensor(file.tensors[0])) == [1, 2, 3, 4, 5])
        if type == .f32 { #expect(floats(try file.tensor(info)) == ordered) }
        #expect(Fixtures.listing(folder) == ["out.gguf"])
    }

    /// bf16 into BF16 is copied bit for bit, NaN payloads included (no float32 detour).
    @Test(arguments: rowOrders)
    func bf16IsCopiedAsItIs(_ rowOrder: [Int]?) throws {
        let bits: [UInt16] = (0..<(6 * 32)).map { UInt16(truncatingIfNeeded: $0 &* 2654435761 >> 7) | ($0 % 5 == 0 ? 0x7F81 : 0) }
        let source = Tensor(dtype: .bf16, shape: [6, 32], values: bits)
        let order = rowOrder ?? Array(0..<6)
        var streamed: [UInt8] = []
        try GGMLEncodedPayload(source, as: .bf16, rowOrder: rowOrder).stream(chunkBytes: 64) { streamed += $0 }
        #expect(streamed == order.flatMap { bits[($0 * 32)..<(($0 + 1) * 32)] }.flatMap { le($0) })
    }

    @Test func alignmentIsRecordedAndHonoured() throws {
        let folder = Fixtures.temporaryFolder()
        let path = folder + "/aligned.gguf"
        let writer = try GGUFWriter(
            path: path, metadata: GGUFMetadata([("general.architecture", .string("llama"))]),
            tensors: [GGUFTensorPlan(name: "a", shape: [3], type: .f32), GGUFTensorPlan(name: "b", shape: [3], type: .f32)], alignment: 128)
        try writer.writeTensor(Tensor(dtype: .f32, shape: [3], values: [Float(1), 2, 3]))
        try writer.writeTensor(Tensor(dtype: .f32, shape: [3], values: [Float(4), 5, 6]))
        try writer.commit()
        let file = try GGUFFile(path: path)
        #expect(file.metadata["general.alignment"] == .uint32(128))
        #expect(file.alignment == 128 && file.dataStart % 128 == 0)
        #expect(file.tensors.map(\.offset) == [0, 128])
        #expect(file.mapping.count == file.dataStart + 256)
    }

    // MARK: Refusals

    /// What a refused write leaves: the error, and the folder's listing afterwards.
    static func refusal(
        metadata: GGUFMetadata = GGUFMetadata([("general.architecture", .string("llama"))]), tensors: [GGUFTensorPlan],
        alignment: Int = 32, payloads: [any TensorPayload] = [], commit: Bool = false
    ) -> (error: GGUFError?, path: String, listing: [String]) {
        let folder = Fixtures.temporaryFolder()
        let path = folder + "/out.gguf"
        var refused: GGUFError?
        do {
            let writer = try GGUFWriter(path: path, metadata: metadata, tensors: tensors, alignment: alignment)
            for payload in payloads { try writer.writeTensor(payload) }
            if commit { try writer.commit() }
        } catch let error as GGUFError {
            refused = error
        } catch {
            Issue.record("not a GGUFError: \(error)")
        }
        return (refused, path, Fixtures.listing(folder))
    }

    static let f32x4 = Tensor(dtype: .f32, shape: [4], values: [Float](repeating: 1, count: 4))

    static let refusals: [(String, @Sendable () -> (error: GGUFError?, path: String, listing: [String]))] = [
        (
            "duplicate tensor names",
            { refusal(tensors: [GGUFTensorPlan(name: "a", shape: [4], type: .f32), GGUFTensorPlan(name: "a", shape: [4], type: .f32)]) }
        ),
        ("a name of 64 bytes", { refusal(tensors: [GGUFTensorPlan(name: String(repeating: "n", count: 64), shape: [4], type: .f32)]) }),
        (
            "a name of 64 UTF-8 bytes",
            { refusal(tensors: [GGUFTensorPlan(name: String(repeating: "é", count: 32), shape: [4], type: .f32)]) }
        ),
        ("an empty name", { refusal(tensors: [GGUFTensorPlan(name: "", shape: [4], type: .f32)]) }),
        ("a row of 48 as Q8_0", { refusal(tensors: [GGUFTensorPlan(name: "w", shape: [2, 48], type: .q8_0)]) }),
        ("a row of 33 as Q4_0", { refusal(tensors: [GGUFTensorPlan(name: "w", dimensions: [33], type: .q4_0)]) }),
        ("no dimensions", { refusal(tensors: [GGUFTensorPlan(name: "w", dimensions: [], type: .f32)]) }),
        ("five dimensions", { refusal(tensors: [GGUFTensorPlan(name: "w", dimensions: [1, 1, 1, 1, 1], type: .f32)]) }),
        ("a negative dimension", { refusal(tensors: [GGUFTensorPlan(name: "w", dimensions: [4, -1], type: .f32)]) }),
        ("a size that overflows", { refusal(tensors: [GGUFTensorPlan(name: "w", dimensions: [1 << 40, 1 << 40], type: .f32)]) }),
        (
            "mixed array elements",
            { refusal(metadata: GGUFMetadata([("x", .array(.int32, [.int32(1), .uint8(2)]))]), tensors: []) }
        ),
        (
            "mixed elements in a nested array",
            {
                refusal(
                    metadata: GGUFMetadata([("x", .array(.array, [.array(.string, [.string("a")]), .array(.string, [.bool(true)])]))]),
                    tensors: [])
            }
        ),
        ("alignment 48", { refusal(tensors: [], alignment: 48) }),
        ("alignment 0", { refusal(tensors: [], alignment: 0) }),
        ("alignment 2 MiB (the reader's limit is 1 MiB)", { refusal(tensors: [], alignment: 1 << 21) }),
        ("alignment 2^32", { refusal(tensors: [], alignment: 1 << 32) }),
        (
            "a payload too small",
            { refusal(tensors: [GGUFTensorPlan(name: "w", shape: [8], type: .f32)], payloads: [f32x4]) }
        ),
        (
            "a payload too large",
            { refusal(tensors: [GGUFTensorPlan(name: "w", shape: [2], type: .f32)], payloads: [f32x4]) }
        ),
        (
            "a payload encoded to the wrong size",
            {
                refusal(
                    tensors: [GGUFTensorPlan(name: "w", shape: [2, 64], type: .q8_0)],
                    payloads: [
                        GGMLEncodedPayload(Tensor(dtype: .f32, shape: [1, 64], values: [Float](repeating: 0, count: 64)), as: .q8_0)
                    ])
            }
        ),
        (
            "a payload after the last plan",
            { refusal(tensors: [GGUFTensorPlan(name: "w", shape: [4], type: .f32)], payloads: [f32x4, f32x4]) }
        ),
        ("a commit before every tensor", { refusal(tensors: [GGUFTensorPlan(name: "w", shape: [4], type: .f32)], commit: true) }),
    ]

    @Test(arguments: refusals.map(\.0))
    func refusesAndLeavesNothing(_ description: String) throws {
        let result = Self.refusals.first { $0.0 == description }!.1()
        let error = try #require(result.error, "\(description): written")
        #expect(caseName(error) == "cannotWrite", "\(description): \(error)")
        #expect(error.path == result.path)
        #expect(error.description.hasPrefix(result.path + ": "))
        // No file at the destination, no temporary beside it.
        #expect(result.listing == [], "\(description)")
    }
}
