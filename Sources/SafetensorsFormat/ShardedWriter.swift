import TensorCore

/// Writes a model folder the way transformers' `save_pretrained` does: one `model.safetensors`,
/// or `model-0000i-of-0000n.safetensors` shards and `model.safetensors.index.json`.
public enum ShardedWriter {
    /// Splits items into shards as huggingface_hub's `split_state_dict_into_shards_factory`: in
    /// order, a new shard whenever the next tensor would pass `maxShardSize`; a tensor larger than
    /// the limit gets a shard of its own at the point where it is met.
    public static func planShards(byteCounts: [Int], maxShardSize: Int) -> [[Int]] {
        var shards: [[Int]] = []
        var current: [Int] = []
        var currentSize = 0
        for (index, size) in byteCounts.enumerated() {
            if size > maxShardSize {
                shards.append([index])
                continue
            }
            if currentSize + size > maxShardSize {
                shards.append(current)
                current = []
                currentSize = 0
            }
            current.append(index)
            currentSize += size
        }
        if !current.isEmpty { shards.append(current) }
        return shards
    }

    /// HF shard file name: `model-00001-of-00004.safetensors`.
    public static func shardName(_ index: Int, of count: Int) -> String {
        func five(_ n: Int) -> String {
            let s = String(n)
            return s.leftPadded(to: 5, with: "0")
        }
        return "model-\(five(index + 1))-of-\(five(count)).safetensors"
    }

    /// Whether `name` is a weight file of a save in this layout: `model.safetensors`, a numbered
    /// shard or the index (transformers removes only these when it saves over a folder).
    public static func isModelWeightFile(_ name: String) -> Bool {
        if name == SafeTensorsModel.singleFileName || name == SafeTensorsModel.indexName { return true }
        let parts = name.split(separator: "-", omittingEmptySubsequences: false)
        return parts.count == 4 && parts[0] == "model" && parts[2] == "of" && parts[1].count == 5
            && parts[1].allSatisfy(\.isNumber) && parts[3].hasSuffix(".safetensors")
            && parts[3].dropLast(".safetensors".count).count == 5 && parts[3].dropLast(".safetensors".count).allSatisfy(\.isNumber)
    }

    /// The index file's text, as `json.dumps(index, indent=2, sort_keys=True) + "\n"`.
    public static func indexText(weightMap: [(tensor: String, file: String)], totalSize: Int, totalParameters: Int) -> String {
        let index = JSONValue.object([
            JSONMember(
                key: "metadata",
                value: .object([
                    JSONMember(key: "total_parameters", value: .integer(totalParameters)),
                    JSONMember(key: "total_size", value: .integer(totalSize)),
                ])),
            JSONMember(key: "weight_map", value: .object(weightMap.map { JSONMember(key: $0.tensor, value: .string($0.file)) })),
        ])
        return index.serialized(.pythonDumps()) + "\n"
    }

    /// Writes `shards` (each a list of items) into `transaction`'s folder: a single shard as
    /// `model.safetensors`, several as numbered shards with an index. Returns the names written.
    @discardableResult
    public static func write(
        shards: [[SafeTensorsWriter.Item]], metadata: [(key: String, value: String)]?,
        into transaction: FolderOutputTransaction
    ) throws -> [String] {
        if shards.count <= 1 {
            let output = try transaction.file(named: SafeTensorsModel.singleFileName)
            try SafeTensorsWriter.write(shards.first ?? [], metadata: metadata, to: output)
            return [SafeTensorsModel.singleFileName]
        }
        var names: [String] = []
        var weightMap: [(tensor: String, file: String)] = []
        var totalSize = 0
        var totalParameters = 0
        for (index, items) in shards.enumerated() {
            let name = shardName(index, of: shards.count)
            names.append(name)
            let output = try transaction.file(named: name)
            try SafeTensorsWriter.write(items, metadata: metadata, to: output)
            for item in items {
                weightMap.append((item.name, name))
                totalSize += item.payload.byteCount
                totalParameters += item.payload.shape.elementCount
            }
        }
        let index = try transaction.file(named: SafeTensorsModel.indexName)
        try index.write(Array(indexText(weightMap: weightMap, totalSize: totalSize, totalParameters: totalParameters).utf8))
        names.append(SafeTensorsModel.indexName)
        return names
    }

    /// Parses a size as `--max-shard-size` takes it: bytes, or a number with KB/MB/GB/TB (powers of
    /// 1000, as huggingface_hub's `parse_size_to_int`) or KiB/MiB/GiB/TiB (powers of 1024).
    public static func parseSize(_ text: String) -> Int? {
        let trimmed = text.trimmingWhitespace()
        let units: [(String, Double)] = [
            ("KIB", 1024), ("MIB", 1024 * 1024), ("GIB", 1024 * 1024 * 1024), ("TIB", 1024 * 1024 * 1024 * 1024),
            ("KB", 1e3), ("MB", 1e6), ("GB", 1e9), ("TB", 1e12), ("B", 1),
        ]
        let upper = trimmed.uppercased()
        for (unit, multiplier) in units where upper.hasSuffix(unit) {
            guard let value = Double(String(upper.dropLast(unit.count)).trimmingWhitespace()), value > 0, value.isFinite,
                value * multiplier < 9e18
            else { return nil }
            return Int(value * multiplier)
        }
        guard let value = Int(trimmed), value > 0 else { return nil }
        return value
    }
}

extension String {
    func trimmingWhitespace() -> String {
        var scalars = Substring(self)
        while let first = scalars.first, first.isWhitespace { scalars = scalars.dropFirst() }
        while let last = scalars.last, last.isWhitespace { scalars = scalars.dropLast() }
        return String(scalars)
    }
}
