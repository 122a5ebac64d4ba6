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
/// in-process for files a test made), through the wrappers of `HDF5` (each call under the
/// library lock).
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
        self.path = path
        let file = try HDF5.mapped({ .cannotOpen(path: path, reason: $0) }) { () throws(HDF5CallError) in try HDF5.openFile(path) }
        self.file = file
        var walker = try TreeWalker(path: path, allowExternal: allowExternal, file: file)
        try walker.walk(file, groupPath: "/", depth: 0)
        datasets = walker.datasets
        let layout = HDF5Layout(groups: walker.groups, datasets: walker.datasetLayouts)
        let layoutText = layout.json.serialized(.compact)
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
        try HDF5.mapped({ .cannotRead(path: path, object: info.path, reason: $0) }) { () throws(HDF5CallError) in
            let dataset = try HDF5.openDataset(file, info.path)
            let memoryType = try HDF5ElementType.memoryType(for: try HDF5.datasetType(dataset), dtype: dtype)
            try HDF5.read(dataset, slab, as: memoryType, into: buffer)
        }
    }

    // MARK: Writing

    /// Creates the file at `temporaryPath` with the layout's groups and their attributes.
    func create(temporaryPath: String, reportedPath: String, layout: HDF5Layout?) throws(HDF5Error) {
        self.reportedPath = reportedPath
        self.layout = layout
        let (file, properties) = try HDF5.mapped({ .cannotWrite(path: reportedPath, object: "/", reason: $0) }) {
            () throws(HDF5CallError) in (try HDF5.createFile(temporaryPath), try HDF5.linkCreationProperties())
        }
        self.file = file
        linkProperties = properties
        for group in layout?.groups ?? [] {
            try HDF5.mapped({ .cannotWrite(path: reportedPath, object: group.path, reason: $0) }) { () throws(HDF5CallError) in
                let handle =
                    group.path == "/" ? try HDF5.openObject(file, "/") : try HDF5.createGroup(file, group.path, linkProperties: properties)
                try HDF5Attributes.write(group.attributes, on: handle)
            }
        }
    }

    /// Creates a dataset (with the layout's attributes for its path); returns its index.
    func addDataset(_ spec: HDF5DatasetSpec) throws(HDF5Error) -> Int {
        guard let file, let linkProperties, let dtype = DType(rawValue: spec.dtype), HDF5ElementType.writable.contains(dtype),
            spec.shape.allSatisfy({ $0 >= 0 }), CheckedSize.product(spec.shape) != nil
        else { throw .cannotWrite(path: reportedPath, object: spec.path, reason: "a malformed dataset request") }
        let attributes = layout?.datasets.first { $0.path == spec.path }?.attributes ?? []
        try HDF5.mapped({ .cannotWrite(path: reportedPath, object: spec.path, reason: $0) }) { () throws(HDF5CallError) in
            let type = try HDF5ElementType.fileType(for: dtype)
            let dataset = try HDF5.createDataset(file, spec.path, type: type, shape: spec.shape, linkProperties: linkProperties)
            try HDF5Attributes.write(attributes, on: dataset)
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
        guard let dtype = DType(rawValue: spec.dtype), HDF5ElementType.writable.contains(dtype),
            slab.start.count == spec.shape.count, slab.count.count == spec.shape.count,
            bytes.count == slab.elementCount * dtype.bitSize / 8
        else { throw .cannotWrite(path: reportedPath, object: spec.path, reason: "a malformed slab") }
        try HDF5.mapped({ .cannotWrite(path: reportedPath, object: spec.path, reason: $0) }) { () throws(HDF5CallError) in
            let dataset = try HDF5.openDataset(file, spec.path)
            try HDF5.write(dataset, slab, as: try HDF5ElementType.fileType(for: dtype), from: bytes)
        }
    }

    /// Flushes and closes the file being written.
    func finish() throws(HDF5Error) {
        guard let file else { return }
        linkProperties = nil
        self.file = nil
        try HDF5.mapped({ .cannotWrite(path: reportedPath, object: "/", reason: $0) }) { () throws(HDF5CallError) in
            try HDF5.flush(file)
            try file.close()
        }
    }
}

