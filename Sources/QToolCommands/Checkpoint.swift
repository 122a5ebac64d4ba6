import SafetensorsFormat
import TensorCore

/// A checkpoint opened for reading, whatever its format: its tensors, and what a folder carries
/// beside them.
struct Checkpoint {
    /// The format's name as reports print it.
    let format: String
    let path: String
    let tensors: NamedTensors
    /// The folder holding config.json and tokenizer files, when the input is a model folder.
    let modelFolder: String?
    /// Tensor names grouped by the file holding them, in order, when the input is sharded.
    let shardGroups: [(file: String, tensors: [String])]?

    /// Opens `path`, telling the format by its first bytes, not by its name.
    static func open(_ path: String) throws -> Checkpoint {
        guard FilePaths.exists(path) else { throw CommandError(path: path, "no such file or folder") }
        if !FilePaths.isDirectory(path), let magic = try? leadingBytes(of: path, count: 8) {
            if magic == [0x89, 0x48, 0x44, 0x46, 0x0D, 0x0A, 0x1A, 0x0A] {
                throw CommandError(path: path, "HDF5 files are not supported yet")
            }
        }
        let model = try SafeTensorsModel(path: path)
        let groups: [(file: String, tensors: [String])]? =
            model.isSharded
            ? zip(model.shardNames, model.shards).map { ($0, $1.header.entries.map(\.name)) } : nil
        return Checkpoint(
            format: "safetensors", path: path, tensors: model.tensors(),
            modelFolder: model.isFolder ? path : nil, shardGroups: groups)
    }

    private static func leadingBytes(of path: String, count: Int) throws -> [UInt8] {
        let file = try MappedFile(path: path)
        return file.withBytes(in: 0..<min(count, file.count)) { Array($0) }
    }

    /// Files of a model folder that travel with its weights: config, tokenizer, generation and
    /// chat-template files; weight files and hidden files stay behind.
    static func companionFiles(of folder: String) throws -> [String] {
        let weightSuffixes = [".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".hdf5", ".msgpack", ".gguf", ".nf4", ".onnx"]
        return try FilePaths.contents(of: folder).filter { name in
            !name.hasPrefix(".") && name != SafeTensorsModel.indexName && !name.hasSuffix(".index.json")
                && !weightSuffixes.contains(where: { name.hasSuffix($0) })
                && !FilePaths.isDirectory(folder + "/" + name)
        }
    }
}
