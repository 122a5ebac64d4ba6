import Foundation
import TensorCore

/// A numeric dataset of an HDF5 file, described without reading it.
public struct HDF5Dataset: Sendable {
    /// The tensor name: the dataset's path without the leading `/`, components joined with `.`.
    public let name: String
    /// The dataset's path in the file, e.g. `/layers/dense/vars/0`.
    public let path: String
    public let dtype: DType
    public let shape: Shape
    public var byteCount: Int { shape.elementCount * dtype.bitSize / 8 }
    /// Its position in the file's list, and where its bytes lie when they can be mapped.
    let index: Int
    let fileRange: Range<Int>?
}

/// Which program laid the file out.
public enum HDF5Kind: String, Sendable {
    /// Keras 3 `save_weights` (`.weights.h5`): `layers/<layer>/vars/<i>`.
    case keras3 = "keras 3 weights"
    /// Keras 2 / `model.save("x.h5")`: `model_weights/<layer>/<scope>/kernel`, `layer_names`.
    case kerasLegacy = "legacy keras"
    case generic = "generic"
}

/// An HDF5 file opened for reading: its numeric datasets (each read on demand), what it holds
/// that qtool does not carry, and its layout (groups, attributes) for an exact round trip.
///
/// A contiguous, uncompressed little-endian dataset is mapped from the file where it lies (no
/// copy; it streams like a safetensors tensor); any other is read through libhdf5 a slab at a
/// time, which undoes chunking, compression and byte order. With `.helperProcess`, libhdf5 runs
/// in qtool's HDF5 helper (see `HDF5Containment`).
public final class HDF5Reader: @unchecked Sendable {
    public let path: String
    public let kind: HDF5Kind
    public let datasets: [HDF5Dataset]
    /// Datasets and attributes qtool does not carry (strings, compounds, references, second
    /// links to one object, …), with the reason.
    public let skipped: [HDF5Skipped]
    /// Groups and attributes, and which tensor came from which path (see `HDF5Layout`).
    public let layout: HDF5Layout
    private let mapping: MappedFile
    private let backend: Backend

    private enum Backend {
        case inProcess(HDF5Session)
        case helper(HDF5HelperProcess)
    }

    /// Opens `path`. Links and raw data in other files are refused unless `allowExternal`.
    public init(path: String, containment: HDF5Containment, allowExternal: Bool = false) throws {
        self.path = path
        // A regular file (not a FIFO or a device) that qtool can map.
        mapping = try MappedFile(path: path)
        let description: HDF5Description
        switch containment {
        case .inProcess:
            let session = HDF5Session()
            description = try session.open(path: path, allowExternal: allowExternal)
            backend = .inProcess(session)
        case .helperProcess(let executable, let timeout):
            let helper = try HDF5HelperProcess(executable: executable, timeout: timeout, path: path)
            let request = try JSONEncoder().encode(HDF5HelperProcess.OpenRequest(path: path, allowExternal: allowExternal))
            let reply = try helper.request(.open, json: request, object: "/")
            guard let decoded = try? JSONDecoder().decode(HDF5Description.self, from: reply) else {
                throw HDF5Error.helperFailed(path: path, object: "/", reason: "qtool's HDF5 helper answered nonsense")
            }
            description = decoded
            backend = .helper(helper)
        }
        (kind, datasets, skipped, layout) = try Self.validate(description, path: path, fileSize: mapping.count)
    }

    /// Checks what the helper reported before anything is sized by it.
    private static func validate(_ description: HDF5Description, path: String, fileSize: Int) throws(HDF5Error)
        -> (HDF5Kind, [HDF5Dataset], [HDF5Skipped], HDF5Layout)
    {
        func fail(_ reason: String) -> HDF5Error { .helperFailed(path: path, object: "/", reason: reason) }
        guard let kind = HDF5Kind(rawValue: description.kind) else { throw fail("an unknown file kind") }
        var datasets: [HDF5Dataset] = []
        var pathOf: [String: String] = [:]
        for (index, info) in description.datasets.enumerated() {
            guard let dtype = DType(rawValue: info.dtype), info.shape.allSatisfy({ $0 >= 0 }),
                let count = CheckedSize.product(info.shape), let bytes = CheckedSize.multiply(count, dtype.bitSize / 8)
            else { throw fail("a malformed description of '\(info.path)'") }
            var range: Range<Int>? = nil
            if let fileRange = info.fileRange {
                guard fileRange.count == 2, fileRange[0] >= 0, fileRange[1] - fileRange[0] == bytes, fileRange[1] <= fileSize else {
                    throw .cannotRead(path: path, object: info.path, reason: "its data lies outside the file (truncated?)")
                }
                range = fileRange[0]..<fileRange[1]
            }
            if let other = pathOf[info.name] {
                throw .cannotRead(path: path, object: info.path, reason: "gives the same tensor name '\(info.name)' as '\(other)'")
            }
            pathOf[info.name] = info.path
            datasets.append(
                HDF5Dataset(name: info.name, path: info.path, dtype: dtype, shape: Shape(info.shape), index: index, fileRange: range))
        }
        let layout: HDF5Layout
        do {
            layout = try HDF5Layout(json: try JSONParser.parse(description.layout), path: path)
        } catch {
            throw fail("an unreadable layout")
        }
        return (kind, datasets, description.skipped, layout)
    }

    /// One dataset as a tensor: mapped where its bytes lie in the file as they are, else read
    /// through libhdf5 slab by slab into memory.
    public func read(_ dataset: HDF5Dataset) throws -> Tensor {
        if let range = dataset.fileRange {
            return Tensor(dtype: dataset.dtype, shape: dataset.shape, storage: .mapped(mapping, range))
        }
        let bytes = OwnedBytes(count: dataset.byteCount)
        let width = dataset.dtype.bitSize / 8
        var offset = 0
        for slab in HDF5Slabs.plan(shape: dataset.shape.dimensions, elementBytes: width) {
            let length = slab.elementCount * width
            let destination = UnsafeMutableRawBufferPointer(rebasing: bytes.buffer[offset..<(offset + length)])
            switch backend {
            case .inProcess(let session):
                try session.read(dataset: dataset.index, slab: slab, into: destination)
            case .helper(let helper):
                let request = try JSONEncoder().encode(HDF5HelperProcess.ReadRequest(dataset: dataset.index, slab: slab))
                try helper.request(.read, json: request, object: dataset.path, into: destination)
            }
            offset += length
        }
        return Tensor(dtype: dataset.dtype, shape: dataset.shape, storage: .owned(bytes))
    }
}
