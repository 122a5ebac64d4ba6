import Foundation
import HDF5Format
import NF4Format
import Quantization
import SafetensorsFormat
import TensorCore

/// A tensor on its way out: stored as it is (or cast), or quantized.
enum OutputItem {
    case plain(any TensorPayload)
    case quantized(QuantizedTensor)
}

/// Where a command writes: a .nf4 container, one .safetensors file, or a model folder.
enum OutputTarget {
    case nf4(String)
    case safetensorsFile(String)
    case folder(String)
    case hdf5(String)

    init(_ path: String) {
        if path.hasSuffix(".h5") || path.hasSuffix(".hdf5") {
            self = .hdf5(path)
        } else if path.hasSuffix(".nf4") {
            self = .nf4(path)
        } else if path.hasSuffix(".safetensors") {
            self = .safetensorsFile(path)
        } else {
            self = .folder(path)
        }
    }
}

/// Writes checkpoints in every output format, a tensor at a time where the format allows.
struct CheckpointWriter {
    let target: OutputTarget
    let metadata: [(key: String, value: String)]?
    let companions: [(name: String, read: @Sendable () throws -> [UInt8])]
    var maxShardSize: Int? = nil
    /// Shard grouping to keep (a sharded input) when no maximum size is given.
    var shardGroups: [(file: String, tensors: [String])]? = nil
    /// A dtype to record in config.json (after a cast).
    var castDType: DType? = nil
    /// zstd level for .nf4 sections; nil stores them uncompressed.
    var compressionLevel: Int32? = nil
    /// Items produced at once ahead of the .nf4 writer (above one, `produce` runs concurrently
    /// with itself).
    var producedAhead = 1
    let progress: ProgressBar

    /// Writes `names.count` tensors, asking `produce` for each in order; returns the files written.
    func write(names: [String], produce: @escaping (Int) throws -> OutputItem) throws -> [String] {
        switch target {
        case .nf4(let path):
            return try writeNF4(path, names: names, produce: produce)
        case .safetensorsFile(let path):
            guard !FilePaths.isDirectory(path) else { throw CommandError(path: path, "is a folder, not a .safetensors file") }
            let (items, _) = try materialize(names: names, produce: produce, outputPath: path)
            try SafeTensorsWriter.write(items, metadata: metadata, toFile: path)
            return [path]
        case .folder(let path):
            return try writeFolder(path, names: names, produce: produce)
        case .hdf5(let path):
            guard !FilePaths.isDirectory(path) else { throw CommandError(path: path, "is a folder, not an HDF5 file") }
            let layout = try metadata?.first { $0.key == HDF5Layout.metadataKey }.map { item in
                guard let json = try? JSONParser.parse(item.value) else {
                    throw CommandError(path: path, "the input's hdf5_layout metadata is not JSON")
                }
                return try HDF5Layout(json: json, path: path)
            }
            // One tensor at a time, streamed to libhdf5 in qtool's helper process.
            let writer = try HDF5Writer(path: path, tensorNames: names, layout: layout, containment: QTool.hdf5Containment)
            do {
                for (index, name) in names.enumerated() {
                    guard case .plain(let payload) = try produce(index) else {
                        throw CommandError(path: path, "tensor '\(name)' is 4-bit; HDF5 output takes floats (dequantize first)")
                    }
                    try writer.add(name: name, ProgressPayload(base: payload, progress: progress))
                }
                try writer.commit()
            } catch {
                writer.abort()
                throw error
            }
            return [path]
        }
    }

