import CHDF5
import Foundation
import TensorCore

/// Sizes qtool accepts from an HDF5 file before allocating anything for them.
public enum HDF5Limits {
    /// Deflate, the strongest filter libhdf5 ships, expands at most about 1032:1; a chunked or
    /// filtered dataset that declares more than this times its stored bytes (plus
    /// `unstoredAllowance`) is refused instead of being read as fill values.
    public static let maximumExpansion = 1032
    /// Bytes a dataset may declare beyond its stored bytes (small datasets written lazily).
    public static let unstoredAllowance = 1 << 20
    /// Bytes one attribute may hold (Keras keeps model configs of a few hundred KB in attributes).
    public static let maximumAttributeBytes = 16 << 20
    /// Group nesting, so a hostile tree cannot exhaust the stack.
    public static let maximumDepth = 256
    /// The JSON of the groups and attributes qtool carries in the safetensors metadata.
    public static let maximumLayoutBytes = 64 << 20
    /// One piece of a dataset read or written at a time.
    public static let slabBytes = 8 << 20
}

/// A hyperslab: `count` elements from `start` along each dimension.
struct HDF5Slab: Codable, Equatable {
    var start: [Int]
    var count: [Int]

    var elementCount: Int { count.reduce(1, *) }
}

enum HDF5Slabs {
    /// Pieces of a dataset of `shape`, in row-major order, each a hyperslab of consecutive
    /// elements of at most about `maxBytes` (one element at least): whole rows where a row fits,
    /// else parts of a row.
    static func plan(shape: [Int], elementBytes: Int, maxBytes: Int = HDF5Limits.slabBytes) -> [HDF5Slab] {
        if shape.isEmpty { return [HDF5Slab(start: [], count: [])] }
        if shape.contains(0) { return [] }
        let rank = shape.count
        // The outermost dimension k whose inner block (dimensions after k) fits.
        var k = rank - 1
        var inner = 1
        while k > 0, inner * shape[k] * elementBytes <= maxBytes {
            inner *= shape[k]
            k -= 1
        }
        let perSlab = max(1, min(shape[k], maxBytes / max(1, inner * elementBytes)))
        var slabs: [HDF5Slab] = []
        var outer = [Int](repeating: 0, count: k)
        while true {
            var position = 0
            while position < shape[k] {
                let length = min(perSlab, shape[k] - position)
                slabs.append(
                    HDF5Slab(
                        start: outer + [position] + [Int](repeating: 0, count: rank - k - 1),
                        count: [Int](repeating: 1, count: k) + [length] + Array(shape[(k + 1)...])))
                position += length
            }
            // The next index of the dimensions before k, odometer style.
            var d = k - 1
            while d >= 0 {
                outer[d] += 1
                if outer[d] < shape[d] { break }
                outer[d] = 0
                d -= 1
            }
            if d < 0 { break }
        }
        return slabs
    }
}

/// A numeric dataset as the helper describes it.
struct HDF5DatasetInfo: Codable, Equatable {
    var name: String
    var path: String
    var dtype: String
    var shape: [Int]
    /// Where the bytes lie in the file when they can be mapped as they are: `[start, end)`.
    var fileRange: [Int]?
}

/// Something in the file that qtool does not carry over, and why.
public struct HDF5Skipped: Codable, Equatable, Sendable {
    public enum Kind: String, Codable, Sendable {
        case dataset, link, attribute
    }
    public var kind: Kind
    /// The dataset's or link's path; for an attribute, its object's.
    public var path: String
    /// An attribute's name.
    public var name: String? = nil
    public var reason: String

    /// How a warning names it: `dataset '/labels' …`, `attribute 'units' of '/g' …`.
    public var description: String {
        kind == .attribute ? "attribute '\(name ?? "")' of '\(path)' \(reason)" : "\(kind.rawValue) '\(path)' \(reason)"
    }
}

/// What opening a file finds: its kind, its numeric datasets, what was skipped and why, and the
/// groups and attributes (JSON of `HDF5Layout`).
struct HDF5Description: Codable {
    var kind: String
    var datasets: [HDF5DatasetInfo]
    var skipped: [HDF5Skipped]
    var layout: String
}

/// A dataset to create when writing.
struct HDF5DatasetSpec: Codable {
    var path: String
    var dtype: String
    var shape: [Int]
}

/// libhdf5's part of reading and writing, done in qtool's helper process for untrusted files (or
/// in-process for files a test made). Every call runs under the library lock.
final class HDF5Session {
    private var file: HDF5Handle?
    private var path = ""
    private var datasets: [HDF5DatasetInfo] = []
    /// Writing: where errors point, and the layout's groups and attributes.
    private var reportedPath = ""
    private var layout: HDF5Layout?
    private var created: [HDF5DatasetSpec] = []
    private var linkProperties: HDF5Handle?

