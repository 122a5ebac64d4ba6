import TensorCore

/// Everything that can be wrong with a safetensors file or a sharded model folder.
public enum SafeTensorsError: FileError, Equatable {
    case fileTooSmall(path: String, size: Int)
    case headerTooLarge(path: String, length: UInt64)
    case headerPastEnd(path: String, length: UInt64, fileSize: Int)
    case headerNotUTF8(path: String)
    case headerNotJSON(path: String, detail: String)
    case headerNotObject(path: String)
    case duplicateTensor(path: String, name: String)
    case invalidMetadata(path: String, detail: String)
    case invalidEntry(path: String, tensor: String, detail: String)
    case unknownDType(path: String, tensor: String, dtype: String)
    case shapeOverflow(path: String, tensor: String, shape: Shape, dtype: DType)
    case sizeMismatch(path: String, tensor: String, shape: Shape, dtype: DType, expected: Int, found: Int)
    case overlappingOffsets(path: String, tensor: String, begin: Int, previousEnd: Int)
    case gapBeforeTensor(path: String, tensor: String, begin: Int, previousEnd: Int)
    case dataPastEnd(path: String, tensor: String, end: Int, dataSize: Int)
    case trailingData(path: String, covered: Int, dataSize: Int)
    case invalidIndex(path: String, detail: String)
    case missingShard(path: String, shard: String)
    case tensorMissingFromShard(path: String, tensor: String, shard: String)
    case tensorInTwoShards(path: String, tensor: String, first: String, second: String)
    case noWeights(path: String)
    case cannotWrite(path: String, detail: String)

    public var path: String {
        switch self {
        case .fileTooSmall(let p, _), .headerTooLarge(let p, _), .headerPastEnd(let p, _, _),
            .headerNotUTF8(let p), .headerNotJSON(let p, _), .headerNotObject(let p),
            .duplicateTensor(let p, _), .invalidMetadata(let p, _), .invalidEntry(let p, _, _),
            .unknownDType(let p, _, _), .shapeOverflow(let p, _, _, _), .sizeMismatch(let p, _, _, _, _, _),
            .overlappingOffsets(let p, _, _, _), .gapBeforeTensor(let p, _, _, _), .dataPastEnd(let p, _, _, _),
            .trailingData(let p, _, _), .invalidIndex(let p, _), .missingShard(let p, _),
            .tensorMissingFromShard(let p, _, _), .tensorInTwoShards(let p, _, _, _), .noWeights(let p),
            .cannotWrite(let p, _):
            p
        }
    }

    public var problem: String {
        switch self {
        case .fileTooSmall(_, let size):
            "truncated: \(size) bytes, too short for the 8-byte header length of a safetensors file"
        case .headerTooLarge(_, let length):
            "header length \(length) exceeds the limit of \(SafeTensorsHeader.maximumHeaderLength) bytes"
        case .headerPastEnd(_, let length, let fileSize):
            "truncated: header length \(length) runs past the end of the file (\(fileSize) bytes)"
        case .headerNotUTF8: "header is not valid UTF-8"
        case .headerNotJSON(_, let detail): "header is not valid JSON: \(detail)"
        case .headerNotObject: "header is not a JSON object"
        case .duplicateTensor(_, let name): "tensor '\(name)' is listed twice in the header"
        case .invalidMetadata(_, let detail): "__metadata__ \(detail)"
        case .invalidEntry(_, let tensor, let detail): "tensor '\(tensor)': \(detail)"
        case .unknownDType(_, let tensor, let dtype): "tensor '\(tensor)': unknown dtype \"\(dtype)\""
        case .shapeOverflow(_, let tensor, let shape, let dtype):
            "tensor '\(tensor)': shape \(shape) of \(dtype.rawValue) overflows the addressable size"
        case .sizeMismatch(_, let tensor, let shape, let dtype, let expected, let found):
            "tensor '\(tensor)': shape \(shape) of \(dtype.rawValue) needs \(expected) bytes but its data_offsets span \(found)"
        case .overlappingOffsets(_, let tensor, let begin, let previousEnd):
            "tensor '\(tensor)': data starts at byte \(begin), overlapping the previous tensor (which ends at \(previousEnd))"
        case .gapBeforeTensor(_, let tensor, let begin, let previousEnd):
            "tensor '\(tensor)': data starts at byte \(begin), leaving a gap after byte \(previousEnd)"
        case .dataPastEnd(_, let tensor, let end, let dataSize):
            "truncated or out of range: tensor '\(tensor)' ends at data byte \(end), past the end of the data (\(dataSize) bytes)"
        case .trailingData(_, let covered, let dataSize):
            "tensors cover \(covered) of the \(dataSize) data bytes; the rest belongs to no tensor"
        case .invalidIndex(_, let detail): "invalid index: \(detail)"
        case .missingShard(_, let shard): "the index names shard '\(shard)', which does not exist"
        case .tensorMissingFromShard(_, let tensor, let shard):
            "the index places tensor '\(tensor)' in '\(shard)', which does not hold it"
        case .tensorInTwoShards(_, let tensor, let first, let second):
            "tensor '\(tensor)' is in both '\(first)' and '\(second)'"
        case .noWeights: "no safetensors weights (model.safetensors or model.safetensors.index.json)"
        case .cannotWrite(_, let detail): "cannot write: \(detail)"
        }
    }
}
