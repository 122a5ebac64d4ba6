import Foundation
import GGUFFormat
import TestSupport
import Testing

/// Metadata arrays are held as values: the reader refuses more elements in a file than its limit
/// (a 17 MB file of u8 arrays would otherwise cost gigabytes) before allocating them.
struct GGUFLimitTests {
    @Test func arrayElementsBeyondTheLimitAreRefused() throws {
        let count = GGUFFile.mostArrayElements / 2 + 1
        var bytes = Array("GGUF".utf8) + le(UInt32(3)) + le(UInt64(0)) + le(UInt64(2))
        for key in ["a.first", "a.second"] {
            bytes += ggufString(key) + le(UInt32(9)) + le(UInt32(0)) + le(UInt64(count)) + [UInt8](repeating: 1, count: count)
        }
        let path = Fixtures.temporaryFolder() + "/many.gguf"
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        do {
            _ = try GGUFFile(path: path)
            Issue.record("accepted \(2 * count) array elements")
        } catch let error as GGUFError {
            #expect(caseName(error) == "invalidMetadata")
            #expect(error.description.hasPrefix(path) && error.description.contains("a.second"), "\(error)")
        }
    }
}
