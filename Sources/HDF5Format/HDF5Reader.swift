import CHDF5
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
}

/// Which program laid the file out.
public enum HDF5Kind: String, Sendable {
    /// Keras 3 `save_weights` (`.weights.h5`): `layers/<layer>/vars/<i>`.
    case keras3 = "keras 3 weights"
    /// Keras 2 / `model.save("x.h5")`: `model_weights/<layer>/<scope>/kernel`, `layer_names`.
    case kerasLegacy = "legacy keras"
    case generic = "generic"
}

/// An HDF5 file opened for reading: its numeric datasets (each read on demand), the datasets it
/// cannot turn into tensors, and its layout (groups, attributes) for an exact round trip.
public final class HDF5Reader: @unchecked Sendable {
    public let path: String
    public let kind: HDF5Kind
    public let datasets: [HDF5Dataset]
    /// Datasets that are not numeric (strings, compounds, references, …), with the reason.
    public let skipped: [(path: String, reason: String)]
    /// Groups and attributes, and which tensor came from which path (see `HDF5Layout`).
    public let layout: HDF5Layout
    private let file: HDF5Handle

    public init(path: String) throws(HDF5Error) {
        self.path = path
        let opened: HDF5Handle? = HDF5.locked {
            let id = H5Fopen(path, qtool_H5F_ACC_RDONLY(), HDF5.defaultProperties)
            return id < 0 ? nil : HDF5Handle(id, .file)
        }
        guard let file = opened else { throw .cannotOpen(path: path, reason: HDF5.locked { HDF5.lastError() }) }
        self.file = file
        var walker = TreeWalker(path: path)
        try HDF5.locked { () throws(HDF5Error) in try walker.walk(file.id, groupPath: "/") }
        datasets = walker.datasets
        skipped = walker.skipped
        layout = HDF5Layout(groups: walker.groups, datasets: walker.datasetLayouts)
        let root = Set(walker.groups.map(\.path))
        if root.contains("/layers") && root.contains("/vars") {
            kind = .keras3
        } else if root.contains("/model_weights") || walker.groups.first?.attributes.contains(where: { $0.name == "layer_names" }) == true {
            kind = .kerasLegacy
        } else {
            kind = .generic
        }
    }

    /// One dataset as a tensor. A contiguous, uncompressed little-endian dataset is mapped from
    /// the file where it lies (no copy; it streams like a safetensors tensor); any other is read
    /// into memory through libhdf5, which undoes chunking, compression and byte order.
    public func read(_ dataset: HDF5Dataset) throws(HDF5Error) -> Tensor {
        if let range = contiguousRange(dataset), let mapping = try? mapping() {
            if range.upperBound <= mapping.count {
                return Tensor(dtype: dataset.dtype, shape: dataset.shape, storage: .mapped(mapping, range))
            }
        }
        let bytes = OwnedBytes(count: dataset.byteCount)
        let status: herr_t = HDF5.locked {
            let id = H5Dopen2(file.id, dataset.path, HDF5.defaultProperties)
            guard id >= 0 else { return -1 }
            let handle = HDF5Handle(id, .object)
            let stored = HDF5Handle(H5Dget_type(handle.id), .datatype)
            let memory = HDF5ElementType.memoryType(for: stored.id, dtype: dataset.dtype)
            return H5Dread(handle.id, memory.id, qtool_H5S_ALL(), qtool_H5S_ALL(), HDF5.defaultProperties, bytes.buffer.baseAddress)
        }
        guard status >= 0 else { throw .cannotRead(path: path, object: dataset.path, reason: HDF5.locked { HDF5.lastError() }) }
        return Tensor(dtype: dataset.dtype, shape: dataset.shape, storage: .owned(bytes))
    }

    private var mapped: MappedFile?
    private let mappingLock = NSLock()

    private func mapping() throws -> MappedFile {
        mappingLock.lock()
        defer { mappingLock.unlock() }
        if let mapped { return mapped }
        let file = try MappedFile(path: path)
        mapped = file
        return file
    }