    // MARK: Reading

    func open(path: String, allowExternal: Bool) throws(HDF5Error) -> HDF5Description {
        try HDF5.locked { () throws(HDF5Error) -> HDF5Description in
            self.path = path
            let access = HDF5.fileAccess()
            let id = withExtendedLifetime(access) { H5Fopen(path, qtool_H5F_ACC_RDONLY(), access.id) }
            guard id >= 0 else { throw .cannotOpen(path: path, reason: HDF5.lastError()) }
            let file = HDF5Handle(id, .file)
            self.file = file
            var walker = TreeWalker(path: path, allowExternal: allowExternal, file: file.id)
            try walker.walk(file.id, groupPath: "/", depth: 0)
            datasets = walker.datasets
            let layout = HDF5Layout(groups: walker.groups, datasets: walker.datasetLayouts)
            let layoutText = layout.json.compactSerialized()
            guard layoutText.utf8.count <= HDF5Limits.maximumLayoutBytes else {
                throw .cannotRead(
                    path: path, object: "/", reason: "its groups and attributes take more than \(HDF5Limits.maximumLayoutBytes) bytes")
            }
            let groupPaths = Set(walker.groups.map(\.path))
            let kind: HDF5Kind
            if groupPaths.contains("/layers") && groupPaths.contains("/vars") {
                kind = .keras3
            } else if groupPaths.contains("/model_weights")
                || walker.groups.first?.attributes.contains(where: { $0.name == "layer_names" }) == true
            {
                kind = .kerasLegacy
            } else {
                kind = .generic
            }
            return HDF5Description(kind: kind.rawValue, datasets: datasets, skipped: walker.skipped, layout: layoutText)
        }
    }

    func dtype(of index: Int) throws(HDF5Error) -> DType {
        guard datasets.indices.contains(index), let dtype = DType(rawValue: datasets[index].dtype) else {
            throw .cannotRead(path: path, object: "?", reason: "no such dataset")
        }
        return dtype
    }

    /// Reads one slab of dataset `index` into `buffer` (exactly its bytes).
    func read(dataset index: Int, slab: HDF5Slab, into buffer: UnsafeMutableRawBufferPointer) throws(HDF5Error) {
        guard let file, datasets.indices.contains(index) else { throw .cannotRead(path: path, object: "?", reason: "no such dataset") }
        let info = datasets[index]
        guard let dtype = DType(rawValue: info.dtype), slab.start.count == info.shape.count, slab.count.count == info.shape.count,
            buffer.count == slab.elementCount * dtype.bitSize / 8
        else { throw .cannotRead(path: path, object: info.path, reason: "a malformed slab request") }
        try transfer(file, info.path, slab, failure: { .cannotRead(path: path, object: info.path, reason: $0) }) {
            dataset, memorySpace, fileSpace in
            let stored = HDF5Handle(H5Dget_type(dataset), .datatype)
            let memoryType = HDF5ElementType.memoryType(for: stored.id, dtype: dtype)
            return H5Dread(dataset, memoryType.id, memorySpace, fileSpace, HDF5.defaultProperties, buffer.baseAddress)
        }
    }

    /// Opens a dataset and runs a read or write of one slab on it (dataset, memory space, file
    /// space); a failure becomes `failure` of libhdf5's message.
    private func transfer(
        _ file: HDF5Handle, _ datasetPath: String, _ slab: HDF5Slab, failure: (String) -> HDF5Error, _ body: (hid_t, hid_t, hid_t) -> herr_t
    ) throws(HDF5Error) {
        try HDF5.locked { () throws(HDF5Error) in
            let id = H5Dopen2(file.id, datasetPath, HDF5.defaultProperties)
            guard id >= 0 else { throw failure(HDF5.lastError()) }
            let dataset = HDF5Handle(id, .object)
            let (memorySpace, fileSpace) = try selection(dataset.id, slab, object: datasetPath)
            guard body(dataset.id, memorySpace.id, fileSpace.id) >= 0 else { throw failure(HDF5.lastError()) }
        }
    }

