import CHDF5
import TensorCore

#if canImport(Glibc)
    import Glibc
#endif

/// Writes tensors as an HDF5 file: each tensor a dataset at the path its `HDF5Layout` records
/// (with that layout's groups and attributes, so a file read by `HDF5Reader` comes back the
/// same), or else at its name with `.` as the separator. Atomic: a temporary file beside the
/// target, fsync, rename.
public enum HDF5Writer {
    public static func write(_ tensors: [(name: String, tensor: Tensor)], layout: HDF5Layout?, to path: String) throws(HDF5Error) {
        let pathOf = Dictionary(layout?.datasets.map { ($0.tensor, $0) } ?? [], uniquingKeysWith: { first, _ in first })
        var targets: [(path: String, tensor: Tensor, attributes: [HDF5Attribute])] = []
        var owner: [String: String] = [:]
        for (name, tensor) in tensors {
            guard HDF5ElementType.writable.contains(tensor.dtype) else {
                throw .unsupportedTensor(path: path, tensor: name, problem: "\(tensor.dtype.rawValue) has no HDF5 type qtool writes")
            }
            let entry = pathOf[name]
            let datasetPath = entry?.path ?? "/" + name.replacing(".", with: "/")
            guard !datasetPath.split(separator: "/").contains(where: \.isEmpty), datasetPath != "/" else {
                throw .unsupportedTensor(path: path, tensor: name, problem: "its name gives an empty HDF5 path component")
            }
            // A dataset can be no other dataset's group.
            if let other = owner[datasetPath] { throw .nameConflict(path: path, first: other, second: name) }
            owner[datasetPath] = name
            targets.append((datasetPath, tensor, entry?.attributes ?? []))
        }
        for target in targets {
            var prefix = ""
            for component in target.path.split(separator: "/").dropLast() {
                prefix += "/" + component
                if let other = owner[prefix] { throw .nameConflict(path: path, first: other, second: owner[target.path]!) }
            }
        }

        let temporary = FilePaths.directory(of: path) + "/." + FilePaths.lastComponent(of: path) + ".qtool-\(getpid()).tmp"
        do {
            try HDF5.locked { () throws(HDF5Error) in try writeFile(temporary, targets: targets, layout: layout, reportingAs: path) }
            try commit(temporary, to: path)
        } catch {
            unlink(temporary)
            throw error
        }
    }

    private static func writeFile(
        _ temporary: String, targets: [(path: String, tensor: Tensor, attributes: [HDF5Attribute])], layout: HDF5Layout?,
        reportingAs path: String
    ) throws(HDF5Error) {
        let id = H5Fcreate(temporary, qtool_H5F_ACC_TRUNC(), HDF5.defaultProperties, HDF5.defaultProperties)
        guard id >= 0 else { throw .cannotWrite(path: path, object: "/", reason: HDF5.lastError()) }
        let file = HDF5Handle(id, .file)
        let linkProperties = HDF5Handle(H5Pcreate(qtool_H5P_LINK_CREATE()), .propertyList)
        H5Pset_create_intermediate_group(linkProperties.id, 1)
        for group in layout?.groups ?? [] {
            let handle: HDF5Handle
            if group.path == "/" {
                handle = HDF5Handle(H5Oopen(file.id, "/", HDF5.defaultProperties), .object)
            } else {
                let created = H5Gcreate2(file.id, group.path, linkProperties.id, HDF5.defaultProperties, HDF5.defaultProperties)
                guard created >= 0 else { throw .cannotWrite(path: path, object: group.path, reason: HDF5.lastError()) }
                handle = HDF5Handle(created, .object)
            }
            guard HDF5Attributes.write(group.attributes, on: handle.id) else {
                throw .cannotWrite(path: path, object: group.path, reason: HDF5.lastError())
            }
        }
        for target in targets {
            let type = HDF5ElementType.fileType(for: target.tensor.dtype)!
            let space: HDF5Handle
            if target.tensor.shape.rank == 0 {
                space = HDF5Handle(H5Screate(H5S_SCALAR), .dataspace)
            } else {
                let dims = target.tensor.shape.dimensions.map { hsize_t($0) }
                space = HDF5Handle(H5Screate_simple(Int32(dims.count), dims, nil), .dataspace)
            }
            let created = H5Dcreate2(file.id, target.path, type.id, space.id, linkProperties.id, HDF5.defaultProperties, HDF5.defaultProperties)
            guard created >= 0 else { throw .cannotWrite(path: path, object: target.path, reason: HDF5.lastError()) }
            let dataset = HDF5Handle(created, .object)
            let status = target.tensor.withBytes { bytes in
                H5Dwrite(dataset.id, type.id, qtool_H5S_ALL(), qtool_H5S_ALL(), HDF5.defaultProperties, bytes.baseAddress)
            }
            guard status >= 0, HDF5Attributes.write(target.attributes, on: dataset.id) else {
                throw .cannotWrite(path: path, object: target.path, reason: HDF5.lastError())
            }
            // A mapped source has been read; its pages need not stay resident.
            target.tensor.releaseResidentPages()
        }
        guard H5Fflush(file.id, H5F_SCOPE_GLOBAL) >= 0 else { throw .cannotWrite(path: path, object: "/", reason: HDF5.lastError()) }
    }

    /// fsyncs the finished temporary, renames it over `path` and syncs the folder.
    private static func commit(_ temporary: String, to path: String) throws(HDF5Error) {
        let fd = open(temporary, O_RDONLY)
        guard fd >= 0, fsync(fd) == 0 else {
            if fd >= 0 { close(fd) }
            throw .cannotWrite(path: path, object: "/", reason: String(cString: strerror(errno)))
        }
        close(fd)
        guard rename(temporary, path) == 0 else { throw .cannotWrite(path: path, object: "/", reason: String(cString: strerror(errno))) }
        let folder = open(FilePaths.directory(of: path), O_RDONLY | O_DIRECTORY)
        if folder >= 0 {
            fsync(folder)
            close(folder)
        }
    }
}

/// Keras Dense kernels are `[in, out]`, torch Linear weights `[out, in]`: which tensors
/// `convert --layout torch|keras` transposes.
public enum KerasKernels {
    /// A 2-D `kernel` (legacy Keras names, `kernel` or `kernel:0`), or variable 0 of a Keras 3
    /// `dense` layer group (`layers/dense_1/vars/0`).
    public static func isDenseKernel(name: String, shape: Shape) -> Bool {
        guard shape.rank == 2 else { return false }
        let parts = name.split(separator: ".")
        guard let last = parts.last else { return false }
        if last == "kernel" || last == "kernel:0" { return true }
        if last == "0", parts.count >= 3, parts[parts.count - 2] == "vars" {
            return parts[parts.count - 3].hasPrefix("dense")
        }
        return false
    }

    /// The 2-D tensor transposed.
    public static func transposed(_ tensor: Tensor) -> Tensor {
        let rows = tensor.shape.dimensions[0], columns = tensor.shape.dimensions[1]
        let width = tensor.dtype.bitSize / 8
        let output = OwnedBytes(count: tensor.byteCount)
        tensor.withBytes { source in
            for row in 0..<rows {
                for column in 0..<columns {
                    (output.buffer.baseAddress! + (column * rows + row) * width)
                        .copyMemory(from: source.baseAddress! + (row * columns + column) * width, byteCount: width)
                }
            }
        }
        return Tensor(dtype: tensor.dtype, shape: Shape([columns, rows]), storage: .owned(output))
    }
}
