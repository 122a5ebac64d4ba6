import SafetensorsFormat
import TensorCore
import Testing
import TestSupport

/// One malformed file per validation rule (fixtures/generate/malformed.py); each is refused with
/// the error that names its problem.
struct MalformedFileTests {
    static let cases: [(file: String, expected: String)] = [
        ("empty.safetensors", "fileTooSmall"),
        ("too-short.safetensors", "fileTooSmall"),
        ("truncated-header.safetensors", "headerPastEnd"),
        ("truncated-data.safetensors", "dataPastEnd"),
        ("huge-header-length.safetensors", "headerTooLarge"),
        ("header-over-limit.safetensors", "headerTooLarge"),
        ("bad-json.safetensors", "headerNotJSON"),
        ("trailing-comma.safetensors", "headerNotJSON"),
        ("deep-nesting.safetensors", "headerNotJSON"),
        ("not-an-object.safetensors", "headerNotObject"),
        ("invalid-utf8.safetensors", "headerNotUTF8"),
        ("unknown-dtype.safetensors", "unknownDType"),
        ("size-mismatch.safetensors", "sizeMismatch"),
        ("overlapping-offsets.safetensors", "overlappingOffsets"),
        ("gap-in-offsets.safetensors", "gapBeforeTensor"),
        ("out-of-range-offsets.safetensors", "dataPastEnd"),
        ("far-out-of-range-offsets.safetensors", "gapBeforeTensor"),
        ("trailing-data.safetensors", "trailingData"),
        ("reversed-offsets.safetensors", "invalidEntry"),
        ("non-string-metadata.safetensors", "invalidMetadata"),
        ("metadata-not-object.safetensors", "invalidMetadata"),
        ("duplicate-names.safetensors", "duplicateTensor"),
        ("shape-overflow.safetensors", "shapeOverflow"),
        ("negative-dimension.safetensors", "invalidEntry"),
        ("fractional-dimension.safetensors", "invalidEntry"),
        ("missing-offsets.safetensors", "invalidEntry"),
        ("unknown-field.safetensors", "invalidEntry"),
        ("entry-not-object.safetensors", "invalidEntry"),
        ("misaligned-subbyte.safetensors", "shapeOverflow"),
        ("index-missing-shard", "missingShard"),
        ("index-wrong-shard", "tensorMissingFromShard"),
        ("index-bad-json", "invalidIndex"),
        ("index-no-weight-map", "invalidIndex"),
        ("index-path-escape", "invalidIndex"),
        ("index-duplicate-tensor", "tensorInTwoShards"),
        ("index-bad-shard", "headerPastEnd"),
        ("no-weights", "noWeights"),
    ]

    @Test(arguments: cases)
    func isRefusedWithItsOwnError(_ file: String, _ expected: String) throws {
        let path = Fixtures.path("malformed/" + file)
        do {
            _ = try SafeTensorsModel(path: path).tensors()
            Issue.record("\(file) was accepted")
        } catch let error as SafeTensorsError {
            let caseName = Mirror(reflecting: error).children.first?.label ?? ""
            #expect(caseName == expected, "\(file): \(error.problem)")
            #expect(error.path.hasPrefix(path), "the error names the file")
        }
    }

    @Test func everyMalformedFixtureIsCovered() throws {
        let listed = Set(Self.cases.map(\.file))
        let present = Set(Fixtures.listing(Fixtures.path("malformed")).filter { !$0.hasSuffix(".json") })
        #expect(present == listed)
    }
}