    /// The file and memory dataspaces of a slab (scalars take the whole space).
    private func selection(_ dataset: hid_t, _ slab: HDF5Slab, object: String) throws(HDF5Error) -> (HDF5Handle, HDF5Handle) {
        let fileSpace = HDF5Handle(H5Dget_space(dataset), .dataspace)
        if slab.count.isEmpty { return (HDF5Handle(H5Screate(H5S_SCALAR), .dataspace), fileSpace) }
        let start = slab.start.map { hsize_t($0) }
        let count = slab.count.map { hsize_t($0) }
        guard H5Sselect_hyperslab(fileSpace.id, H5S_SELECT_SET, start, nil, count, nil) >= 0 else {
            throw .cannotRead(path: path, object: object, reason: HDF5.lastError())
        }
        return (HDF5Handle(H5Screate_simple(Int32(count.count), count, nil), .dataspace), fileSpace)
    }

    // MARK: Writing

    /// Creates the file at `temporaryPath` with the layout's groups and their attributes.
    func create(temporaryPath: String, reportedPath: String, layout: HDF5Layout?) throws(HDF5Error) {
        self.reportedPath = reportedPath
        self.layout = layout
        try HDF5.locked { () throws(HDF5Error) in
            let access = HDF5.fileAccess()
            let id = withExtendedLifetime(access) { H5Fcreate(temporaryPath, qtool_H5F_ACC_TRUNC(), HDF5.defaultProperties, access.id) }
            guard id >= 0 else { throw .cannotWrite(path: reportedPath, object: "/", reason: HDF5.lastError()) }
            let file = HDF5Handle(id, .file)
            self.file = file
            let properties = HDF5Handle(H5Pcreate(qtool_H5P_LINK_CREATE()), .propertyList)
            H5Pset_create_intermediate_group(properties.id, 1)
            linkProperties = properties
            for group in layout?.groups ?? [] {
                let handle: HDF5Handle
                if group.path == "/" {
                    handle = HDF5Handle(H5Oopen(file.id, "/", HDF5.defaultProperties), .object)
                } else {
                    let created = H5Gcreate2(file.id, group.path, properties.id, HDF5.defaultProperties, HDF5.defaultProperties)
                    guard created >= 0 else { throw .cannotWrite(path: reportedPath, object: group.path, reason: HDF5.lastError()) }
                    handle = HDF5Handle(created, .object)
                }
                guard HDF5Attributes.write(group.attributes, on: handle.id) else {
                    throw .cannotWrite(path: reportedPath, object: group.path, reason: HDF5.lastError())
                }
            }
        }
    }

    /// Creates a dataset (with the layout's attributes for its path); returns its index.
    func addDataset(_ spec: HDF5DatasetSpec) throws(HDF5Error) -> Int {
        guard let file, let linkProperties, let dtype = DType(rawValue: spec.dtype), let type = HDF5ElementType.fileType(for: dtype),
            spec.shape.allSatisfy({ $0 >= 0 }), CheckedSize.product(spec.shape) != nil
        else { throw .cannotWrite(path: reportedPath, object: spec.path, reason: "a malformed dataset request") }
        let attributes = layout?.datasets.first { $0.path == spec.path }?.attributes ?? []
        try HDF5.locked { () throws(HDF5Error) in
            let space: HDF5Handle
            if spec.shape.isEmpty {
                space = HDF5Handle(H5Screate(H5S_SCALAR), .dataspace)
            } else {
                let dims = spec.shape.map { hsize_t($0) }
                space = HDF5Handle(H5Screate_simple(Int32(dims.count), dims, nil), .dataspace)
            }
            let id = H5Dcreate2(file.id, spec.path, type.id, space.id, linkProperties.id, HDF5.defaultProperties, HDF5.defaultProperties)
            guard id >= 0 else { throw .cannotWrite(path: reportedPath, object: spec.path, reason: HDF5.lastError()) }
            let dataset = HDF5Handle(id, .object)
            guard HDF5Attributes.write(attributes, on: dataset.id) else {
                throw .cannotWrite(path: reportedPath, object: spec.path, reason: HDF5.lastError())
            }
        }
        created.append(spec)
        return created.count - 1
    }

    /// Writes one slab of dataset `index` from `bytes` (exactly its bytes).
    func write(dataset index: Int, slab: HDF5Slab, bytes: UnsafeRawBufferPointer) throws(HDF5Error) {
        guard let file, created.indices.contains(index) else {
            throw .cannotWrite(path: reportedPath, object: "?", reason: "no such dataset")
        }
        let spec = created[index]
        guard let dtype = DType(rawValue: spec.dtype), let type = HDF5ElementType.fileType(for: dtype),
            slab.start.count == spec.shape.count, slab.count.count == spec.shape.count,
            bytes.count == slab.elementCount * dtype.bitSize / 8
        else { throw .cannotWrite(path: reportedPath, object: spec.path, reason: "a malformed slab") }
        try transfer(file, spec.path, slab, failure: { .cannotWrite(path: reportedPath, object: spec.path, reason: $0) }) {
            dataset, memorySpace, fileSpace in
            H5Dwrite(dataset, type.id, memorySpace, fileSpace, HDF5.defaultProperties, bytes.baseAddress)
        }
    }

