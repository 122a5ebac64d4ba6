import Foundation
import GGUFFormat
import HDF5Format
import LanguageModel
import SafetensorsFormat
import TensorCore
import Tokenizer

@testable import LoRAMerge
@testable import NF4Format
@testable import Quantization

/// What the fuzzers feed hostile bytes to: each reader of untrusted input, driven the way the
/// commands drive it. Errors are expected; only a crash, a hang or a blow-up is a finding. The
/// libFuzzer executable (`Tests/Fuzz`, `make fuzz`) and the regression test (`make test`) call
/// the same functions.
public enum FuzzTarget: String, CaseIterable, Sendable {
    case json, safetensors, nf4, bnb, adapter, hdf5, tokenizer, model, gguf

    /// Runs the target on one input.
    public func run(_ data: UnsafeRawBufferPointer) {
        switch self {
        case .json: FuzzTarget.json(data)
        case .safetensors: FuzzTarget.safetensors(data)
        case .nf4: FuzzTarget.nf4(data)
        case .bnb: FuzzTarget.bnb(data)
        case .adapter: FuzzTarget.adapter(data)
        case .hdf5: FuzzTarget.hdf5(data)
        case .tokenizer: FuzzTarget.tokenizer(data)
        case .model: FuzzTarget.model(data)
        case .gguf: FuzzTarget.gguf(data)
        }
    }

    /// Bytes of tensor data a target reads at most (keeps each run fast and small).
    static let dataBudget = 1 << 24

    static func json(_ data: UnsafeRawBufferPointer) {
        guard let value = try? JSONParser.parse(data) else { return }
        // What the parser gives back must serialize and read back the same.
        let text = value.serialized(.compact)
        let again = try? JSONParser.parse(text)
        precondition(again == value, "JSON round trip changed the value")
        _ = value.serialized(.pythonDumps())
    }

    static func safetensors(_ data: UnsafeRawBufferPointer) {
        guard let header = try? SafeTensorsHeader.parse(fileBytes: data, path: "fuzz") else { return }
        // Every entry must lie inside the data section, as validated.
        for entry in header.entries {
            precondition(entry.dataRange.upperBound <= data.count - header.dataStart, "entry past the data")
        }
    }

    /// Where inputs become files: memory (/dev/shm) where there is one, so runs are not disk-bound.
    static let scratch = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm/" : NSTemporaryDirectory()

