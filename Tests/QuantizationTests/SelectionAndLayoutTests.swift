import Quantization
import SafetensorsFormat
import TensorCore
import Testing
import TestSupport

struct SelectionAndLayoutTests {
    @Test(arguments: [
        ("model.layers.0.self_attn.q_proj.weight", [128, 128], true),
        ("model.layers.0.mlp.down_proj.weight", [128, 352], true),
        ("model.embed_tokens.weight", [1024, 128], false),
        ("lm_head.weight", [1024, 128], false),
        ("model.norm.weight", [128], false),
        ("model.layers.0.self_attn.q_proj.bias", [128], false),
        ("bert.embeddings.word_embeddings.weight", [30522, 768], false),
        ("bert.encoder.layer.0.attention.self.query.weight", [768, 768], true),
        ("conv.weight", [8, 3, 3, 3], false),
    ])
    func defaultTargetsAreTransformersLinearWeights(_ name: String, _ dims: [Int], _ expected: Bool) {
        #expect(TensorSelection().shouldQuantize(name: name, dtype: .bf16, shape: Shape(dims)) == expected)
    }

    @Test func includeAndSkipGlobs() {
        let selection = TensorSelection(include: ["lm_head.*"], skip: ["*.mlp.*", "model.layers.1?.*"])
        #expect(selection.shouldQuantize(name: "lm_head.weight", dtype: .f32, shape: [10, 10]))
        #expect(!selection.shouldQuantize(name: "model.layers.0.mlp.up_proj.weight", dtype: .f32, shape: [10, 10]))
        #expect(!selection.shouldQuantize(name: "model.layers.12.self_attn.q_proj.weight", dtype: .f32, shape: [10, 10]))
        #expect(selection.shouldQuantize(name: "model.layers.2.self_attn.q_proj.weight", dtype: .f32, shape: [10, 10]))
        #expect(!selection.shouldQuantize(name: "lm_head.weight", dtype: .i32, shape: [10, 10]), "integers never")
        #expect(Glob.matches("a*b?c", "axxxbyc") && !Glob.matches("a*b?c", "axxxbc") && Glob.matches("*", ""))
    }

    /// transformers' own 4-bit save of the bundled model reads back into quantized tensors whose
    /// dequantization is bitsandbytes' (fixtures/bnb/*.dequantized.safetensors).
    @Test(arguments: ["nf4", "fp4"])
    func importsTransformersSave(_ kind: String) throws {
        let tensors = try SafeTensorsModel(path: Fixtures.path("tiny-llama-bnb-\(kind)")).tensors()
        #expect(BitsandbytesLayout.isPresent(in: tensors))
        let imported = try BitsandbytesLayout.import(tensors)
        #expect(imported.count == 39)
        let golden = try SafeTensorsFile(path: Fixtures.path("bnb/tiny-llama-bnb-\(kind).dequantized.safetensors")).tensors()
        var quantized = 0
        for (name, value) in imported {
            switch value {
            case .quantized(let q):
                quantized += 1
                #expect(q.dequantized(to: q.originalDType).isIdentical(to: golden[name]!), "\(name)")
            case .plain(let t):
                #expect(t.isIdentical(to: golden[name]!))
            }
        }
        #expect(quantized == 28)
    }

    @Test func refusesABrokenQuantState() throws {
        var tensors = try SafeTensorsModel(path: Fixtures.path("tiny-llama-bnb-nf4")).tensors()
        let key = "model.layers.0.mlp.down_proj.weight.quant_state.bitsandbytes__nf4"
        var broken = NamedTensors()
        for (name, tensor) in tensors.entries {
            if name == key {
                let json = Array("{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [128, 999]}".utf8)
                broken.append(name, Tensor(dtype: .u8, shape: [json.count], values: json))
            } else {
                broken.append(name, tensor)
            }
        }
        tensors = broken
        #expect {
            _ = try BitsandbytesLayout.import(tensors)
        } throws: { error in
            guard case .invalidLayout(let tensor, let problem) = error as? QuantizationError else { return false }
            return tensor == "model.layers.0.mlp.down_proj.weight" && problem.contains("bytes of codes")
        }
    }
}