    /// Flushes and closes the file being written.
    func finish() throws(HDF5Error) {
        guard let file else { return }
        try HDF5.locked { () throws(HDF5Error) in
            guard H5Fflush(file.id, H5F_SCOPE_GLOBAL) >= 0 else {
                throw .cannotWrite(path: reportedPath, object: "/", reason: HDF5.lastError())
            }
        }
        linkProperties = nil
        self.file = nil
    }
}

/// Walks groups depth first, links in name order, collecting datasets, groups and attributes.
/// Each object is visited once (a second hard link to it, or a cycle, is skipped with a warning);
/// links and storage that lead outside the file are refused unless allowed.
struct TreeWalker {
    let path: String
    let allowExternal: Bool
    let file: hid_t
    var datasets: [HDF5DatasetInfo] = []
    var skipped: [HDF5Skipped] = []
    var groups: [HDF5Layout.Group] = []
    var datasetLayouts: [HDF5Layout.DatasetEntry] = []
    /// Objects seen (file number and address), with the first path to each.
    var visited: [ObjectKey: String] = [:]
    let userBlock: Int
    /// libhdf5's number of the file itself: an object with another number was reached through
    /// an external link and lies in another file.
    var rootFile: UInt = 0

    struct ObjectKey: Hashable {
        let file: UInt
        let address: UInt64
    }

    init(path: String, allowExternal: Bool, file: hid_t) {
        self.path = path
        self.allowExternal = allowExternal
        self.file = file
        // Addresses count from the superblock, which follows any user block.
        let creation = HDF5Handle(H5Fget_create_plist(file), .propertyList)
        var size: hsize_t = 0
        H5Pget_userblock(creation.id, &size)
        userBlock = Int(clamping: size)
        rootFile = address(file)?.file ?? 0
    }

    /// Which file the object lies in, and where, or nil when libhdf5 cannot tell.
    func address(_ object: hid_t) -> ObjectKey? {
        var info = H5O_info_t()
        guard H5Oget_info2(object, &info, UInt32(H5O_INFO_BASIC)) >= 0 else { return nil }
        return ObjectKey(file: info.fileno, address: UInt64(info.addr))
    }

