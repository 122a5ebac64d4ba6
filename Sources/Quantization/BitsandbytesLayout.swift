import Foundation
import TensorCore

/// bitsandbytes' pre-quantized layout, as transformers saves a 4-bit model (`save_pretrained`):
/// for each quantized weight `X`,
///
///     X                                   U8   [ceil(n/2), 1]  packed codes
///     X.absmax                            U8   [blocks]  (F32 without double quantization)
///     X.quant_map                         F32  [16]
///     X.nested_absmax, X.nested_quant_map F32  [ceil(blocks/256)], [256]   (double quantization)
///     X.quant_state.bitsandbytes__nf4     U8   JSON: quant_type, blocksize, dtype, shape, nested_*
public enum BitsandbytesLayout {
    public static let quantStatePrefix = ".quant_state.bitsandbytes__"
    static let suffixes = [".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map"]

    /// The tensors that store `tensor` under `name`.
    public static func export(name: String, _ tensor: QuantizedTensor) -> [(name: String, tensor: Tensor)] {
        var out: [(String, Tensor)] = []
        out.append((name, Tensor(dtype: .u8, shape: [tensor.packed.byteCount, 1], storage: tensor.packed.storage)))
        out.append((name + ".quant_map", Tensor(dtype: .f32, shape: [16], values: tensor.quantType.code)))
        var state: [JSONMember] = [
            JSONMember(key: "quant_type", value: .string(tensor.quantType.rawValue)),
            JSONMember(key: "blocksize", value: .integer(tensor.blocksize)),
            JSONMember(key: "dtype", value: .string(tensor.originalDType.torchName)),
            JSONMember(key: "shape", value: .array(tensor.shape.dimensions.map(JSONValue.integer))),
        ]
        switch tensor.absmax {
        case .plain(let scales):
            out.append((name + ".absmax", scales))
        case .double(let codes, let nested, let offset, let nestedBlocksize):
            out.append((name + ".absmax", codes))
            out.append((name + ".nested_absmax", nested))
            out.append((name + ".nested_quant_map", Tensor(dtype: .f32, shape: [256], values: DynamicMap.values)))
            state.append(JSONMember(key: "nested_blocksize", value: .integer(nestedBlocksize)))
            state.append(JSONMember(key: "nested_dtype", value: .string("float32")))
            state.append(JSONMember(key: "nested_offset", value: JSONValue.pythonFloat(Double(offset))))
        }
        // `json.dumps` with its default separators (", " and ": "), keys in the order given.
        let json = JSONValue.object(state).serialized(.pythonDumps(indent: nil, sortKeys: false))
        out.append(
            (name + quantStatePrefix + tensor.quantType.rawValue, Tensor(dtype: .u8, shape: [json.utf8.count], values: Array(json.utf8))))
        return out
    }

    /// Whether `tensors` hold any weight in this layout.
    public static func isPresent(in tensors: NamedTensors) -> Bool {
        tensors.names.contains { $0.contains(quantStatePrefix) }
    }

    /// Every tensor of a checkpoint as stored: imported from this layout when it holds any, else
    /// each plain, in order.
    public static func storedTensors(_ tensors: NamedTensors) throws(QuantizationError) -> [(name: String, tensor: StoredTensor)] {
        guard isPresent(in: tensors) else { return tensors.entries.map { ($0.name, .plain($0.tensor)) } }
        return try `import`(tensors)
    }

    /// Splits a checkpoint in this layout into quantized weights and the other tensors, in order.
    public static func `import`(_ tensors: NamedTensors) throws(QuantizationError) -> [(name: String, tensor: StoredTensor)] {
        var stateOf: [String: (type: QuantType, key: String)] = [:]
        for name in tensors.names {
            guard let range = name.range(of: quantStatePrefix) else { continue }
            let base = String(name[..<range.lowerBound])
            guard let type = QuantType(rawValue: String(name[range.upperBound...])) else {
                throw .invalidLayout(tensor: name, problem: "unknown quant type '\(name[range.upperBound...])'")
            }
            if let other = stateOf[base] {
                throw .invalidLayout(tensor: base, problem: "has two quant_states, '\(other.key)' and '\(name)'")
            }
            stateOf[base] = (type, name)
        }
        // Every quant_state needs its packed codes, and every part of the layout its quant_state:
        // otherwise a weight would silently vanish, or its raw codes pass for a plain tensor.
        for (base, state) in stateOf where tensors[base] == nil {
            throw .invalidLayout(tensor: base, problem: "its packed 4-bit codes are missing (only '\(state.key)' and its scales are there)")
        }
        for name in tensors.names {
            guard let suffix = suffixes.first(where: { name.hasSuffix($0) }) else { continue }
            let base = String(name.dropLast(suffix.count))
            if stateOf[base] == nil {
                throw .invalidLayout(tensor: name, problem: "is part of the bitsandbytes layout but '\(base)' has no quant_state")
            }
        }
        var owned = Set<String>()
        for (base, state) in stateOf {
            owned.insert(base)
            owned.insert(state.key)
            for suffix in suffixes { owned.insert(base + suffix) }
        }
        var result: [(String, StoredTensor)] = []
        for name in tensors.names {
            if let state = stateOf[name] {
                result.append((name, .quantized(try read(base: name, type: state.type, stateKey: state.key, tensors))))
            } else if !owned.contains(name) {
                result.append((name, .plain(tensors[name]!)))
            }
        }
        return result
    }