    private func writeNF4(_ path: String, names: [String], produce: @escaping (Int) throws -> OutputItem) throws -> [String] {
        let writer = try NF4Writer(path: path, compressionLevel: compressionLevel, metadata: metadata)
        do {
            // While tensor i is written, the next ones are produced (quantized) on other threads.
            let pipeline = Prefetcher(count: names.count, depth: producedAhead, produce: produce)
            for (index, name) in names.enumerated() {
                switch try pipeline.item(index) {
                case .quantized(let q): try writer.addQuantized(name: name, q)
                case .plain(let payload): try writer.addPlain(name: name, ProgressPayload(base: payload, progress: progress))
                }
            }
            for companion in companions {
                var bytes = try companion.read()
                // The container keeps the model's own config; bitsandbytes settings are added on export.
                if companion.name == "config.json" { bytes = ConfigFile.edited(bytes, quantization: .remove, dtype: castDType) }
                try writer.addFile(name: companion.name, bytes: bytes)
            }
            try writer.commit()
        } catch {
            writer.abort()
            throw error
        }
        return [path]
    }

    /// Turns quantized tensors into bitsandbytes-layout tensors. safetensors puts every size in
    /// its header, so every tensor must be in hand before the first byte is written: the 4-bit
    /// parts computed here are set aside in a spill file beside the output (not memory) and
    /// mapped back; plain payloads stay lazy and are computed as they are written.
    private func materialize(names: [String], produce: (Int) throws -> OutputItem, outputPath: String) throws
        -> ([SafeTensorsWriter.Item], QuantizedTensor?)
    {
        enum Pending {
            case ready(SafeTensorsWriter.Item)
            case spilled(name: String, dtype: DType, shape: Shape, range: Range<Int>)
        }
        var pending: [Pending] = []
        var firstQuantized: QuantizedTensor? = nil
        var spill: SpillFile? = nil
        for (index, name) in names.enumerated() {
            switch try produce(index) {
            case .plain(let payload):
                pending.append(.ready(SafeTensorsWriter.Item(name: name, payload: ProgressPayload(base: payload, progress: progress))))
            case .quantized(let q):
                firstQuantized = firstQuantized ?? q
                for part in BitsandbytesLayout.export(name: name, q) {
                    guard case .owned = part.tensor.storage, part.tensor.byteCount >= 1 << 16 else {
                        pending.append(.ready(SafeTensorsWriter.Item(name: part.name, payload: part.tensor)))
                        continue
                    }
                    if spill == nil { spill = try SpillFile(directory: FilePaths.directory(of: outputPath)) }
                    pending.append(
                        .spilled(name: part.name, dtype: part.tensor.dtype, shape: part.tensor.shape, range: try spill!.append(part.tensor))
                    )
                }
            }
        }
        let mapping = try spill?.mapped()
        let items = pending.map { item -> SafeTensorsWriter.Item in
            switch item {
            case .ready(let item): return item
            case .spilled(let name, let dtype, let shape, let range):
                return SafeTensorsWriter.Item(name: name, payload: Tensor(dtype: dtype, shape: shape, storage: .mapped(mapping!, range)))
            }
        }
        return (items, firstQuantized)
    }

    private func writeFolder(_ path: String, names: [String], produce: (Int) throws -> OutputItem) throws -> [String] {
        let (items, firstQuantized) = try materialize(names: names, produce: produce, outputPath: path)
        let shards: [[SafeTensorsWriter.Item]]
        if let maxShardSize {
            shards = ShardedWriter.planShards(byteCounts: items.map(\.payload.byteCount), maxShardSize: maxShardSize).map {
                $0.map { items[$0] }
            }
        } else if let groups = shardGroups, firstQuantized == nil {
            let byName = Dictionary(uniqueKeysWithValues: items.map { ($0.name, $0) })
            shards = groups.map { $0.tensors.compactMap { byName[$0] } }
        } else {
            shards = [items]
        }
        let transaction = try FolderOutputTransaction(folder: path)
        do {
            var written = try ShardedWriter.write(shards: shards, metadata: metadata, into: transaction)
            for companion in companions {
                var bytes = try companion.read()
                if companion.name == "config.json" {
                    let quantization: ConfigFile.QuantizationEdit =
                        firstQuantized.map { q in
                            .set(
                                BitsandbytesLayout.quantizationConfig(
                                    type: q.quantType, doubleQuantization: q.isDoubleQuantized,
                                    computeDType: ConfigFile.modelDType(bytes) ?? q.originalDType, skipModules: nil))
                        } ?? .remove
                    bytes = ConfigFile.edited(bytes, quantization: quantization, dtype: castDType)
                }
                let file = try transaction.file(named: companion.name)
                try file.write(bytes)
                written.append(companion.name)
            }
            try transaction.commit(dropping: ShardedWriter.isModelWeightFile)
            return written
        } catch {
            transaction.abort()
            throw error
        }
    }
}

