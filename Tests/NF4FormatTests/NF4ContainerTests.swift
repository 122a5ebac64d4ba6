import Foundation
import NF4Format
import TensorCore
import Testing
import TestSupport

/// The container: round trips, and every rule of formats/nf4-container.md with a broken file.
struct NF4ContainerTests {
    static func sample(compression: Int32? = nil) throws -> String {
        let path = Fixtures.temporaryFolder() + "/sample.nf4"
        let writer = try NF4Writer(path: path, compressionLevel: compression, metadata: [("format", "pt")])
        let codes = Tensor(dtype: .u8, shape: [2048], values: (0..<2048).map { UInt8($0 % 251) })
        let absmax = Tensor(dtype: .u8, shape: [64], values: (0..<64).map { UInt8($0) })
        let nested = Tensor(dtype: .f32, shape: [1], values: [Float(0.5)])
        try writer.addQuantized(
            name: "layer.weight",
            QuantizedTensor(
                quantType: .nf4, blocksize: 64, shape: [64, 64], originalDType: .bf16, packed: codes,
                absmax: .double(codes: absmax, nestedAbsmax: nested, offset: 0.25, nestedBlocksize: 256)))
        try writer.addPlain(name: "norm.weight", Tensor(dtype: .bf16, shape: [3], values: [UInt16(1), 2, 3]))
        try writer.addPlain(name: "zeros", Tensor(dtype: .f32, shape: [1000], values: [Float](repeating: 0, count: 1000)))
        try writer.addFile(name: "config.json", bytes: Array("{\"a\": 1}\n".utf8))
        try writer.commit()
        return path
    }

    @Test(arguments: [nil, 3] as [Int32?])
    func roundTripsEveryPart(compression: Int32?) throws {
        let file = try NF4File(path: try Self.sample(compression: compression))
        #expect(file.metadata?.map(\.key) == ["format"])
        #expect(file.entries.map(\.name) == ["layer.weight", "norm.weight", "zeros"])
        try file.verifyAll()
        guard case .quantized(let q) = try file.load(file.entries[0]) else { Issue.record("not quantized"); return }
        #expect(q.packed.values(as: UInt8.self) == (0..<2048).map { UInt8($0 % 251) })
        guard case .double(_, _, let offset, _) = q.absmax else { Issue.record("not double-quantized"); return }
        #expect(offset == 0.25 && q.originalDType == .bf16 && q.shape == [64, 64])
        guard case .plain(let zeros) = try file.load(file.entries[2]) else { Issue.record("not plain"); return }
        #expect(zeros.values(as: Float.self) == [Float](repeating: 0, count: 1000))
        #expect(try file.fileBytes("config.json") == Array("{\"a\": 1}\n".utf8))
        if compression != nil, case .plain(let section) = file.entries[2].kind {
            #expect(section.compressed && section.length < 4000)
        }
    }

    /// A sample file with `edit` applied to its bytes.
    static func broken(_ edit: (inout [UInt8]) -> Void) throws -> String {
        let path = try sample()
        var bytes = Fixtures.bytes(path)
        edit(&bytes)
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return path
    }

    /// Replaces the header with `transform(header)`, fixing the trailer so only the change is wrong.
    static func withHeader(_ transform: (String) -> String) throws -> String {
        try broken { bytes in
            let trailer = bytes.count - 32
            let offset = Int(bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: trailer, as: UInt64.self) })
            let length = Int(bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: trailer + 8, as: UInt64.self) })
            let header = Array(transform(String(decoding: bytes[offset..<(offset + length)], as: UTF8.self)).utf8)
            var out = Array(bytes[..<offset]) + header
            for value in [UInt64(offset), UInt64(header.count), XXH64.hash(header)] { out += withUnsafeBytes(of: value) { Array($0) } }
            out += Array("QTOOLNF4".utf8)
            bytes = out
        }
    }

    static let cases: [(String, String, @Sendable () throws -> String)] = [
        ("empty", "truncated", { try broken { $0 = [] } }),
        ("cut in the data", "truncated", { try broken { $0.removeLast(100) } }),
        ("bad magic", "notNF4", { try broken { $0[0] = UInt8(ascii: "X") } }),
        ("version 2", "unsupportedVersion", { try broken { $0[8] = 2 } }),
        ("flags set", "unsupportedVersion", { try broken { $0[12] = 1 } }),
        ("header offset past the end", "truncated", { try broken { $0[$0.count - 26] = 0x7F } }),
        (
            "header byte flipped", "headerChecksumMismatch",
            {
                try broken { bytes in
                    let offset = Int(bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: bytes.count - 32, as: UInt64.self) })
                    bytes[offset + 5] ^= 0x20
                }
            }
        ),
        ("header not JSON", "invalidHeader", { try withHeader { String($0.dropLast()) } }),
        ("wrong format name", "invalidHeader", { try withHeader { $0.replacingOccurrences(of: "qtool-nf4", with: "other") } }),
        ("unknown dtype", "invalidHeader", { try withHeader { $0.replacingOccurrences(of: "\"BF16\"", with: "\"BF17\"") } }),
        (
            "bad blocksize", "invalidHeader",
            { try withHeader { $0.replacingOccurrences(of: "\"blocksize\": 64", with: "\"blocksize\": 48") } }
        ),
        ("duplicate name", "invalidHeader", { try withHeader { $0.replacingOccurrences(of: "\"zeros\"", with: "\"norm.weight\"") } }),
        (
            "section size wrong", "invalidSection",
            { try withHeader { $0.replacingOccurrences(of: "\"size\": 2048", with: "\"size\": 2047") } }
        ),
        (
            "misaligned section", "invalidSection",
            { try withHeader { $0.replacingOccurrences(of: "\"offset\": 64,", with: "\"offset\": 65,") } }
        ),
        (
            "section outside data", "invalidSection",
            { try withHeader { $0.replacingOccurrences(of: "\"offset\": 64,", with: "\"offset\": 6400000,") } }
        ),
        (
            "overlapping sections", "invalidSection",
            { try withHeader { $0.replacingOccurrences(of: "\"offset\": 2112,", with: "\"offset\": 64,") } }
        ),
        ("unknown compression", "invalidSection", { try withHeader { $0.replacingOccurrences(of: "\"none\"", with: "\"lz4\"") } }),
        ("data byte flipped", "checksumMismatch", { try broken { $0[100] ^= 1 } }),
    ]

    @Test(arguments: cases.map { ($0.0, $0.1) })
    func brokenFileIsRefused(_ description: String, _ expected: String) throws {
        let make = Self.cases.first { $0.0 == description }!.2
        let path = try make()
        do {
            let file = try NF4File(path: path)
            try file.verifyAll()
            Issue.record("\(description): accepted")
        } catch let error as NF4Error {
            #expect(Mirror(reflecting: error).children.first?.label == expected, "\(description): \(error.problem)")
            #expect(error.path == path)
        }
    }

    @Test func anAbortedWriteLeavesNothing() throws {
        let folder = Fixtures.temporaryFolder()
        let writer = try NF4Writer(path: folder + "/x.nf4", compressionLevel: nil, metadata: nil)
        try writer.addPlain(name: "a", Tensor(dtype: .u8, shape: [3], values: [UInt8(1), 2, 3]))
        #expect(throws: NF4Error.self) { try writer.addPlain(name: "a", Tensor(dtype: .u8, shape: [1], values: [UInt8(1)])) }
        writer.abort()
        #expect(Fixtures.listing(folder).isEmpty)
    }
}
