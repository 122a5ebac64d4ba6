import Foundation
import SafetensorsFormat
import TensorCore
import Testing
import TestSupport

/// Files written by the reference library (fixtures/generate/*.py) rewrite to identical bytes.
struct SafeTensorsRoundTripTests {
    static let referenceFiles = [
        "safetensors/reference-all-dtypes.safetensors",
        "safetensors/reference-names.safetensors",
        "safetensors/reference-metadata.safetensors",
        "safetensors/reference-empty.safetensors",
        "safetensors/reference-empty-metadata.safetensors",
        "safetensors/tiny-llama-f32.safetensors",
        "safetensors/tiny-llama-f32.to_bf16.safetensors",
        "tiny-llama/model.safetensors",
        "tiny-llama-sharded/model-00001-of-00003.safetensors",
        "casts/torch-casts.safetensors",
    ]

    @Test(arguments: referenceFiles)
    func rewriteGivesIdenticalBytes(_ relative: String) throws {
        let path = Fixtures.path(relative)
        let tensors = try SafeTensorsFile(path: path).tensors()
        let out = Fixtures.temporaryFolder() + "/out.safetensors"
        // Hand the tensors over in reverse: the writer's order must not depend on the input's.
        let items = tensors.entries.reversed().map { SafeTensorsWriter.Item(name: $0.name, payload: $0.tensor) }
        try SafeTensorsWriter.write(items, metadata: tensors.metadata, toFile: out)
        #expect(Fixtures.bytes(out) == Fixtures.bytes(path))
    }

    @Test func readsEveryDTypeWithShapesAndValues() throws {
        let tensors = try SafeTensorsFile(path: Fixtures.path("safetensors/reference-all-dtypes.safetensors")).tensors()
        #expect(tensors.count == 22)
        #expect(tensors.metadata?.map(\.key) == ["format"])
        let scalar = try #require(tensors["scalar"])
        #expect(scalar.shape.rank == 0 && scalar.dtype == .f32 && scalar.values(as: Float.self) == [3.5])
        let empty = try #require(tensors["empty"])
        #expect(empty.shape == [0, 3] && empty.byteCount == 0)
        #expect(tensors["vector"]?.values(as: Int64.self) == Array(0..<10))
        for dtype in ["F8_E8M0", "F8_E4M3FNUZ", "C64", "BOOL", "U64"] {
            #expect(tensors.entries.contains { $0.tensor.dtype.rawValue == dtype }, "\(dtype) present")
        }
    }

    @Test func namesNeedingEscapesSurviveTheRoundTrip() throws {
        let tensors = try SafeTensorsFile(path: Fixtures.path("safetensors/reference-names.safetensors")).tensors()
        #expect(tensors["quote\"back\\slash"] != nil)
        #expect(tensors["tab\tnew\nline\u{01}ctl\u{7F}del"] != nil)
        #expect(tensors["ünïcödé.权重.🦙"] != nil)
    }

    @Test func leadingWhitespaceInHeaderIsAccepted() throws {
        let tensors = try SafeTensorsFile(path: Fixtures.path("safetensors/leading-space-header.safetensors")).tensors()
        #expect(tensors.names == ["a", "b"])
    }

    @Test func shardedFolderReadsBackEqualToTheSingleFile() throws {
        let single = try SafeTensorsModel(path: Fixtures.path("tiny-llama")).tensors()
        let sharded = try SafeTensorsModel(path: Fixtures.path("tiny-llama-sharded"))
        #expect(sharded.isSharded && sharded.shards.count == 3)
        let shardedTensors = sharded.tensors()
        #expect(Set(shardedTensors.names) == Set(single.names))
        for name in single.names {
            #expect(shardedTensors[name]!.isIdentical(to: single[name]!), "\(name)")
        }
    }

    @Test func indexTextMatchesTransformers() throws {
        let folder = Fixtures.path("tiny-llama-sharded")
        let model = try SafeTensorsModel(path: folder)
        var weightMap: [(tensor: String, file: String)] = []
        var size = 0
        var parameters = 0
        for (file, shard) in zip(model.shardNames, model.shards) {
            for entry in shard.header.entries {
                weightMap.append((entry.name, file))
                size += entry.dataRange.count
                parameters += entry.shape.elementCount
            }
        }
        let text = ShardedWriter.indexText(weightMap: weightMap, totalSize: size, totalParameters: parameters)
        #expect(Array(text.utf8) == Fixtures.bytes(folder + "/model.safetensors.index.json"))
    }

    @Test func writingShardsAndReadingThemBack() throws {
        let source = try SafeTensorsModel(path: Fixtures.path("tiny-llama")).tensors()
        let items = source.entries.map { SafeTensorsWriter.Item(name: $0.name, payload: $0.tensor) }
        let plan = ShardedWriter.planShards(byteCounts: items.map(\.payload.byteCount), maxShardSize: 600_000)
        #expect(plan.count > 2)
        let folder = Fixtures.temporaryFolder() + "/model"
        let transaction = try FolderOutputTransaction(folder: folder)
        try ShardedWriter.write(shards: plan.map { $0.map { items[$0] } }, metadata: source.metadata, into: transaction)
        try transaction.commit()
        let back = try SafeTensorsModel(path: folder)
        #expect(back.shards.count == plan.count)
        #expect(back.shardNames.first == "model-00001-of-0000\(plan.count).safetensors")
        let tensors = back.tensors()
        for name in source.names { #expect(tensors[name]!.isIdentical(to: source[name]!)) }
        #expect(!Fixtures.listing(folder).contains { $0.hasPrefix(".") }, "no temporary files left")
    }

    /// huggingface_hub's splitting rule: in order, new shard when the next tensor would pass the
    /// limit; a tensor over the limit alone, where it is met.
    @Test func shardPlanFollowsHuggingFaceHub() {
        #expect(ShardedWriter.planShards(byteCounts: [6, 6, 2, 6, 2, 2], maxShardSize: 10) == [[0], [1, 2], [3, 4, 5]])
        #expect(ShardedWriter.planShards(byteCounts: [3, 12, 3, 3], maxShardSize: 10) == [[1], [0, 2, 3]])
        #expect(ShardedWriter.planShards(byteCounts: [], maxShardSize: 10) == [])
    }

    @Test func recognizesOnlyItsOwnWeightFiles() {
        #expect(ShardedWriter.isModelWeightFile("model-00002-of-00005.safetensors"))
        #expect(ShardedWriter.isModelWeightFile("model.safetensors") && ShardedWriter.isModelWeightFile("model.safetensors.index.json"))
        #expect(!ShardedWriter.isModelWeightFile("adapter_model.safetensors"))
        #expect(!ShardedWriter.isModelWeightFile("model-2-of-5.safetensors"))
        #expect(!ShardedWriter.isModelWeightFile("diffusion_model.safetensors"))
    }

    @Test(arguments: [
        ("5GB", 5_000_000_000), ("500MB", 500_000_000), ("2GiB", 2_147_483_648), ("1.5KB", 1500), ("123", 123),
        (" 10 MB ", 10_000_000), ("4kib", 4096), ("7B", 7),
    ])
    func parsesShardSizes(_ text: String, _ bytes: Int) {
        #expect(ShardedWriter.parseSize(text) == bytes)
    }

    @Test(arguments: ["", "abc", "-5MB", "0", "5XB", "1e30GB"])
    func rejectsBadShardSizes(_ text: String) {
        #expect(ShardedWriter.parseSize(text) == nil)
    }
}
