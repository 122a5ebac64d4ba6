import GGUFFormat
import TensorCore
import Testing
import TestSupport

/// GGMLType's ids, names and block layouts against gguf-py's GGML_QUANT_SIZES
/// (fixtures/gguf/type-sizes.json).
struct GGMLTypeTests {
    struct Row: Sendable, CustomTestStringConvertible {
        let name: String
        let id: UInt32
        let blockSize: Int
        let typeSize: Int
        var testDescription: String { name }
    }

    static let table: [Row] = {
        let json = try! JSONParser.parse(String(decoding: Fixtures.bytes(GGUFGoldens.path("type-sizes.json")), as: UTF8.self))
        return json["types"]!.arrayValues!.map {
            Row(
                name: $0["name"]!.stringValue!, id: UInt32($0["id"]!.integerValue!), blockSize: $0["block_size"]!.integerValue!,
                typeSize: $0["type_size"]!.integerValue!)
        }
    }()

    @Test(arguments: table)
    func layoutIsGGUFPys(_ row: Row) throws {
        let type = try #require(GGMLType(rawValue: row.id), "ggml type \(row.id) (\(row.name)) is unknown to qtool")
        #expect(type.description == row.name)
        #expect(type.blockSize == row.blockSize)
        // gguf-py 0.17.1 lists Q8_1 as (32, 40), but ggml's block_q8_1 is 36 bytes (f16 d, f16 s,
        // 32 int8): qtool follows ggml, the format's owner.
        if type == .q8_1 {
            #expect(type.typeSize == 36)
        } else {
            #expect(type.typeSize == row.typeSize)
        }
        #expect(type.isQuantized == (row.blockSize > 1))
    }

    /// Every type qtool knows is in gguf-py's table, but MXFP4 (ggml type 39), which gguf-py
    /// 0.17.1 predates.
    @Test func everyTypeQtoolKnowsIsInTheTable() {
        let ids = Set(Self.table.map(\.id))
        let missing = GGMLType.allCases.filter { !ids.contains($0.rawValue) }
        #expect(missing == [.mxfp4])
        #expect(GGMLType.mxfp4.blockSize == 32 && GGMLType.mxfp4.typeSize == 17)
    }

    @Test func byteCountChecksBlocksAndOverflow() {
        #expect(GGMLType.q8_0.byteCount(dimensions: [64, 3]) == 2 * 34 * 3)
        #expect(GGMLType.q8_0.byteCount(dimensions: [48, 3]) == nil)
        #expect(GGMLType.f32.byteCount(dimensions: [5]) == 20)
        #expect(GGMLType.f32.byteCount(dimensions: [0, 7]) == 0)
        #expect(GGMLType.f32.byteCount(dimensions: [1 << 40, 1 << 40]) == nil)
        #expect(GGMLType.f32.byteCount(dimensions: [1 << 62]) == nil)
        #expect(GGMLType.f32.byteCount(dimensions: [-1, 2]) == nil)
        // A zero dimension does not hide an element count that overflows.
        #expect(GGMLType.f32.byteCount(dimensions: [1 << 40, 1 << 40, 0]) == nil)
        #expect(GGMLType.q8_0.byteCount(dimensions: [1 << 40, 1 << 30, 0]) == nil)
        #expect(GGMLType.f32.byteCount(dimensions: [0, 1 << 40, 1 << 40]) == nil)
        #expect(GGMLType.f32.byteCount(dimensions: [0, 1 << 40, 1 << 20]) == 0)
    }

    @Test func plainTypesMapToTensorTypes() {
        for type in GGMLType.allCases {
            if let dtype = type.plainDType {
                #expect(GGMLType(plain: dtype) == type)
                #expect(type.blockSize == 1 && type.typeSize * 8 == dtype.bitSize)
            }
        }
        #expect(GGMLType.allCases.filter(\.isWritable) == [.f32, .f16, .q4_0, .q8_0, .bf16])
    }
}