/// Walks groups depth first, links in name order, collecting datasets, groups and attributes.
/// Each object is visited once (a second hard link to it, or a cycle, is skipped with a warning);
/// links and storage that lead outside the file are refused unless allowed.
struct TreeWalker {
    let path: String
    let allowExternal: Bool
    var datasets: [HDF5DatasetInfo] = []
    var skipped: [HDF5Skipped] = []
    var groups: [HDF5Layout.Group] = []
    var datasetLayouts: [HDF5Layout.DatasetEntry] = []
    /// Objects seen (file number and address), with the first path to each.
    var visited: [HDF5.ObjectAddress: String] = [:]
    let userBlock: Int
    /// libhdf5's number of the file itself: an object with another number was reached through
    /// an external link and lies in another file.
    var rootFile: UInt = 0

    init(path: String, allowExternal: Bool, file: HDF5Handle) throws(HDF5Error) {
        self.path = path
        self.allowExternal = allowExternal
        // Addresses count from the superblock, which follows any user block.
        userBlock = try HDF5.mapped({ .cannotRead(path: path, object: "/", reason: $0) }) { () throws(HDF5CallError) in
            try HDF5.userBlockSize(file)
        }
        rootFile = (try? HDF5.address(file))?.file ?? 0
    }

    mutating func walk(_ group: HDF5Handle, groupPath: String, depth: Int) throws(HDF5Error) {
        guard depth <= HDF5Limits.maximumDepth else {
            throw .cannotRead(path: path, object: groupPath, reason: "groups nested more than \(HDF5Limits.maximumDepth) deep")
        }
        if let address = try? HDF5.address(group) { visited[address] = groupPath }
        var warnings: [HDF5Skipped] = []
        groups.append(
            HDF5Layout.Group(
                path: groupPath, attributes: try HDF5Attributes.read(group, objectPath: groupPath, file: path, skipped: &warnings)))
        skipped += warnings
        let filePath = path
        func fail(_ object: String) -> (String) -> HDF5Error { { .cannotRead(path: filePath, object: object, reason: $0) } }
        let linkCount = try HDF5.mapped(fail(groupPath)) { () throws(HDF5CallError) in try HDF5.linkCount(group) }
        for index in 0..<linkCount {
            let name = try HDF5.mapped(fail(groupPath)) { () throws(HDF5CallError) in try HDF5.linkName(group, index) }
            let childPath = (groupPath == "/" ? "" : groupPath) + "/" + name
            let link = try HDF5.mapped(fail(childPath)) { () throws(HDF5CallError) in try HDF5.linkKind(group, name) }
            if link == .external && !allowExternal {
                throw .external(path: path, object: childPath, what: "is an external link to another file")
            }
            if link == .userDefined {
                skipped.append(HDF5Skipped(kind: .link, path: childPath, reason: "is a user-defined link"))
                continue
            }
            let child: HDF5Handle
            do throws(HDF5CallError) {
                child = try HDF5.openObject(group, name)
            } catch {
                skipped.append(HDF5Skipped(kind: .link, path: childPath, reason: "cannot be opened (\(error.reason))"))
                continue
            }
            let address = try? HDF5.address(child)
            if let address, let first = visited[address] {
                skipped.append(HDF5Skipped(kind: .link, path: childPath, reason: "is another link to '\(first)', already read"))
                continue
            }
            switch try HDF5.mapped(fail(childPath), { () throws(HDF5CallError) in try HDF5.kind(child) }) {
            case .group: try walk(child, groupPath: childPath, depth: depth + 1)
            case .dataset:
                if let address { visited[address] = childPath }
                try inspect(child, path: childPath)
            case .other: skipped.append(HDF5Skipped(kind: .link, path: childPath, reason: "is not a group or a dataset"))
            }
        }
    }

