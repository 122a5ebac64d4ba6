import Foundation
import SafetensorsFormat
import TensorCore
import Testing
import TestSupport

/// The built `qtool` binary, run as a user runs it.
struct CommandLineTests {
    let model = Fixtures.path("tiny-llama")

    @Test func versionAndHelpListEveryCommandWithAnExample() throws {
        let version = try QToolBinary.run(["--version"])
        #expect(version.status == 0 && version.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "0.1.0")
        let help = try QToolBinary.run(["help"])
        #expect(help.status == 0)
        for command in [
            "inspect", "convert", "quantize", "dequantize", "merge", "tokenize", "eval", "generate", "finetune", "verify", "diff", "info",
        ] {
            #expect(help.stdout.contains("qtool \(command) "), "example for \(command)")
        }
    }

    @Test func inspectJSONListsEveryTensorAndTotals() throws {
        let result = try QToolBinary.run(["inspect", model, "--json"])
        #expect(result.status == 0, "\(result.stderr)")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
        #expect(report["format"] as? String == "safetensors")
        let tensors = try #require(report["tensors"] as? [[String: Any]])
        let reference = try SafeTensorsModel(path: model).tensors()
        #expect(tensors.map { $0["name"] as? String ?? "" } == reference.names)
        let embed = try #require(tensors.first { $0["name"] as? String == "model.embed_tokens.weight" })
        #expect(embed["dtype"] as? String == "BF16")
        #expect(embed["shape"] as? [Int] == [1024, 128])
        #expect(embed["parameters"] as? Int == 131_072)
        #expect(embed["bytes"] as? Int == 262_144)
        #expect(report["total_parameters"] as? Int == 1_000_576)
        #expect(report["total_bytes"] as? Int == 2_001_152)
    }

