import Quantization
import TensorCore

/// One tensor of the base through the merge, in the form the output keeps it. The command only
/// says where the result goes; what happens to each stored tensor is decided here.
public enum MergeStage {
    /// A tensor on its way out: floats (streamed when written), or 4-bit.
    public enum Output {
        case plain(any TensorPayload)
        case quantized(QuantizedTensor)
    }

    /// A 4-bit base tensor, as PEFT merges into a bitsandbytes layer: dequantized to the weight's
    /// dtype, the delta added in float32. Kept 4-bit (`floatType` nil), the float32 result is
    /// quantized again with the tensor's own settings (type, block size, double quantization),
    /// streaming from the merge into the quantizer, never held whole; otherwise it is written as
    /// `floatType`. An unchanged tensor stays as stored, or is dequantized for float output.
    ///
    /// Throws `LoRAError.cannotMerge` (with `path`, the base) when the result cannot be quantized.
    public static func merge(
        quantized q: QuantizedTensor, change: TensorMerge?, name: String, floatType: DType?, path: String,
        threads: Int = ParallelismSettings.threadCount
    ) throws -> Output {
        guard let change else {
            guard let floatType else { return .quantized(q) }
            return .plain(q.dequantizedPayload(to: floatType, threads: threads))
        }
        let restored = QuantizedRows(q)
        if let floatType {
            return .plain(try MergedTensor(base: restored, merge: change, dtype: floatType, name: name, threads: threads))
        }
        let merged = try MergedTensor(base: restored, merge: change, dtype: .f32, name: name, threads: threads)
        return .quantized(
            try quantize(
                merged, name: name, path: path, type: q.quantType, blocksize: q.blocksize, double: q.isDoubleQuantized, threads: threads))
    }

    /// A float base tensor: merged where it changes, cast to `castTo` (float tensors only), and,
    /// when `quantize` is set (a float base written to a 4-bit format), quantized as transformers
    /// with bitsandbytes' defaults would: NF4, blocks of 64, double quantization.
    public static func merge(
        plain tensor: Tensor, change: TensorMerge?, name: String, castTo: DType?, quantize: Bool, path: String,
        threads: Int = ParallelismSettings.threadCount
    ) throws -> Output {
        let dtype = tensor.dtype.isFloatingPoint ? (castTo ?? tensor.dtype) : tensor.dtype
        let payload: any TensorPayload
        if let change {
            payload = try MergedTensor(base: tensor, merge: change, dtype: dtype, name: name, threads: threads)
        } else if dtype != tensor.dtype, let cast = CastTensor(tensor, to: dtype, threads: threads) {
            payload = cast
        } else {
            payload = tensor
        }
        guard quantize else { return .plain(payload) }
        return .quantized(try Self.quantize(payload, name: name, path: path, type: .nf4, blocksize: 64, double: true, threads: threads))
    }

    private static func quantize(
        _ tensor: any TensorPayload, name: String, path: String, type: QuantType, blocksize: Int, double: Bool, threads: Int
    ) throws -> QuantizedTensor {
        do {
            return try QuantizedTensor.quantize(tensor, type: type, blocksize: blocksize, doubleQuantization: double, threads: threads)
        } catch let error as QuantizationError {
            throw LoRAError.cannotMerge(path: path, tensor: name, problem: "cannot be quantized after the merge: \(error)")
        }
    }
}
