import TensorCore

/// A safetensors file, memory-mapped, with its header validated before any tensor is touched.
public struct SafeTensorsFile: Sendable {
    public let path: String
    public let header: SafeTensorsHeader
    public let mapping: MappedFile

    public init(path: String) throws {
        mapping = try MappedFile(path: path)
        self.path = path
        let file = mapping
        header = try file.withBytes(in: 0..<file.count) { bytes throws(SafeTensorsError) in
            try SafeTensorsHeader.parse(fileBytes: bytes, path: path)
        }
        // The header has been parsed; its pages need not stay resident.
        file.releasePages(0..<header.dataStart)
    }

    /// The tensor of `entry`, backed by the mapping (no bytes are read until used).
    public func tensor(_ entry: SafeTensorsEntry) -> Tensor {
        let start = header.dataStart + entry.dataRange.lowerBound
        return Tensor(dtype: entry.dtype, shape: entry.shape, storage: .mapped(mapping, start..<(start + entry.dataRange.count)))
    }

    /// Every tensor, in data order, with the file's metadata.
    public func tensors() -> NamedTensors {
        var result = NamedTensors()
        for entry in header.entries { result.append(entry.name, tensor(entry)) }
        result.metadata = header.metadata
        return result
    }
}

/// Safetensors weights of a model: one file, or a folder with `model.safetensors` or a sharded
/// `model.safetensors.index.json` (as transformers writes them).
public struct SafeTensorsModel: Sendable {
    public static let indexName = "model.safetensors.index.json"
    public static let singleFileName = "model.safetensors"

    /// The path given: a file or a folder.
    public let path: String
    public let isFolder: Bool
    /// The weight files, in index order (one when not sharded).
    public let shards: [SafeTensorsFile]
    /// For each tensor name, the index of its shard in `shards`.
    public let shardOfTensor: [String: Int]

    public init(path: String) throws {
        self.path = path
        isFolder = FilePaths.isDirectory(path)
        guard isFolder else {
            let file = try SafeTensorsFile(path: path)
            shards = [file]
            shardOfTensor = Dictionary(file.header.entries.map { ($0.name, 0) }, uniquingKeysWith: { a, _ in a })
            return
        }
        let indexPath = path + "/" + SafeTensorsModel.indexName
        if FilePaths.exists(indexPath) {
            (shards, shardOfTensor) = try SafeTensorsModel.readSharded(folder: path, indexPath: indexPath)
            return
        }
        let names = try FilePaths.contents(of: path).filter { $0.hasSuffix(".safetensors") }
        let chosen = names.contains(SafeTensorsModel.singleFileName) ? SafeTensorsModel.singleFileName : (names.count == 1 ? names[0] : nil)
        guard let chosen else { throw SafeTensorsError.noWeights(path: path) }
        let file = try SafeTensorsFile(path: path + "/" + chosen)
        shards = [file]
        shardOfTensor = Dictionary(file.header.entries.map { ($0.name, 0) }, uniquingKeysWith: { a, _ in a })
    }

    /// Whether the weights come from an index with several files.
    public var isSharded: Bool { shards.count > 1 || (isFolder && FilePaths.exists(path + "/" + SafeTensorsModel.indexName)) }

    /// Every tensor: shard by shard in index order, each in data order. Metadata is the first shard's.
    public func tensors() -> NamedTensors {
        var result = NamedTensors()
        for shard in shards {
            for entry in shard.header.entries { result.append(entry.name, shard.tensor(entry)) }
        }
        result.metadata = shards.first?.header.metadata
        return result
    }

    /// Names of the weight files inside the folder, in index order.
    public var shardNames: [String] { shards.map { FilePaths.lastComponent(of: $0.path) } }

    private static func readSharded(folder: String, indexPath: String) throws -> ([SafeTensorsFile], [String: Int]) {
        let indexFile = try MappedFile(path: indexPath)
        let index: JSONValue
        do {
            index = try indexFile.withBytes(in: 0..<indexFile.count) { bytes throws(JSONParseError) in try JSONParser.parse(bytes) }
        } catch let error as JSONParseError {
            throw SafeTensorsError.invalidIndex(path: indexPath, detail: error.description)
        }
        guard let weightMap = index["weight_map"]?.objectMembers else {
            throw SafeTensorsError.invalidIndex(path: indexPath, detail: "no \"weight_map\" object")
        }
        var shardNames: [String] = []
        var shardPosition: [String: Int] = [:]
        var wanted: [(tensor: String, shard: Int)] = []
        for member in weightMap {
            guard let file = member.value.stringValue else {
                throw SafeTensorsError.invalidIndex(path: indexPath, detail: "weight_map entry \"\(member.key)\" is not a file name")
            }
            // Shard names are plain file names inside the folder; never follow a path out of it.
            guard !file.contains("/"), file != "..", file != "." else {
                throw SafeTensorsError.invalidIndex(path: indexPath, detail: "shard name \"\(file)\" is not a file in the folder")
            }
            if shardPosition[file] == nil {
                shardPosition[file] = shardNames.count
                shardNames.append(file)
            }
            wanted.append((member.key, shardPosition[file]!))
        }
        // Open shards in file-name order, which is the HF numbering order.
        let ordered = shardNames.sorted()
        var files: [SafeTensorsFile] = []
        for name in ordered {
            let shardPath = folder + "/" + name
            guard FilePaths.exists(shardPath) else { throw SafeTensorsError.missingShard(path: indexPath, shard: name) }
            files.append(try SafeTensorsFile(path: shardPath))
        }
        var shardOfTensor: [String: Int] = [:]
        for (position, file) in files.enumerated() {
            for entry in file.header.entries {
                if let other = shardOfTensor[entry.name] {
                    throw SafeTensorsError.tensorInTwoShards(
                        path: folder, tensor: entry.name, first: ordered[other], second: ordered[position])
                }
                shardOfTensor[entry.name] = position
            }
        }
        for (tensor, shard) in wanted {
            let name = shardNames[shard]
            guard let found = shardOfTensor[tensor], ordered[found] == name else {
                throw SafeTensorsError.tensorMissingFromShard(path: indexPath, tensor: tensor, shard: name)
            }
        }
        return (files, shardOfTensor)
    }
}