    mutating func inspect(_ dataset: HDF5Handle, path datasetPath: String) throws(HDF5Error) {
        let path = path
        func fail(_ reason: String) -> HDF5Error { .cannotRead(path: path, object: datasetPath, reason: reason) }
        let (type, elementType) = try HDF5.mapped(fail) { () throws(HDF5CallError) in
            let type = try HDF5.datasetType(dataset)
            return (type, try HDF5ElementType.of(type))
        }
        let dtype: DType
        switch elementType {
        case .numeric(let numeric): dtype = numeric
        case .string:
            skipped.append(HDF5Skipped(kind: .dataset, path: datasetPath, reason: "holds strings, not numbers"))
            return
        case .other(let what):
            skipped.append(HDF5Skipped(kind: .dataset, path: datasetPath, reason: "holds \(what), not numbers"))
            return
        }
        let (extent, storage, littleEndian) = try HDF5.mapped(fail) { () throws(HDF5CallError) in
            (try HDF5.extent(try HDF5.space(of: dataset)), try HDF5.storage(dataset), try HDF5.isLittleEndian(type))
        }
        let dimensions: [Int]
        switch extent {
        case .scalar: dimensions = []
        case .simple(let dims):
            var checked: [Int] = []
            for dim in dims {
                guard let value = Int(exactly: dim) else { throw fail("a dimension of \(dim) is beyond the addressable size") }
                checked.append(value)
            }
            dimensions = checked
        case .null:
            skipped.append(HDF5Skipped(kind: .dataset, path: datasetPath, reason: "has no data (a null dataspace)"))
            return
        }
        guard let count = CheckedSize.product(dimensions), let byteCount = CheckedSize.multiply(count, dtype.bitSize / 8) else {
            throw fail("shape \(dimensions) overflows the addressable size")
        }
        let external = storage.externalFiles > 0 || storage.layout == .virtual
        if !allowExternal {
            if storage.externalFiles > 0 {
                throw .external(path: path, object: datasetPath, what: "keeps its data in an external file")
            }
            if storage.layout == .virtual {
                throw .external(path: path, object: datasetPath, what: "is a virtual dataset drawn from other datasets")
            }
        }
        // What the file stores must account for what the dataset declares: a dataset declared
        // huge with nothing (or little) stored would read back as petabytes of fill values.
        let stored = storage.storedBytes
        let (bound, overflow) = stored.multipliedReportingOverflow(by: HDF5Limits.maximumExpansion)
        if !external, !overflow, byteCount > bound + HDF5Limits.unstoredAllowance {
            throw fail("declares \(byteCount) bytes (shape \(dimensions)) but stores \(stored); no HDF5 filter expands that far")
        }
        var fileRange: [Int]? = nil
        let inThisFile = (try? HDF5.address(dataset))?.file == rootFile
        if storage.layout == .contiguous, storage.filters == 0, !external, inThisFile, littleEndian, stored == byteCount,
            let offset = storage.offset, let start = Int(exactly: offset).flatMap({ CheckedSize.add($0, userBlock) }),
            let end = CheckedSize.add(start, byteCount)
        {
            fileRange = [start, end]
        }
        let name = String(datasetPath.dropFirst().replacing("/", with: "."))
        datasets.append(HDF5DatasetInfo(name: name, path: datasetPath, dtype: dtype.rawValue, shape: dimensions, fileRange: fileRange))
        var warnings: [HDF5Skipped] = []
        let attributes = try HDF5Attributes.read(dataset, objectPath: datasetPath, file: path, skipped: &warnings)
        skipped += warnings
        datasetLayouts.append(HDF5Layout.DatasetEntry(tensor: name, path: datasetPath, attributes: attributes))
    }
}