    /// Where a dataset's bytes lie in the file, when they lie there as the tensor's bytes:
    /// contiguous layout, allocated, no filters, little-endian (or single bytes).
    private func contiguousRange(_ dataset: HDF5Dataset) -> Range<Int>? {
        HDF5.locked { () -> Range<Int>? in
            let id = H5Dopen2(file.id, dataset.path, HDF5.defaultProperties)
            guard id >= 0 else { return nil }
            let handle = HDF5Handle(id, .object)
            let creation = HDF5Handle(H5Dget_create_plist(handle.id), .propertyList)
            let type = HDF5Handle(H5Dget_type(handle.id), .datatype)
            guard H5Pget_layout(creation.id) == H5D_CONTIGUOUS, H5Pget_nfilters(creation.id) == 0,
                H5Pget_external_count(creation.id) == 0,
                H5Tget_size(type.id) == 1 || H5Tget_order(type.id) == H5T_ORDER_LE,
                H5Dget_storage_size(handle.id) == hsize_t(dataset.byteCount)
            else { return nil }
            // Addresses count from the superblock, which follows any user block.
            let fileCreation = HDF5Handle(H5Fget_create_plist(file.id), .propertyList)
            var userBlock: hsize_t = 0
            H5Pget_userblock(fileCreation.id, &userBlock)
            let offset = H5Dget_offset(handle.id)
            guard offset != qtool_HADDR_UNDEF(), let start = Int(exactly: UInt64(offset) + UInt64(userBlock)) else { return nil }
            let (end, overflow) = start.addingReportingOverflow(dataset.byteCount)
            return overflow ? nil : start..<end
        }
    }
}

/// Walks groups depth first, links in name order, collecting datasets, groups and attributes.
struct TreeWalker {
    let path: String
    var datasets: [HDF5Dataset] = []
    var skipped: [(path: String, reason: String)] = []
    var groups: [HDF5Layout.Group] = []
    var datasetLayouts: [HDF5Layout.DatasetEntry] = []

    init(path: String) { self.path = path }

    mutating func walk(_ group: hid_t, groupPath: String) throws(HDF5Error) {
        groups.append(HDF5Layout.Group(path: groupPath, attributes: HDF5Attributes.read(group)))
        var info = H5G_info_t()
        guard H5Gget_info(group, &info) >= 0 else { throw .cannotRead(path: path, object: groupPath, reason: HDF5.lastError()) }
        for index in 0..<info.nlinks {
            let length = H5Lget_name_by_idx(group, ".", H5_INDEX_NAME, H5_ITER_INC, index, nil, 0, HDF5.defaultProperties)
            guard length >= 0 else { throw .cannotRead(path: path, object: groupPath, reason: HDF5.lastError()) }
            var buffer = [CChar](repeating: 0, count: Int(length) + 1)
            H5Lget_name_by_idx(group, ".", H5_INDEX_NAME, H5_ITER_INC, index, &buffer, buffer.count, HDF5.defaultProperties)
            let name = HDF5.string(buffer)
            let childPath = (groupPath == "/" ? "" : groupPath) + "/" + name
            let id = H5Oopen(group, name, HDF5.defaultProperties)
            guard id >= 0 else {
                skipped.append((childPath, "cannot be opened (\(HDF5.lastError()))"))
                continue
            }
            let child = HDF5Handle(id, .object)
            switch H5Iget_type(child.id) {
            case H5I_GROUP: try walk(child.id, groupPath: childPath)
            case H5I_DATASET: try inspect(child.id, path: childPath)
            default: skipped.append((childPath, "is not a group or a dataset"))
            }
        }
    }

    mutating func inspect(_ dataset: hid_t, path datasetPath: String) throws(HDF5Error) {
        let type = HDF5Handle(H5Dget_type(dataset), .datatype)
        let space = HDF5Handle(H5Dget_space(dataset), .dataspace)
        guard case .numeric(let dtype) = HDF5ElementType.of(type.id) else {
            let reason: String
            switch HDF5ElementType.of(type.id) {
            case .string: reason = "holds strings, not numbers"
            case .other(let what): reason = "holds \(what), not numbers"
            case .numeric: reason = ""
            }
            skipped.append((datasetPath, reason))
            return
        }
        let dimensions: [Int]
        switch H5Sget_simple_extent_type(space.id) {
        case H5S_SCALAR: dimensions = []
        case H5S_SIMPLE:
            let rank = Int(H5Sget_simple_extent_ndims(space.id))
            var dims = [hsize_t](repeating: 0, count: rank)
            H5Sget_simple_extent_dims(space.id, &dims, nil)
            dimensions = dims.map { Int(clamping: $0) }
        default:
            skipped.append((datasetPath, "has no data (a null dataspace)"))
            return
        }
        var count = 1
        for dimension in dimensions {
            let (product, overflow) = count.multipliedReportingOverflow(by: dimension)
            guard !overflow, product.multipliedReportingOverflow(by: 8).overflow == false else {
                throw .cannotRead(path: path, object: datasetPath, reason: "shape \(dimensions) overflows the addressable size")
            }
            count = product
        }
        let name = datasetPath.dropFirst().replacing("/", with: ".")
        datasets.append(HDF5Dataset(name: String(name), path: datasetPath, dtype: dtype, shape: Shape(dimensions)))
        datasetLayouts.append(HDF5Layout.DatasetEntry(tensor: String(name), path: datasetPath, attributes: HDF5Attributes.read(dataset)))
    }
}