    mutating func walk(_ group: hid_t, groupPath: String, depth: Int) throws(HDF5Error) {
        guard depth <= HDF5Limits.maximumDepth else {
            throw .cannotRead(path: path, object: groupPath, reason: "groups nested more than \(HDF5Limits.maximumDepth) deep")
        }
        if let address = address(group) { visited[address] = groupPath }
        var warnings: [HDF5Skipped] = []
        groups.append(
            HDF5Layout.Group(
                path: groupPath, attributes: try HDF5Attributes.read(group, objectPath: groupPath, file: path, skipped: &warnings)))
        skipped += warnings
        var info = H5G_info_t()
        guard H5Gget_info(group, &info) >= 0 else { throw .cannotRead(path: path, object: groupPath, reason: HDF5.lastError()) }
        for index in 0..<info.nlinks {
            let length = H5Lget_name_by_idx(group, ".", H5_INDEX_NAME, H5_ITER_INC, index, nil, 0, HDF5.defaultProperties)
            guard length >= 0, length < 1 << 16 else { throw .cannotRead(path: path, object: groupPath, reason: HDF5.lastError()) }
            var buffer = [CChar](repeating: 0, count: Int(length) + 1)
            H5Lget_name_by_idx(group, ".", H5_INDEX_NAME, H5_ITER_INC, index, &buffer, buffer.count, HDF5.defaultProperties)
            let name = HDF5.string(buffer)
            let childPath = (groupPath == "/" ? "" : groupPath) + "/" + name
            var link = H5L_info_t()
            guard H5Lget_info(group, name, &link, HDF5.defaultProperties) >= 0 else {
                throw .cannotRead(path: path, object: childPath, reason: HDF5.lastError())
            }
            if link.type == H5L_TYPE_EXTERNAL && !allowExternal {
                throw .external(path: path, object: childPath, what: "is an external link to another file")
            }
            if link.type != H5L_TYPE_HARD && link.type != H5L_TYPE_SOFT && link.type != H5L_TYPE_EXTERNAL {
                skipped.append(HDF5Skipped(kind: .link, path: childPath, reason: "is a user-defined link"))
                continue
            }
            let id = H5Oopen(group, name, HDF5.defaultProperties)
            guard id >= 0 else {
                skipped.append(HDF5Skipped(kind: .link, path: childPath, reason: "cannot be opened (\(HDF5.lastError()))"))
                continue
            }
            let child = HDF5Handle(id, .object)
            if let address = address(child.id), let first = visited[address] {
                skipped.append(HDF5Skipped(kind: .link, path: childPath, reason: "is another link to '\(first)', already read"))
                continue
            }
            switch H5Iget_type(child.id) {
            case H5I_GROUP: try walk(child.id, groupPath: childPath, depth: depth + 1)
            case H5I_DATASET:
                if let address = address(child.id) { visited[address] = childPath }
                try inspect(child.id, path: childPath)
            default: skipped.append(HDF5Skipped(kind: .link, path: childPath, reason: "is not a group or a dataset"))
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
            skipped.append(HDF5Skipped(kind: .dataset, path: datasetPath, reason: reason))
            return
        }
        let dimensions: [Int]
        switch H5Sget_simple_extent_type(space.id) {
        case H5S_SCALAR: dimensions = []
        case H5S_SIMPLE:
            let rank = Int(H5Sget_simple_extent_ndims(space.id))
            guard rank >= 0, rank <= 32 else { throw .cannotRead(path: path, object: datasetPath, reason: "a dataspace of rank \(rank)") }
            var dims = [hsize_t](repeating: 0, count: rank)
            H5Sget_simple_extent_dims(space.id, &dims, nil)
            var checked: [Int] = []
            for dim in dims {
                guard let value = Int(exactly: dim) else {
                    throw .cannotRead(path: path, object: datasetPath, reason: "a dimension of \(dim) is beyond the addressable size")
                }
                checked.append(value)
            }
            dimensions = checked
        default:
            skipped.append(HDF5Skipped(kind: .dataset, path: datasetPath, reason: "has no data (a null dataspace)"))
            return
        }
        guard let count = CheckedSize.product(dimensions), let byteCount = CheckedSize.multiply(count, dtype.bitSize / 8) else {
            throw .cannotRead(path: path, object: datasetPath, reason: "shape \(dimensions) overflows the addressable size")
        }
        let creation = HDF5Handle(H5Dget_create_plist(dataset), .propertyList)
        let layout = H5Pget_layout(creation.id)
        if !allowExternal {
            if H5Pget_external_count(creation.id) > 0 {
                throw .external(path: path, object: datasetPath, what: "keeps its data in an external file")
            }
            if layout == H5D_VIRTUAL {
                throw .external(path: path, object: datasetPath, what: "is a virtual dataset drawn from other datasets")
            }
        }
        // What the file stores must account for what the dataset declares: a dataset declared
        // huge with nothing (or little) stored would read back as petabytes of fill values.
        let stored = Int(clamping: H5Dget_storage_size(dataset))
        let external = H5Pget_external_count(creation.id) > 0 || layout == H5D_VIRTUAL
        let (bound, overflow) = stored.multipliedReportingOverflow(by: HDF5Limits.maximumExpansion)
        if !external, !overflow, byteCount > bound + HDF5Limits.unstoredAllowance {
            throw .cannotRead(
                path: path, object: datasetPath,
                reason: "declares \(byteCount) bytes (shape \(dimensions)) but stores \(stored); no HDF5 filter expands that far")
        }
        var fileRange: [Int]? = nil
        let inThisFile = address(dataset)?.file == rootFile
        if layout == H5D_CONTIGUOUS, H5Pget_nfilters(creation.id) == 0, !external, inThisFile,
            H5Tget_size(type.id) == 1 || H5Tget_order(type.id) == H5T_ORDER_LE, stored == byteCount
        {
            let offset = H5Dget_offset(dataset)
            if offset != qtool_HADDR_UNDEF(), let start = Int(exactly: UInt64(offset)).flatMap({ CheckedSize.add($0, userBlock) }),
                let end = CheckedSize.add(start, byteCount)
            {
                fileRange = [start, end]
            }
        }
        let name = String(datasetPath.dropFirst().replacing("/", with: "."))
        datasets.append(HDF5DatasetInfo(name: name, path: datasetPath, dtype: dtype.rawValue, shape: dimensions, fileRange: fileRange))
        var warnings: [HDF5Skipped] = []
        let attributes = try HDF5Attributes.read(dataset, objectPath: datasetPath, file: path, skipped: &warnings)
        skipped += warnings
        datasetLayouts.append(HDF5Layout.DatasetEntry(tensor: name, path: datasetPath, attributes: attributes))
    }
}