    static func read(base: String, type: QuantType, stateKey: String, _ tensors: NamedTensors) throws(QuantizationError) -> QuantizedTensor
    {
        func fail(_ problem: String) -> QuantizationError { .invalidLayout(tensor: base, problem: problem) }
        func need(_ suffix: String, _ dtype: DType) throws(QuantizationError) -> Tensor {
            guard let t = tensors[base + suffix] else { throw fail("missing \(base + suffix)") }
            guard t.dtype == dtype else { throw fail("\(base + suffix) is \(t.dtype.rawValue), expected \(dtype.rawValue)") }
            return t
        }
        let stateTensor = try need(quantStatePrefix + type.rawValue, .u8)
        let state: JSONValue
        do {
            state = try stateTensor.withBytes { try JSONParser.parse($0) }
        } catch {
            throw fail("quant_state is not valid JSON")
        }
        guard state["quant_type"]?.stringValue == type.rawValue else { throw fail("quant_state quant_type does not match its key") }
        guard let blocksize = state["blocksize"]?.integerValue, BlockwiseQuantizer.validBlocksizes.contains(blocksize) else {
            throw fail("quant_state blocksize is missing or unsupported")
        }
        guard let entries = state["shape"]?.arrayValues else { throw fail("quant_state shape is missing") }
        let dims = entries.compactMap(\.integerValue)
        guard dims.count == entries.count, dims.allSatisfy({ $0 >= 0 }), let count = Shape(dims).checkedElementCount, count < Int.max / 2
        else {
            throw fail(
                "quant_state shape \(entries.map { $0.serialized(.compact) }) is not a list of non-negative integers of a valid size")
        }
        guard let dtypeName = state["dtype"]?.stringValue, let dtype = DType.allCases.first(where: { $0.torchName == dtypeName }),
            [.f32, .f16, .bf16, .f64].contains(dtype)
        else { throw fail("quant_state dtype is missing or not a float type") }
        let packed = try need("", .u8)
        guard packed.byteCount == (count + 1) / 2 else {
            throw fail("holds \(packed.byteCount) bytes of codes; shape \(Shape(dims)) needs \((count + 1) / 2)")
        }
        let map = try need(".quant_map", .f32).values(as: Float.self)
        guard map.count == 16, zip(map, type.code).allSatisfy({ $0 == $1 }) else {
            throw fail("quant_map is not the standard \(type.rawValue) table")
        }
        let blocks = count / blocksize + (count % blocksize == 0 ? 0 : 1)
        let absmax: QuantizedTensor.Absmax
        if let offsetEntry = state["nested_offset"] {
            guard let offsetValue = offsetEntry.doubleValue, Float(offsetValue).isFinite else {
                throw fail("quant_state nested_offset \(offsetEntry.serialized(.compact)) is not a finite float32 number")
            }
            guard state["nested_blocksize"]?.integerValue == DoubleQuantizedAbsmax.nestedBlocksize else {
                throw fail("nested_blocksize must be \(DoubleQuantizedAbsmax.nestedBlocksize)")
            }
            let codes = try need(".absmax", .u8)
            let nested = try need(".nested_absmax", .f32)
            guard codes.elementCount == blocks, nested.elementCount == (blocks + 255) / 256 else {
                throw fail("absmax sizes do not fit \(blocks) blocks")
            }
            let nestedMap = try need(".nested_quant_map", .f32).values(as: Float.self)
            guard nestedMap.map(\.bitPattern) == DynamicMap.values.map(\.bitPattern) else {
                throw fail("nested_quant_map is not bitsandbytes' dynamic map")
            }
            absmax = .double(codes: codes, nestedAbsmax: nested, offset: Float(offsetValue), nestedBlocksize: 256)
        } else {
            let scales = try need(".absmax", .f32)
            guard scales.elementCount == blocks else { throw fail("absmax has \(scales.elementCount) values for \(blocks) blocks") }
            absmax = .plain(scales)
        }
        let flatPacked = Tensor(dtype: .u8, shape: [packed.byteCount], storage: packed.storage)
        let quantized = QuantizedTensor(
            quantType: type, blocksize: blocksize, shape: Shape(dims), originalDType: dtype, packed: flatPacked, absmax: absmax)
        try quantized.checkScales(name: base)
        return quantized
    }

    /// The `quantization_config` transformers writes into config.json for these settings.
    public static func quantizationConfig(type: QuantType, doubleQuantization: Bool, computeDType: DType, skipModules: [String]?)
        -> JSONValue
    {
        .object([
            JSONMember(key: "_load_in_4bit", value: .bool(true)),
            JSONMember(key: "_load_in_8bit", value: .bool(false)),
            JSONMember(key: "bnb_4bit_compute_dtype", value: .string(computeDType.torchName)),
            JSONMember(key: "bnb_4bit_quant_storage", value: .string("uint8")),
            JSONMember(key: "bnb_4bit_quant_type", value: .string(type.rawValue)),
            JSONMember(key: "bnb_4bit_use_double_quant", value: .bool(doubleQuantization)),
            JSONMember(key: "llm_int8_enable_fp32_cpu_offload", value: .bool(false)),
            JSONMember(key: "llm_int8_has_fp16_weight", value: .bool(false)),
            JSONMember(key: "llm_int8_skip_modules", value: skipModules.map { .array($0.map(JSONValue.string)) } ?? .null),
            JSONMember(key: "llm_int8_threshold", value: .number("6.0")),
            JSONMember(key: "load_in_4bit", value: .bool(true)),
            JSONMember(key: "load_in_8bit", value: .bool(false)),
            JSONMember(key: "quant_method", value: .string("bitsandbytes")),
        ])
    }
}