    @Test func inspectTableOfAShardedFolder() throws {
        let result = try QToolBinary.run(["inspect", Fixtures.path("tiny-llama-sharded")])
        #expect(result.status == 0)
        #expect(result.stdout.contains("3 shards"))
        let row = result.stdout.split(separator: "\n").first { $0.hasPrefix("model.layers.3.mlp.down_proj.weight ") }
        #expect(
            row?.split(separator: " ", omittingEmptySubsequences: true).map(String.init) == [
                "model.layers.3.mlp.down_proj.weight", "BF16", "[128,", "352]", "45,056", "90,112",
            ])
        #expect(result.stdout.contains("1,000,576 parameters"))
    }

    @Test func losslessConvertOfAReferenceFileIsByteIdentical() throws {
        let input = Fixtures.path("safetensors/tiny-llama-f32.safetensors")
        let output = Fixtures.temporaryFolder() + "/copy.safetensors"
        let result = try QToolBinary.run(["convert", input, output, "--quiet"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(Fixtures.bytes(output) == Fixtures.bytes(input))
    }

    @Test(arguments: [("bf16", "safetensors/tiny-llama-f32.to_bf16.safetensors"), ("f16", "safetensors/tiny-llama-f32.to_f16.safetensors")])
    func castEqualsTorchsSaveOfTheCastModel(_ dtype: String, _ golden: String) throws {
        let output = Fixtures.temporaryFolder() + "/cast.safetensors"
        let result = try QToolBinary.run([
            "convert", Fixtures.path("safetensors/tiny-llama-f32.safetensors"), output, "--dtype", dtype, "--quiet",
        ])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(Fixtures.bytes(output) == Fixtures.bytes(Fixtures.path(golden)))
    }

    @Test func folderToShardedFolderCarriesConfigAndTokenizer() throws {
        let output = Fixtures.temporaryFolder() + "/tiny-f32"
        let result = try QToolBinary.run(["convert", model, output, "--dtype", "f32", "--max-shard-size", "1MB", "--json"])
        #expect(result.status == 0, "\(result.stderr)")
        let files = Fixtures.listing(output)
        #expect(files.contains("model.safetensors.index.json"))
        #expect(files.contains("tokenizer.json") && files.contains("tokenizer_config.json") && files.contains("generation_config.json"))
        #expect(!files.contains { $0.hasPrefix(".") })
        let config = try String(contentsOfFile: output + "/config.json", encoding: .utf8)
        #expect(config.contains("\"dtype\": \"float32\""))
        #expect(Fixtures.bytes(output + "/tokenizer.json") == Fixtures.bytes(model + "/tokenizer.json"))
        let source = try SafeTensorsModel(path: model).tensors()
        let back = try SafeTensorsModel(path: output)
        #expect(back.shards.count > 1)
        let tensors = back.tensors()
        #expect(Set(tensors.names) == Set(source.names))
        for (name, tensor) in tensors.entries {
            #expect(tensor.dtype == .f32)
            // bf16 → f32 is exact: the high halves of the f32 words are the bf16 bits.
            let wide = tensor.values(as: UInt32.self).map { UInt16($0 >> 16) }
            #expect(wide == source[name]!.values(as: UInt16.self), "\(name)")
        }
    }

    @Test func shardedInputKeepsItsShardingAndConvertsBackToOneFile() throws {
        let folder = Fixtures.temporaryFolder()
        let sharded = Fixtures.path("tiny-llama-sharded")
        let copy = try QToolBinary.run(["convert", sharded, folder + "/copy", "--quiet"])
        #expect(copy.status == 0, "\(copy.stderr)")
        for name in [
            "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors",
            "model.safetensors.index.json",
        ] {
            #expect(Fixtures.bytes(folder + "/copy/" + name) == Fixtures.bytes(sharded + "/" + name), "\(name)")
        }
        let single = try QToolBinary.run(["convert", sharded, folder + "/one.safetensors", "--quiet"])
        #expect(single.status == 0)
        let tensors = try SafeTensorsFile(path: folder + "/one.safetensors").tensors()
        let reference = try SafeTensorsModel(path: model).tensors()
        for name in reference.names { #expect(tensors[name]!.isIdentical(to: reference[name]!)) }
    }

    @Test func rewritingAFolderInPlaceRemovesStaleShards() throws {
        let folder = Fixtures.temporaryFolder() + "/m"
        #expect(try QToolBinary.run(["convert", model, folder, "--max-shard-size", "500KB", "--quiet"]).status == 0)
        #expect(Fixtures.listing(folder).contains("model-00005-of-00005.safetensors"))
        try Data("keep".utf8).write(to: URL(fileURLWithPath: folder + "/adapter_model.safetensors"))
        #expect(try QToolBinary.run(["convert", folder, folder, "--max-shard-size", "1MB", "--quiet"]).status == 0)
        let files = Fixtures.listing(folder)
        #expect(!files.contains { $0.contains("-of-00005") }, "\(files)")
        #expect(files.contains("adapter_model.safetensors"), "files that are not this save's weights stay")
        let tensors = try SafeTensorsModel(path: folder).tensors()
        #expect(tensors.count == 39)
    }

    static let malformed = [
        "truncated-data.safetensors", "huge-header-length.safetensors", "bad-json.safetensors", "unknown-dtype.safetensors",
        "size-mismatch.safetensors", "overlapping-offsets.safetensors", "out-of-range-offsets.safetensors",
        "non-string-metadata.safetensors", "duplicate-names.safetensors", "shape-overflow.safetensors", "empty.safetensors",
        "index-missing-shard", "index-wrong-shard",
    ]

    @Test(arguments: malformed)
    func malformedInputExitsTwoNamingTheFileAndWritesNothing(_ name: String) throws {
        let input = Fixtures.path("malformed/" + name)
        let folder = Fixtures.temporaryFolder()
        for output in [folder + "/out.safetensors", folder + "/out-folder"] {
            let result = try QToolBinary.run(["convert", input, output, "--quiet"])
            #expect(result.status == 2)
            #expect(result.stderr.hasPrefix("error: \(input)"), "\(result.stderr)")
            #expect(result.stderr.split(separator: "\n").count == 1)
        }
        #expect(Fixtures.listing(folder).isEmpty, "no output and no temporary files")
        let inspect = try QToolBinary.run(["inspect", input])
        #expect(inspect.status == 2 && inspect.stderr.hasPrefix("error: \(input)"))
        #expect(inspect.stdout.isEmpty)
    }

    @Test func missingInputAndBadArguments() throws {
        let missing = try QToolBinary.run(["inspect", "/nonexistent/model.safetensors"])
        #expect(missing.status == 2 && missing.stderr == "error: /nonexistent/model.safetensors: no such file or folder\n")
        let badDType = try QToolBinary.run(["convert", model, "/tmp/x.safetensors", "--dtype", "int8"])
        #expect(badDType.status == 64 && badDType.stderr.contains("--dtype must be f32, f16 or bf16"))
        let badShard = try QToolBinary.run(["convert", model, "/tmp/x.safetensors", "--max-shard-size", "1MB"])
        #expect(badShard.status == 64)
    }

    @Test func aFailedWriteIsReportedAndLeavesNothing() throws {
        let folder = Fixtures.temporaryFolder()
        // A 64 KiB file-size limit makes the write of the 4 MB model fail part way.
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", "ulimit -f 64; exec \"$0\" convert \"$1\" \"$2\" --dtype f32", QToolBinary.path, model, folder + "/out"]
        let err = Pipe()
        process.standardError = err
        try process.run()
        let message = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 2)
        #expect(message.hasPrefix("error: \(folder)/out/model.safetensors: cannot write: File too large"), "\(message)")
        #expect(Fixtures.listing(folder).isEmpty)
    }

    @Test func anExistingOutputSurvivesAFailedConvert() throws {
        let folder = Fixtures.temporaryFolder()
        let output = folder + "/keep.safetensors"
        try Data("previous".utf8).write(to: URL(fileURLWithPath: output))
        let result = try QToolBinary.run(["convert", Fixtures.path("malformed/truncated-data.safetensors"), output])
        #expect(result.status == 2)
        #expect(Fixtures.bytes(output) == Array("previous".utf8))
        #expect(Fixtures.listing(folder) == ["keep.safetensors"])
    }
}
