import Foundation
import Testing
import TestSupport

@testable import TensorCore

struct XXH64Tests {
    /// Digests from the xxhash library (fixtures/generate/checksum_goldens.py).
    @Test func matchesTheXXHashLibrary() throws {
        let json = try JSONParser.parse(String(contentsOfFile: Fixtures.path("nf4/xxh64.json"), encoding: .utf8))
        let cases = try #require(json["cases"]?.arrayValues)
        #expect(cases.count > 10)
        for item in cases {
            let length = try #require(item["length"]?.integerValue)
            let bytes = (0..<length).map { UInt8(($0 * 31 + 7) & 0xFF) }
            #expect(XXH64.hash(bytes).hexDigits == item["xxh64"]?.stringValue, "length \(length)")
            // Fed in uneven pieces, the digest is the same.
            var state = XXH64()
            var offset = 0
            var step = 1
            while offset < length {
                let end = min(length, offset + step)
                bytes[offset..<end].withUnsafeBytes { state.update($0) }
                offset = end
                step = step * 3 % 37 + 1
            }
            #expect(state.finalize().hexDigits == item["xxh64"]?.stringValue)
        }
    }
}
