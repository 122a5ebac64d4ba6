import Foundation
import SafetensorsFormat
import TensorCore
import Testing
import TestSupport

/// `qtool quantize` / `dequantize` / `convert` of 4-bit checkpoints, against transformers and
/// bitsandbytes' own files.
struct QuantizeCommandTests {
    let model = Fixtures.path("tiny-llama")

    @Test(arguments: [("nf4", [] as [String]), ("fp4", ["--quant-type", "fp4", "--no-double-quant"])])
    func bnbFolderIsTransformersOwnSave(_ kind: String, _ flags: [String]) throws {
        let out = Fixtures.temporaryFolder() + "/bnb"
        let result = try QToolBinary.run(["quantize", model, out, "--format", "bnb", "--quiet"] + flags)
        #expect(result.status == 0, "\(result.stderr)")
        let golden = Fixtures.path("tiny-llama-bnb-\(kind)")
        for file in ["model.safetensors", "config.json", "tokenizer.json", "generation_config.json"] {
            #expect(Fixtures.bytes(out + "/" + file) == Fixtures.bytes(golden + "/" + file), "\(file)")
        }
    }

    @Test func nf4ContainerConvertsToTheSameBnbFolderAndBack() throws {
        let folder = Fixtures.temporaryFolder()
        #expect(try QToolBinary.run(["quantize", model, folder + "/tiny.nf4", "--quiet"]).status == 0)
        let toBnb = try QToolBinary.run(["convert", folder + "/tiny.nf4", folder + "/bnb", "--quiet"])
        #expect(toBnb.status == 0, "\(toBnb.stderr)")
        #expect(Fixtures.bytes(folder + "/bnb/model.safetensors") == Fixtures.bytes(Fixtures.path("tiny-llama-bnb-nf4/model.safetensors")))
        #expect(Fixtures.bytes(folder + "/bnb/config.json") == Fixtures.bytes(Fixtures.path("tiny-llama-bnb-nf4/config.json")))
        // bnb → .nf4 → bnb is lossless.
        #expect(try QToolBinary.run(["convert", Fixtures.path("tiny-llama-bnb-nf4"), folder + "/again.nf4", "--quiet"]).status == 0)
        #expect(try QToolBinary.run(["convert", folder + "/again.nf4", folder + "/again", "--quiet"]).status == 0)
        #expect(
            Fixtures.bytes(folder + "/again/model.safetensors") == Fixtures.bytes(Fixtures.path("tiny-llama-bnb-nf4/model.safetensors")))
    }

    @Test(arguments: ["nf4", "fp4"])
    func dequantizeEqualsBitsandbytes(_ kind: String) throws {
        let folder = Fixtures.temporaryFolder()
        let golden = Fixtures.bytes(Fixtures.path("bnb/tiny-llama-bnb-\(kind).dequantized.safetensors"))
        let fromBnb = try QToolBinary.run(["dequantize", Fixtures.path("tiny-llama-bnb-\(kind)"), folder + "/a.safetensors", "--quiet"])
        #expect(fromBnb.status == 0, "\(fromBnb.stderr)")
        #expect(Fixtures.bytes(folder + "/a.safetensors") == golden)
        // The same through a .nf4 container.
        #expect(try QToolBinary.run(["convert", Fixtures.path("tiny-llama-bnb-\(kind)"), folder + "/m.nf4", "--quiet"]).status == 0)
        #expect(try QToolBinary.run(["dequantize", folder + "/m.nf4", folder + "/b.safetensors", "--quiet"]).status == 0)
        let a = try SafeTensorsFile(path: folder + "/a.safetensors").tensors()
        let b = try SafeTensorsFile(path: folder + "/b.safetensors").tensors()
        for name in a.names { #expect(a[name]!.isIdentical(to: b[name]!), "\(name)") }
    }

    @Test func dequantizedFolderDropsTheQuantizationConfig() throws {
        let out = Fixtures.temporaryFolder() + "/restored"
        let result = try QToolBinary.run(["dequantize", Fixtures.path("tiny-llama-bnb-nf4"), out, "--dtype", "f32", "--quiet"])
        #expect(result.status == 0, "\(result.stderr)")
        let config = try String(contentsOfFile: out + "/config.json", encoding: .utf8)
        #expect(!config.contains("quantization_config") && config.contains("\"dtype\": \"float32\""))
        let tensors = try SafeTensorsModel(path: out).tensors()
        #expect(tensors.count == 39 && tensors.entries.allSatisfy { $0.tensor.dtype == .f32 })
    }

    @Test func inspectReportsBitsPerParameter() throws {
        let folder = Fixtures.temporaryFolder()
        #expect(try QToolBinary.run(["quantize", model, folder + "/t.nf4", "--compress", "zstd:5", "--quiet"]).status == 0)
        let result = try QToolBinary.run(["inspect", folder + "/t.nf4", "--json"])
        #expect(result.status == 0, "\(result.stderr)")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
        #expect(report["format"] as? String == "nf4")
        #expect(report["quantized_tensors"] as? Int == 28)
        #expect(report["total_parameters"] as? Int == 1_000_576)
        #expect(report["source_bytes"] as? Int == 2_001_152)
        let bits = try #require(report["bits_per_parameter"] as? Double)
        #expect(bits > 4 && bits < 8)
        let table = try QToolBinary.run(["inspect", Fixtures.path("tiny-llama-bnb-nf4")])
        #expect(table.stdout.contains("nf4, blocksize 64, double quantization") && table.stdout.contains("bits per parameter"))
    }

    @Test func includeSkipAndBlocksizeReachTheOutput() throws {
        let folder = Fixtures.temporaryFolder()
        let result = try QToolBinary.run([
            "quantize", model, folder + "/t.nf4", "--include", "lm_head.weight", "--skip", "*.mlp.*", "--blocksize", "128",
            "--quant-type", "fp4", "--json",
        ])
        #expect(result.status == 0, "\(result.stderr)")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
        #expect(report["quantized_tensors"] as? Int == 17)  // 4 layers × 4 attention projections + lm_head
        let inspect = try QToolBinary.run(["inspect", folder + "/t.nf4"])
        #expect(inspect.stdout.contains("fp4, blocksize 128"))
    }

    @Test func nanInAWeightExitsTwoNamingTheTensor() throws {
        let folder = Fixtures.temporaryFolder()
        let input = folder + "/nan.safetensors"
        var values = [Float](repeating: 0.5, count: 64 * 64)
        values[777] = .nan
        try SafeTensorsWriter.write(
            [
                SafeTensorsWriter.Item(name: "a.weight", payload: Tensor(dtype: .f32, shape: [64, 64], values: values))
            ], metadata: nil, toFile: input)
        for format in ["nf4", "bnb"] {
            let result = try QToolBinary.run(["quantize", input, folder + "/out-" + format, "--format", format, "--quiet"])
            #expect(result.status == 2)
            #expect(result.stderr == "error: \(input): tensor 'a.weight' holds NaN or infinity (element 777); cannot quantize\n")
        }
        #expect(Fixtures.listing(folder) == ["nan.safetensors"])
    }

    @Test func corruptContainerExitsTwo() throws {
        let folder = Fixtures.temporaryFolder()
        #expect(try QToolBinary.run(["quantize", model, folder + "/t.nf4", "--quiet"]).status == 0)
        var bytes = Fixtures.bytes(folder + "/t.nf4")
        bytes[4000] ^= 0xFF
        try Data(bytes).write(to: URL(fileURLWithPath: folder + "/t.nf4"))
        let result = try QToolBinary.run(["dequantize", folder + "/t.nf4", folder + "/out", "--quiet"])
        #expect(result.status == 2)
        #expect(result.stderr.hasPrefix("error: \(folder)/t.nf4: ") && result.stderr.contains("checksum mismatch"), "\(result.stderr)")
        #expect(!FileManager.default.fileExists(atPath: folder + "/out"))
        let notNF4 = try QToolBinary.run(["dequantize", model, folder + "/x.safetensors"])
        #expect(notNF4.status == 2 && notNF4.stderr.contains("holds no quantized tensors"))
    }
}
