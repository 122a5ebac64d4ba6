import Foundation
import GGUFFormat
import HDF5Format
import NF4Format
import Quantization
import SafetensorsFormat
import TensorCore

/// One tensor of a checkpoint, described without reading its data.
struct CheckpointEntry {
    let name: String
    /// The tensor's type (for a quantized tensor, the type it was quantized from).
    let dtype: DType
    let shape: Shape
    /// "nf4, blocksize 64, double quantization" for a quantized tensor.
    let quantization: String?
    /// Bytes the checkpoint spends on it.
    let storedBytes: Int
    let load: @Sendable () throws -> StoredTensor
}

/// The format a checkpoint was read from.
enum CheckpointFormat: Equatable, CustomStringConvertible {
    case safetensors
    /// bitsandbytes' pre-quantized layout in safetensors (a transformers 4-bit save).
    case bitsandbytes
    case nf4
    case hdf5(HDF5Kind)
    /// llama.cpp's GGUF (tensors as the file names and lays them out).
    case gguf

    /// The name reports print.
    var description: String {
        switch self {
        case .safetensors: "safetensors"
        case .bitsandbytes: "bitsandbytes 4-bit (safetensors)"
        case .nf4: "nf4"
        case .hdf5(let kind): "hdf5 (\(kind.rawValue))"
        case .gguf: "gguf"
        }
    }
}

/// A checkpoint opened for reading, whatever its format: its tensors, and the model files that
/// travel with them.
struct Checkpoint {
    let format: CheckpointFormat
    let path: String
    let entries: [CheckpointEntry]
    let metadata: [(key: String, value: String)]?
    /// Names of model files (config.json, tokenizer files, …) and how to read each.
    let companions: [(name: String, read: @Sendable () throws -> [UInt8])]
    /// Tensor names grouped by the file holding them, when the input is a sharded folder.
    let shardGroups: [(file: String, tensors: [String])]?
    /// The container, when the input is a .nf4 file (what `verify` checks beyond the tensors).
    var nf4File: NF4File? = nil
    /// The file, when the input is GGUF.
    var ggufFile: GGUFFile? = nil

    var isQuantized: Bool { entries.contains { $0.quantization != nil } }

    /// Opens `path`, telling the format by its bytes, not by its name. HDF5 links and raw data
    /// in other files are refused unless `allowExternal`.
    static func open(_ path: String, allowExternal: Bool = false) throws -> Checkpoint {
        guard FilePaths.exists(path) else { throw CommandError(path: path, "no such file or folder") }
        if !FilePaths.isDirectory(path) {
            switch try FileSignature.identify(path) {
            case .nf4: return try openNF4(path)
            case .gguf: return try openGGUF(path)
            case .hdf5: return try openHDF5(path, allowExternal: allowExternal)
            case .damagedNF4: throw NF4Error.damagedStart(path: path)
            case .safetensors: break
            case .unknown:
                if path.hasSuffix(".h5") || path.hasSuffix(".hdf5") {
                    throw CommandError(path: path, "not an HDF5 file (no HDF5 signature)")
                }
                if path.hasSuffix(".nf4") { throw NF4Error.notNF4(path: path) }
                if path.hasSuffix(".gguf") { throw GGUFError.notGGUF(path: path) }
                if !path.hasSuffix(".safetensors") {
                    throw CommandError(path: path, "not a recognised checkpoint format (not safetensors, .nf4, GGUF or HDF5)")
                }
            }
        }
        let model = try SafeTensorsModel(path: path)
        let tensors = model.tensors()
        let groups: [(file: String, tensors: [String])]? =
            model.isSharded ? zip(model.shardNames, model.shards).map { ($0, $1.header.entries.map(\.name)) } : nil
        let companions = model.isFolder ? try folderCompanions(path) : []
        guard BitsandbytesLayout.isPresent(in: tensors) else {
            let entries = tensors.entries.map { name, tensor in
                CheckpointEntry(name: name, dtype: tensor.dtype, shape: tensor.shape, quantization: nil, storedBytes: tensor.byteCount) {
                    .plain(tensor)
                }
            }
            return Checkpoint(
                format: .safetensors, path: path, entries: entries, metadata: tensors.metadata, companions: companions, shardGroups: groups)
        }
        let imported: [(name: String, tensor: StoredTensor)]
        do {
            imported = try BitsandbytesLayout.import(tensors)
        } catch {
            throw CommandError(path: path, error.description)
        }
        let entries = imported.map { name, value in
            let quantization: String? = if case .quantized(let q) = value { describe(q) } else { nil }
            return CheckpointEntry(
                name: name, dtype: value.dtype, shape: value.shape, quantization: quantization, storedBytes: value.storedBytes
            ) { value }
        }
        return Checkpoint(
            format: .bitsandbytes, path: path, entries: entries, metadata: tensors.metadata,
            companions: companions, shardGroups: nil)
    }