    /// The bytes as a file (the readers map files).
    static func withFile(_ data: UnsafeRawBufferPointer, suffix: String, _ body: (String) -> Void) {
        let path = scratch + "qtool-fuzz-\(getpid())-\(UInt64.random(in: 0...UInt64.max))" + suffix
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return }
        defer { unlink(path) }
        var offset = 0
        while offset < data.count {
            let n = write(fd, data.baseAddress! + offset, data.count - offset)
            guard n > 0 else { break }
            offset += n
        }
        close(fd)
        body(path)
    }

    static func nf4(_ data: UnsafeRawBufferPointer) {
        withFile(data, suffix: ".nf4") { path in
            guard let file = try? NF4File(path: path) else { return }
            var budget = dataBudget
            for entry in file.entries {
                guard case .quantized = entry.kind, budget > 0 else {
                    _ = try? file.load(entry)
                    continue
                }
                guard case .quantized(let t)? = try? file.load(entry) else { continue }
                budget -= t.shape.elementCount
                dequantize(t)
            }
            _ = try? file.verifyAll()
            _ = file.firstStrayByte()
        }
    }

    /// The container's tensor through the checks the commands make, then dequantized.
    static func dequantize(_ q: QuantizedTensor) {
        guard q.shape.elementCount <= dataBudget, (try? q.checkScales(name: "fuzz")) != nil else { return }
        _ = try? q.dequantizedPayload(to: .f32).materialized()
    }

    static func bnb(_ data: UnsafeRawBufferPointer) {
        withFile(data, suffix: ".safetensors") { path in
            guard let file = try? SafeTensorsFile(path: path), let imported = try? BitsandbytesLayout.import(file.tensors()) else { return }
            for (_, item) in imported {
                guard case .quantized(let q) = item, q.elementCount <= dataBudget else { continue }
                _ = try? q.dequantizedPayload(to: .bf16).materialized()
                _ = q.dequantized(to: .f32)
            }
        }
    }

    /// A base the adapters are merged into: names and shapes of a small Llama, float32 zeros.
    static let base: NamedTensors = {
        var tensors = NamedTensors()
        for layer in 0..<2 {
            for (module, shape) in [("self_attn.q_proj", [64, 64]), ("self_attn.v_proj", [32, 64]), ("mlp.down_proj", [64, 96])] {
                tensors.append(
                    "model.layers.\(layer).\(module).weight",
                    Tensor(dtype: .f32, shape: Shape(shape), values: [Float](repeating: 0.5, count: shape[0] * shape[1])))
            }
            tensors.append(
                "model.layers.\(layer).self_attn.q_proj.bias",
                Tensor(dtype: .bf16, shape: [64], values: [UInt16](repeating: 0x3F80, count: 64)))
        }
        tensors.append(
            "model.embed_tokens.weight", Tensor(dtype: .bf16, shape: [100, 64], values: [UInt16](repeating: 0x3F00, count: 6400)))
        tensors.append("model.norm.step", Tensor(dtype: .i64, shape: [2], values: [Int64(1), 2]))
        return tensors
    }()

    /// Input: a 4-byte little-endian length, that many bytes of adapter_config.json, then the
    /// adapter's safetensors file.
    static func adapter(_ data: UnsafeRawBufferPointer) {
        guard data.count >= 4 else { return }
        let length = Int(data.loadUnaligned(as: UInt32.self).littleEndian)
        guard length <= data.count - 4, let config = try? JSONParser.parse(UnsafeRawBufferPointer(rebasing: data[4..<(4 + length)])) else {
            return
        }
        withFile(UnsafeRawBufferPointer(rebasing: data[(4 + length)...]), suffix: ".safetensors") { path in
            guard let file = try? SafeTensorsFile(path: path) else { return }
            let tensors = file.tensors()
            guard
                let adapter = try? LoRAAdapter(
                    path: "fuzz", config: config, tensors: tensors, layout: LoRAAdapter.layout(of: tensors) ?? .peft),
                let plan = try? MergePlan(
                    adapters: [(adapter, 0.5)], base: base.entries.map { ($0.name, $0.tensor.dtype, $0.tensor.shape) })
            else { return }
            for (name, merge) in plan.changes {
                for dtype in [DType.f32, .bf16] {
                    _ = try? MergedTensor(base: base[name]!, merge: merge, dtype: dtype, name: name).materialized()
                }
            }
        }
    }

    /// Input: a GGUF file. One that opens has every tensor within the budget read as the commands
    /// read it: quantized ones dequantized, plain float ones widened to float32, integer ones as
    /// they are.
    static func gguf(_ data: UnsafeRawBufferPointer) {
        withFile(data, suffix: ".gguf") { path in
            guard let file = try? GGUFFile(path: path) else { return }
            for (key, value) in file.metadata.entries {
                precondition(file.metadata[key].map { sameValue($0, value) } == true, "metadata lookup differs from the entry")
                _ = (value.description, value.number, value.elements?.count)
            }
            var budget = dataBudget
            for info in file.tensors {
                // Every accepted tensor lies inside the data section.
                let range = file.fileRange(info)
                precondition(range.lowerBound >= file.dataStart && range.upperBound <= data.count, "tensor past the end")
                precondition(info.type.byteCount(dimensions: info.dimensions) == info.byteCount, "byte count differs")
                guard info.elementCount <= budget else { continue }
                budget -= info.elementCount
                _ = file.rawTensor(info).withBytes { $0.reduce(0, &+) as UInt8 }
                guard let tensor = try? file.tensor(info, threads: 2) else {
                    precondition(!info.type.isDequantizable, "a dequantizable tensor was refused")
                    continue
                }
                precondition(tensor.shape == info.shape && tensor.elementCount == info.elementCount, "tensor shape differs")
                // The streamed decoding (dequantize, the way back to transformers) gives the same
                // float32 values, rows reversed when asked.
                if FloatConversion.decodable.contains(tensor.dtype), info.elementCount > 0,
                    let payload = GGUFDequantizedPayload(file, info, threads: 2)
                {
                    var streamed: [UInt8] = []
                    try? payload.stream(chunkBytes: 4096) { streamed += $0 }
                    let direct = tensor.dtype == .f32 ? tensor.withBytes { Array($0) } : nil
                    precondition(streamed.count == payload.byteCount && (direct == nil || direct! == streamed), "streamed decoding differs")
                    let rows = info.elementCount / info.dimensions[0]
                    _ = GGUFDequantizedPayload(file, info, dtype: .bf16, rowOrder: Array((0..<rows).reversed()), threads: 2)
                }
                if tensor.dtype != .f32 && FloatConversion.decodable.contains(tensor.dtype) && tensor.elementCount > 0 {
                    let floats = UnsafeMutablePointer<Float>.allocate(capacity: tensor.elementCount)
                    defer { floats.deallocate() }
                    tensor.withBytes {
                        FloatConversion.decodeToFloat32($0.baseAddress!, tensor.dtype, from: 0, count: tensor.elementCount, into: floats)
                    }
                } else {
                    _ = tensor.withBytes { $0.reduce(0, &+) as UInt8 }
                }
            }
        }
    }

    /// Metadata values equal, floats bit for bit (a NaN is not `==` to itself).
    static func sameValue(_ a: GGUFValue, _ b: GGUFValue) -> Bool {
        switch (a, b) {
        case (.float32(let x), .float32(let y)): x.bitPattern == y.bitPattern
        case (.float64(let x), .float64(let y)): x.bitPattern == y.bitPattern
        case (.array(let s, let x), .array(let t, let y)): s == t && x.count == y.count && zip(x, y).allSatisfy { sameValue($0, $1) }
        default: a == b
        }
    }

    /// The qtool binary that serves as the HDF5 helper (`QTOOL_BINARY`, or the release build).
    public static let qtoolBinary: String = {
        if let path = ProcessInfo.processInfo.environment["QTOOL_BINARY"] { return path }
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path + "/.build/release/qtool"
    }()

    static func hdf5(_ data: UnsafeRawBufferPointer) {
        withFile(data, suffix: ".h5") { path in
            guard let reader = try? HDF5Reader(path: path, containment: .helperProcess(executable: qtoolBinary, timeout: 5)) else { return }
            var budget = dataBudget
            for dataset in reader.datasets where dataset.byteCount <= budget {
                budget -= dataset.byteCount
                _ = try? reader.read(dataset)
            }
        }
    }

    /// Texts every tokenizer that loads must encode and decode: scripts, emoji, whitespace runs,
    /// marks after spaces, both spellings of à, contractions, special-looking tokens.
    static let tokenizerTexts = [
        "", " ", "Hello world", "  a\r\n\r\n  b\t\tc   ", "I'm DON'T x'\u{17F}b 1234567",
        "日本語 ภาษาไทย हिन्दी مرحبا", "👩‍👩‍👧 1️⃣ 🇫🇷 👋🏽", " \u{301}e\u{301} \u{E0} a\u{300}", "<s></s><|endoftext|><0x41>",
    ]

    /// Input: a tokenizer.json. One that loads encodes the texts above and the input's own first
    /// bytes, every id naming a token; decoding those ids must not fail either.
    static func tokenizer(_ data: UnsafeRawBufferPointer) {
        guard let tokenizer = try? Tokenizer(json: Array(data), config: nil, path: "fuzz") else { return }
        let own = String(decoding: UnsafeRawBufferPointer(rebasing: data[..<min(data.count, 2048)]), as: UTF8.self)
        for text in tokenizerTexts + [own] {
            for special in [true, false] {
                let ids = tokenizer.encode(text, addSpecialTokens: special)
                precondition(ids.allSatisfy { tokenizer.token($0) != nil }, "an encoded id names no token")
                _ = tokenizer.decode(ids)
                _ = tokenizer.decode(ids, skipSpecialTokens: true)
            }
        }
        _ = tokenizer.decode(Array(-2..<min(tokenizer.vocabularySize + 2, 4096)))
    }

    /// Input: a config.json. One that reads and is small enough is given weights of its shape
    /// (a fixed pattern) and run: a forward pass over a few tokens and two generated tokens must
    /// not crash, whatever its heads, rope scaling or window.
    static func model(_ data: UnsafeRawBufferPointer) {
        guard let config = try? ModelConfig(json: Array(data), path: "fuzz") else { return }
        let c = config
        guard c.hiddenSize <= 128, c.intermediateSize <= 256, c.layers <= 3, c.vocabSize <= 512, c.qDim <= 256, c.kvDim <= 256 else {
            return
        }
        var tensors: [String: StoredTensor] = [:]
        func add(_ name: String, _ shape: [Int]) {
            let count = shape.reduce(1, *)
            tensors[name] = .plain(Tensor(dtype: .f32, shape: Shape(shape), values: (0..<count).map { Float(($0 * 7) % 13) / 13 - 0.5 }))
        }
        add("model.embed_tokens.weight", [c.vocabSize, c.hiddenSize])
        add("model.norm.weight", [c.hiddenSize])
        if !c.tiedEmbeddings { add("lm_head.weight", [c.vocabSize, c.hiddenSize]) }
        for layer in 0..<c.layers {
            let p = "model.layers.\(layer)."
            add(p + "input_layernorm.weight", [c.hiddenSize])
            add(p + "post_attention_layernorm.weight", [c.hiddenSize])
            for (name, out, inputs) in [
                ("q_proj", c.qDim, c.hiddenSize), ("k_proj", c.kvDim, c.hiddenSize), ("v_proj", c.kvDim, c.hiddenSize),
                ("o_proj", c.hiddenSize, c.qDim),
            ] {
                add(p + "self_attn." + name + ".weight", [out, inputs])
                let bias = name == "o_proj" ? c.outputBias : c.qkvBias
                if bias { add(p + "self_attn." + name + ".bias", [out]) }
            }
            for (name, out, inputs) in [
                ("gate_proj", c.intermediateSize, c.hiddenSize), ("up_proj", c.intermediateSize, c.hiddenSize),
                ("down_proj", c.hiddenSize, c.intermediateSize),
            ] {
                add(p + "mlp." + name + ".weight", [out, inputs])
                if c.mlpBias { add(p + "mlp." + name + ".bias", [out]) }
            }
        }
        guard let model = try? LanguageModel(config: config, tensors: tensors, path: "fuzz", threads: 2) else { return }
        let tokens = [0, min(1, c.vocabSize - 1), c.vocabSize - 1]
        _ = model.negativeLogLikelihood([tokens, [0]])
        _ = model.generate(prompt: tokens, maxTokens: 2, stop: [], sampler: Sampler(temperature: 0.7, topP: 0.9, seed: 1))
    }
}