/// Edits to config.json, written back as transformers writes it (`json.dumps(indent=2,
/// sort_keys=True)` and a newline). A file that is not a JSON object is copied unchanged.
enum ConfigFile {
    enum QuantizationEdit {
        case keep
        case remove
        case set(JSONValue)
    }

    static func edited(_ bytes: [UInt8], quantization: QuantizationEdit, dtype: DType?) -> [UInt8] {
        guard case .object(var members)? = try? bytes.withUnsafeBytes({ try JSONParser.parse($0) }) else { return bytes }
        let original = members
        switch quantization {
        case .keep: break
        case .remove: members.removeAll { $0.key == "quantization_config" }
        case .set(let value):
            members.removeAll { $0.key == "quantization_config" }
            members.append(JSONMember(key: "quantization_config", value: value))
        }
        if let dtype {
            for index in members.indices
            where ["dtype", "torch_dtype"].contains(members[index].key) && members[index].value.stringValue != nil {
                members[index].value = .string(dtype.torchName)
            }
        }
        guard members != original else { return bytes }
        return Array((JSONValue.object(members).serialized(.pythonDumps()) + "\n").utf8)
    }

    /// The model's dtype as config.json records it (`dtype`, or `torch_dtype` before transformers 5).
    static func modelDType(_ bytes: [UInt8]) -> DType? {
        guard let config = try? bytes.withUnsafeBytes({ try JSONParser.parse($0) }) else { return nil }
        let name = config["dtype"]?.stringValue ?? config["torch_dtype"]?.stringValue
        return DType.allCases.first { $0.torchName == name }
    }
}

/// Produces the items of a checkpoint ahead of the writer: while item i is written, items
/// i + 1 ... i + depth are produced on other threads. Items are handed out in order; the first
/// failure, in order, is the one thrown. With a depth above one, `produce` runs concurrently
/// with itself and must be safe to.
final class Prefetcher: @unchecked Sendable {
    private final class Slot: @unchecked Sendable {
        let done = DispatchSemaphore(value: 0)
        var result: Result<OutputItem, any Error>?
    }

    private let count: Int
    private let depth: Int
    private let produce: (Int) throws -> OutputItem
    private var slots: [Int: Slot] = [:]
    /// The next index not yet started.
    private var next = 0
    private let queue = DispatchQueue(label: "qtool.prefetch", attributes: .concurrent)

    init(count: Int, depth: Int = 1, produce: @escaping (Int) throws -> OutputItem) {
        self.count = count
        self.depth = max(1, depth)
        self.produce = produce
    }

    private func start(upTo end: Int) {
        while next < min(count, end) {
            let slot = Slot()
            let index = next
            slots[index] = slot
            queue.async { [self] in
                slot.result = Result { try produce(index) }
                slot.done.signal()
            }
            next += 1
        }
    }

    func item(_ index: Int) throws -> OutputItem {
        let current: Result<OutputItem, any Error>
        if let slot = slots.removeValue(forKey: index) {
            slot.done.wait()
            current = slot.result!
        } else if depth > 1 && index == next {
            start(upTo: index + depth)
            return try item(index)
        } else {
            current = Result { try produce(index) }
            next = max(next, index + 1)
        }
        if case .success = current { start(upTo: index + 1 + depth) }
        return try current.get()
    }

    deinit { for slot in slots.values { slot.done.wait() } }
}