    /// An HDF5 file: its numeric datasets as tensors, read one at a time; its groups and
    /// attributes in the `hdf5_layout` metadata, so that writing HDF5 again gives the same tree.
    private static func openHDF5(_ path: String, allowExternal: Bool) throws -> Checkpoint {
        let reader = try HDF5Reader(path: path, containment: QTool.hdf5Containment, allowExternal: allowExternal)
        for item in reader.skipped {
            Report.warning(path, item.description + "; skipped")
        }
        let entries = reader.datasets.map { dataset in
            CheckpointEntry(
                name: dataset.name, dtype: dataset.dtype, shape: dataset.shape, quantization: nil, storedBytes: dataset.byteCount
            ) {
                .plain(try reader.read(dataset))
            }
        }
        return Checkpoint(
            format: .hdf5(reader.kind), path: path, entries: entries,
            metadata: [(HDF5Layout.metadataKey, reader.layout.json.serialized(.compact))], companions: [], shardGroups: nil)
    }

    /// A GGUF file: its tensors under their GGUF names, in torch order, as stored (block types
    /// dequantized to float32 when loaded, as gguf-py's `dequantize`).
    private static func openGGUF(_ path: String) throws -> Checkpoint {
        let file = try GGUFFile(path: path)
        let entries = file.tensors.map { info in
            CheckpointEntry(
                name: info.name, dtype: info.type.plainDType ?? .f32, shape: info.shape,
                quantization: info.type.isQuantized ? info.type.description : nil, storedBytes: info.byteCount
            ) { .plain(try file.tensor(info)) }
        }
        return Checkpoint(format: .gguf, path: path, entries: entries, metadata: nil, companions: [], shardGroups: nil, ggufFile: file)
    }

    static func describe(_ q: QuantizedTensor) -> String {
        "\(q.quantType.rawValue), blocksize \(q.blocksize)" + (q.isDoubleQuantized ? ", double quantization" : "")
    }

    private static func openNF4(_ path: String) throws -> Checkpoint {
        let file = try NF4File(path: path)
        let entries = file.entries.map { entry -> CheckpointEntry in
            let stored: Int
            let description: String?
            switch entry.kind {
            case .plain(let section):
                stored = section.length
                description = nil
            case .quantized(let type, let blocksize, let doubleQuant, _, let sections):
                stored = sections.filter { !$0.key.hasSuffix("quant_map") }.values.reduce(0) { $0 + $1.length }
                description = "\(type), blocksize \(blocksize)" + (doubleQuant ? ", double quantization" : "")
            }
            return CheckpointEntry(name: entry.name, dtype: entry.dtype, shape: entry.shape, quantization: description, storedBytes: stored)
            {
                let stored = try file.load(entry)
                if case .quantized(let q) = stored {
                    do {
                        try q.checkScales(name: entry.name)
                    } catch {
                        throw CommandError(path: path, String(describing: error))
                    }
                }
                return stored
            }
        }
        let companions = file.files.map { item in (name: item.name, read: { @Sendable in try file.fileBytes(item.name) }) }
        return Checkpoint(
            format: .nf4, path: path, entries: entries, metadata: file.metadata, companions: companions, shardGroups: nil, nf4File: file)
    }

    /// Files of a model folder that travel with its weights: config, tokenizer, generation and
    /// chat-template files; weight files and hidden files stay behind.
    static func folderCompanions(_ folder: String) throws -> [(name: String, read: @Sendable () throws -> [UInt8])] {
        let weightSuffixes = [".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".hdf5", ".msgpack", ".gguf", ".nf4", ".onnx"]
        return try FilePaths.contents(of: folder).filter { name in
            !name.hasPrefix(".") && name != SafeTensorsModel.indexName && !name.hasSuffix(".index.json")
                && !weightSuffixes.contains(where: { name.hasSuffix($0) })
                && !FilePaths.isDirectory(folder + "/" + name)
        }.map { name in
            (
                name: name,
                read: { @Sendable in
                    let file = try MappedFile(path: folder + "/" + name)
                    return file.withBytes(in: 0..<file.count) { Array($0) }
                }
            )
        }
    }
}

/// What a file's bytes say it is.
enum FileSignature {
    case nf4, damagedNF4, hdf5, safetensors, gguf, unknown

    static let hdf5Signature: [UInt8] = [0x89, 0x48, 0x44, 0x46, 0x0D, 0x0A, 0x1A, 0x0A]

    static func identify(_ path: String) throws -> FileSignature {
        let file = try MappedFile(path: path)
        return file.withBytes(in: 0..<file.count) { bytes in
            func at(_ offset: Int, _ expected: [UInt8]) -> Bool {
                offset >= 0 && offset + expected.count <= bytes.count && bytes[offset..<(offset + expected.count)].elementsEqual(expected)
            }
            if at(0, NF4Container.magic) { return .nf4 }
            if at(0, GGUFFile.magic) { return .gguf }
            // libhdf5 looks for its signature at 0 and after a user block of 512, 1024, 2048, … bytes.
            var offset = 0
            while offset + 8 <= bytes.count {
                if at(offset, hdf5Signature) { return .hdf5 }
                offset = offset == 0 ? 512 : offset * 2
            }
            // A .nf4 file ends with its magic too: a damaged start is still a .nf4 file.
            if at(bytes.count - 8, NF4Container.magic) { return .damagedNF4 }
            // safetensors: an 8-byte length, then the JSON object (whitespace may come first).
            var index = 8
            while index < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[index]) { index += 1 }
            return index < bytes.count && bytes[index] == UInt8(ascii: "{") ? .safetensors : .unknown
        }
    }
}
