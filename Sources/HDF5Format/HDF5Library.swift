// The only caller of libhdf5: every call in qtool goes through `HDF5.check` in this file, under
// the library lock, with its status checked. The other files call the typed wrappers below.
import CHDF5
import Foundation
import TensorCore

/// Errors of HDF5 files: which file, which object, what went wrong (libhdf5's own error stack is
/// never printed; its innermost message is kept as the reason).
public enum HDF5Error: FileError, Equatable, Codable {
    case cannotOpen(path: String, reason: String)
    case cannotRead(path: String, object: String, reason: String)
    case cannotWrite(path: String, object: String, reason: String)
    case unsupportedTensor(path: String, tensor: String, problem: String)
    case nameConflict(path: String, first: String, second: String)
    case invalidLayout(path: String, problem: String)
    /// Data the file keeps in other files (external links, external raw storage, virtual datasets).
    case external(path: String, object: String, what: String)
    /// qtool's HDF5 helper process died, stopped answering or answered nonsense (libhdf5 crashed
    /// or looped on a damaged file).
    case helperFailed(path: String, object: String, reason: String)

    public var path: String {
        switch self {
        case .cannotOpen(let path, _), .cannotRead(let path, _, _), .cannotWrite(let path, _, _),
            .unsupportedTensor(let path, _, _), .nameConflict(let path, _, _), .invalidLayout(let path, _),
            .external(let path, _, _), .helperFailed(let path, _, _):
            path
        }
    }

    public var problem: String {
        switch self {
        case .cannotOpen(_, let reason): "not a readable HDF5 file (\(reason))"
        case .cannotRead(_, let object, let reason): "cannot read '\(object)': \(reason)"
        case .cannotWrite(_, let object, let reason): "cannot write '\(object)': \(reason)"
        case .unsupportedTensor(_, let tensor, let problem): "tensor '\(tensor)': \(problem)"
        case .nameConflict(_, let first, let second):
            "tensors '\(first)' and '\(second)' cannot both be HDF5 paths (one would be a group and a dataset)"
        case .invalidLayout(_, let problem): "hdf5_layout metadata: \(problem)"
        case .external(_, let object, let what):
            "'\(object)' \(what), outside this file; refused (pass --allow-external to read it)"
        case .helperFailed(_, let object, let reason): "reading '\(object)': \(reason)"
        }
    }
}

/// A libhdf5 call that failed: which one, and libhdf5's innermost message (or qtool's, for a
/// value libhdf5 returned that qtool refuses).
struct HDF5CallError: Error, Equatable {
    let call: String
    let reason: String
}

/// The one place qtool calls libhdf5. The library (a serial build) is not thread-safe, so every
/// call goes through `check`, which holds the lock.
enum HDF5 {
    // Recursive: a handle released while a call holds the lock closes itself under the same lock.
    private static let lock = NSRecursiveLock()

    private static func locked<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        lock.lock()
        defer { lock.unlock() }
        // A thread-safe libhdf5 keeps an error stack, and its printing switch, per thread.
        qtool_H5_silence()
        return try body()
    }

    /// Runs one libhdf5 call under the lock: a negative result (hid_t, herr_t, htri_t, ssize_t,
    /// or an enumeration's error value), or `invalid` for a call that signals failure otherwise
    /// (a size of 0), is a failure with libhdf5's message as its reason.
    @discardableResult
    fileprivate static func check<T: BinaryInteger>(_ what: @autoclosure () -> String, invalid: T? = nil, _ body: () -> T)
        throws(HDF5CallError) -> T
    {
        try locked { () throws(HDF5CallError) -> T in
            let result = body()
            guard result >= 0, result != invalid else { throw HDF5CallError(call: what(), reason: lastError()) }
            return result
        }
    }

    /// Runs wrapped calls; a failure becomes `failure` of its reason.
    static func mapped<T>(_ failure: (String) -> HDF5Error, _ body: () throws(HDF5CallError) -> T) throws(HDF5Error) -> T {
        do {
            return try body()
        } catch {
            throw failure(error.reason)
        }
    }

    /// libhdf5's innermost message for the last failure (then clears its stack).
    private static func lastError() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        qtool_H5_last_error(&buffer)
        let text = string(buffer)
        return text.isEmpty ? "libhdf5 reported an error" : text
    }

    private static var defaultProperties: hid_t { qtool_H5P_DEFAULT() }

    /// A NUL-terminated C string in a buffer, as UTF-8.
    private static func string(_ buffer: [CChar]) -> String {
        String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// A name libhdf5 copies out: `call(nil, 0)` tells its length, `call(buffer, size)` fills it.
    /// Names longer than 64 KiB are refused.
    private static func name(_ what: String, _ call: (UnsafeMutablePointer<CChar>?, Int) -> Int) throws(HDF5CallError) -> String {
        let length = try check(what) { call(nil, 0) }
        guard length < 1 << 16 else { throw HDF5CallError(call: what, reason: "a name of \(length) bytes") }
        var buffer = [CChar](repeating: 0, count: length + 1)
        try check(what) { call(&buffer, buffer.count) }
        return string(buffer)
    }

    // MARK: Files

    /// File access without libhdf5's own flock: qtool locks its temporaries itself (to tell a
    /// killed run's leftovers from a write in progress), and reading needs no lock.
    private static func fileAccess() throws(HDF5CallError) -> HDF5Handle {
        let properties = try HDF5Handle.checked(.propertyList, "H5Pcreate") { H5Pcreate(qtool_H5P_FILE_ACCESS()) }
        try check("H5Pset_file_locking") { H5Pset_file_locking(properties.id, false, true) }
        return properties
    }

    /// `path` opened for reading.
    static func openFile(_ path: String) throws(HDF5CallError) -> HDF5Handle {
        let access = try fileAccess()
        defer { withExtendedLifetime(access) {} }
        return try HDF5Handle.checked(.file, "H5Fopen") { H5Fopen(path, qtool_H5F_ACC_RDONLY(), access.id) }
    }

    /// A new file at `path` (replacing any).
    static func createFile(_ path: String) throws(HDF5CallError) -> HDF5Handle {
        let access = try fileAccess()
        defer { withExtendedLifetime(access) {} }
        return try HDF5Handle.checked(.file, "H5Fcreate") { H5Fcreate(path, qtool_H5F_ACC_TRUNC(), defaultProperties, access.id) }
    }

    static func flush(_ file: HDF5Handle) throws(HDF5CallError) {
        try check("H5Fflush") { H5Fflush(file.id, H5F_SCOPE_GLOBAL) }
    }

    /// Bytes before the superblock (where a file's addresses count from).
    static func userBlockSize(_ file: HDF5Handle) throws(HDF5CallError) -> Int {
        let creation = try HDF5Handle.checked(.propertyList, "H5Fget_create_plist") { H5Fget_create_plist(file.id) }
        var size: hsize_t = 0
        try check("H5Pget_userblock") { H5Pget_userblock(creation.id, &size) }
        return Int(clamping: size)
    }

    /// The link-creation properties qtool writes with: missing groups on the way are created.
    static func linkCreationProperties() throws(HDF5CallError) -> HDF5Handle {
        let properties = try HDF5Handle.checked(.propertyList, "H5Pcreate") { H5Pcreate(qtool_H5P_LINK_CREATE()) }
        try check("H5Pset_create_intermediate_group") { H5Pset_create_intermediate_group(properties.id, 1) }
        return properties
    }

    // MARK: Groups, links and objects

    /// Which file an object lies in (libhdf5's number), and where.
    struct ObjectAddress: Hashable {
        let file: UInt
        let address: UInt64
    }

    private static func objectInfo(_ object: HDF5Handle, _ fields: UInt32) throws(HDF5CallError) -> H5O_info_t {
        var info = H5O_info_t()
        try check("H5Oget_info2") { H5Oget_info2(object.id, &info, fields) }
        return info
    }

    static func address(_ object: HDF5Handle) throws(HDF5CallError) -> ObjectAddress {
        let info = try objectInfo(object, H5O_INFO_BASIC)
        return ObjectAddress(file: info.fileno, address: UInt64(info.addr))
    }

    static func attributeCount(_ object: HDF5Handle) throws(HDF5CallError) -> Int {
        Int(clamping: try objectInfo(object, H5O_INFO_NUM_ATTRS).num_attrs)
    }

    enum ObjectKind { case group, dataset, other }

    static func kind(_ object: HDF5Handle) throws(HDF5CallError) -> ObjectKind {
        switch H5I_type_t(rawValue: try check("H5Iget_type") { H5Iget_type(object.id).rawValue }) {
        case H5I_GROUP: .group
        case H5I_DATASET: .dataset
        default: .other
        }
    }

    /// The object `name` leads to from `parent`.
    static func openObject(_ parent: HDF5Handle, _ name: String) throws(HDF5CallError) -> HDF5Handle {
        try HDF5Handle.checked(.object, "H5Oopen") { H5Oopen(parent.id, name, defaultProperties) }
    }

    /// A group at `path`, its missing parents created by `linkProperties`.
    static func createGroup(_ file: HDF5Handle, _ path: String, linkProperties: HDF5Handle) throws(HDF5CallError) -> HDF5Handle {
        try HDF5Handle.checked(.object, "H5Gcreate2") { H5Gcreate2(file.id, path, linkProperties.id, defaultProperties, defaultProperties) }
    }

    static func linkCount(_ group: HDF5Handle) throws(HDF5CallError) -> Int {
        var info = H5G_info_t()
        try check("H5Gget_info") { H5Gget_info(group.id, &info) }
        return Int(clamping: info.nlinks)
    }

    /// The name of link `index` of `group`, in name order.
    static func linkName(_ group: HDF5Handle, _ index: Int) throws(HDF5CallError) -> String {
        try name("H5Lget_name_by_idx") { buffer, size in
            H5Lget_name_by_idx(group.id, ".", H5_INDEX_NAME, H5_ITER_INC, hsize_t(index), buffer, size, defaultProperties)
        }
    }

    enum LinkKind { case hard, soft, external, userDefined }

    static func linkKind(_ group: HDF5Handle, _ name: String) throws(HDF5CallError) -> LinkKind {
        var link = H5L_info_t()
        try check("H5Lget_info") { H5Lget_info(group.id, name, &link, defaultProperties) }
        switch link.type {
        case H5L_TYPE_HARD: return .hard
        case H5L_TYPE_SOFT: return .soft
        case H5L_TYPE_EXTERNAL: return .external
        default: return .userDefined
        }
    }

    // MARK: Dataspaces

    /// A dataspace's extent: a scalar, dimensions, or none (a null dataspace).
    enum Extent: Equatable {
        case scalar
        case simple([UInt64])
        case null
    }

    /// The extent of `space`; a rank over 32 is refused before anything is allocated for it.
    static func extent(_ space: HDF5Handle) throws(HDF5CallError) -> Extent {
        switch H5S_class_t(rawValue: try check("H5Sget_simple_extent_type") { H5Sget_simple_extent_type(space.id).rawValue }) {
        case H5S_SCALAR: return .scalar
        case H5S_SIMPLE:
            let rank = Int(try check("H5Sget_simple_extent_ndims") { H5Sget_simple_extent_ndims(space.id) })
            guard rank <= 32 else { throw HDF5CallError(call: "H5Sget_simple_extent_ndims", reason: "a dataspace of rank \(rank)") }
            var dims = [hsize_t](repeating: 0, count: rank)
            try check("H5Sget_simple_extent_dims") { H5Sget_simple_extent_dims(space.id, &dims, nil) }
            return .simple(dims.map { UInt64($0) })
        default: return .null
        }
    }

    /// A dataspace of `shape` (a scalar for `[]`).
    private static func dataspace(_ shape: [Int]) throws(HDF5CallError) -> HDF5Handle {
        if shape.isEmpty { return try HDF5Handle.checked(.dataspace, "H5Screate") { H5Screate(H5S_SCALAR) } }
        let dims = shape.map { hsize_t($0) }
        return try HDF5Handle.checked(.dataspace, "H5Screate_simple") { H5Screate_simple(Int32(dims.count), dims, nil) }
    }

    /// The memory and file dataspaces of a slab of `dataset` (scalars take the whole space).
    private static func selection(_ dataset: HDF5Handle, _ slab: HDF5Slab) throws(HDF5CallError) -> (memory: HDF5Handle, file: HDF5Handle) {
        let fileSpace = try space(of: dataset)
        let memorySpace = try dataspace(slab.count)
        if !slab.count.isEmpty {
            let start = slab.start.map { hsize_t($0) }
            let count = slab.count.map { hsize_t($0) }
            try check("H5Sselect_hyperslab") { H5Sselect_hyperslab(fileSpace.id, H5S_SELECT_SET, start, nil, count, nil) }
        }
        return (memorySpace, fileSpace)
    }

    // MARK: Datasets

    static func openDataset(_ file: HDF5Handle, _ path: String) throws(HDF5CallError) -> HDF5Handle {
        try HDF5Handle.checked(.object, "H5Dopen2") { H5Dopen2(file.id, path, defaultProperties) }
    }

    /// A dataset of `type` and `shape` at `path`, its missing groups created by `linkProperties`.
    static func createDataset(
        _ file: HDF5Handle, _ path: String, type: HDF5Handle, shape: [Int], linkProperties: HDF5Handle
    ) throws(HDF5CallError) -> HDF5Handle {
        let space = try dataspace(shape)
        return try HDF5Handle.checked(.object, "H5Dcreate2") {
            H5Dcreate2(file.id, path, type.id, space.id, linkProperties.id, defaultProperties, defaultProperties)
        }
    }

    static func datasetType(_ dataset: HDF5Handle) throws(HDF5CallError) -> HDF5Handle {
        try HDF5Handle.checked(.datatype, "H5Dget_type") { H5Dget_type(dataset.id) }
    }

    static func space(of dataset: HDF5Handle) throws(HDF5CallError) -> HDF5Handle {
        try HDF5Handle.checked(.dataspace, "H5Dget_space") { H5Dget_space(dataset.id) }
    }

    /// How a dataset's bytes are kept, as far as qtool maps them or refuses them.
    struct Storage {
        enum Layout { case compact, contiguous, chunked, virtual }
        var layout: Layout
        /// External files holding the raw data.
        var externalFiles: Int
        var filters: Int
        /// Bytes stored (0 for none; libhdf5 reports a failure as 0 too).
        var storedBytes: Int
        /// Where contiguous data starts, counted from the superblock (after any user block), if it is
        /// allocated.
        var offset: UInt64?
    }

    static func storage(_ dataset: HDF5Handle) throws(HDF5CallError) -> Storage {
        let creation = try HDF5Handle.checked(.propertyList, "H5Dget_create_plist") { H5Dget_create_plist(dataset.id) }
        let layout: Storage.Layout
        switch H5D_layout_t(rawValue: try check("H5Pget_layout") { H5Pget_layout(creation.id).rawValue }) {
        case H5D_COMPACT: layout = .compact
        case H5D_CONTIGUOUS: layout = .contiguous
        case H5D_VIRTUAL: layout = .virtual
        default: layout = .chunked
        }
        // HADDR_UNDEF: not contiguous, or nothing allocated yet.
        let offset = try? check("H5Dget_offset", invalid: qtool_HADDR_UNDEF()) { H5Dget_offset(dataset.id) }
        return Storage(
            layout: layout, externalFiles: Int(try check("H5Pget_external_count") { H5Pget_external_count(creation.id) }),
            filters: Int(try check("H5Pget_nfilters") { H5Pget_nfilters(creation.id) }),
            storedBytes: Int(clamping: try check("H5Dget_storage_size") { H5Dget_storage_size(dataset.id) }),
            offset: offset.map { UInt64($0) })
    }

    /// Reads one slab of `dataset` as `type` into `buffer`.
    static func read(_ dataset: HDF5Handle, _ slab: HDF5Slab, as type: HDF5Handle, into buffer: UnsafeMutableRawBufferPointer)
        throws(HDF5CallError)
    {
        let (memorySpace, fileSpace) = try selection(dataset, slab)
        try check("H5Dread") { H5Dread(dataset.id, type.id, memorySpace.id, fileSpace.id, defaultProperties, buffer.baseAddress) }
    }

    /// Writes one slab of `dataset`, of `type`, from `bytes`.
    static func write(_ dataset: HDF5Handle, _ slab: HDF5Slab, as type: HDF5Handle, from bytes: UnsafeRawBufferPointer)
        throws(HDF5CallError)
    {
        let (memorySpace, fileSpace) = try selection(dataset, slab)
        try check("H5Dwrite") { H5Dwrite(dataset.id, type.id, memorySpace.id, fileSpace.id, defaultProperties, bytes.baseAddress) }
    }

    // MARK: Attributes

    /// Attribute `index` of `object`, in name order.
    static func openAttribute(_ object: HDF5Handle, _ index: Int) throws(HDF5CallError) -> HDF5Handle {
        try HDF5Handle.checked(.attribute, "H5Aopen_by_idx") {
            H5Aopen_by_idx(object.id, ".", H5_INDEX_NAME, H5_ITER_INC, hsize_t(index), defaultProperties, defaultProperties)
        }
    }

    static func attributeName(_ attribute: HDF5Handle) throws(HDF5CallError) -> String {
        try name("H5Aget_name") { buffer, size in H5Aget_name(attribute.id, size, buffer) }
    }

    static func attributeType(_ attribute: HDF5Handle) throws(HDF5CallError) -> HDF5Handle {
        try HDF5Handle.checked(.datatype, "H5Aget_type") { H5Aget_type(attribute.id) }
    }

    static func space(ofAttribute attribute: HDF5Handle) throws(HDF5CallError) -> HDF5Handle {
        try HDF5Handle.checked(.dataspace, "H5Aget_space") { H5Aget_space(attribute.id) }
    }

    /// Reads the whole attribute as `type` into `buffer` (big enough for it).
    static func read(attribute: HDF5Handle, as type: HDF5Handle, into buffer: UnsafeMutableRawPointer) throws(HDF5CallError) {
        try check("H5Aread") { H5Aread(attribute.id, type.id, buffer) }
    }

    /// The `count` variable-length strings of `attribute` (of dataspace `space`).
    static func readStrings(attribute: HDF5Handle, space: HDF5Handle, count: Int, utf8: Bool) throws(HDF5CallError) -> [String] {
        let memory = try stringType(size: nil, utf8: utf8)
        var pointers = [UnsafeMutablePointer<CChar>?](repeating: nil, count: max(1, count))
        try check("H5Aread") { H5Aread(attribute.id, memory.id, &pointers) }
        let strings = pointers.prefix(count).map { $0.map { String(cString: $0) } ?? "" }
        try check("H5Dvlen_reclaim") { H5Dvlen_reclaim(memory.id, space.id, defaultProperties, &pointers) }
        return strings
    }

    /// A new attribute `name` of `type` and `shape` on `object`, written from `values` (its
    /// elements' bytes, or for variable-length strings a C string pointer per element).
    static func createAttribute(
        _ name: String, on object: HDF5Handle, type: HDF5Handle, shape: [Int], values: UnsafeRawPointer
    ) throws(HDF5CallError) {
        let space = try dataspace(shape)
        let attribute = try HDF5Handle.checked(.attribute, "H5Acreate2") {
            H5Acreate2(object.id, name, type.id, space.id, defaultProperties, defaultProperties)
        }
        try check("H5Awrite") { H5Awrite(attribute.id, type.id, values) }
    }

    /// A new attribute `name` of variable-length strings on `object`.
    static func createAttribute(_ name: String, on object: HDF5Handle, shape: [Int], strings: [String], utf8: Bool)
        throws(HDF5CallError)
    {
        let type = try stringType(size: nil, utf8: utf8)
        // The strings one after another, NUL-terminated, and a pointer to each.
        var storage: [CChar] = [0]
        var offsets: [Int] = []
        for string in strings {
            offsets.append(storage.count)
            storage += string.utf8CString
        }
        try storage.withUnsafeBufferPointer { base in
            let pointers = offsets.map { Optional(base.baseAddress! + $0) } + [nil]
            return Result { () throws(HDF5CallError) in try createAttribute(name, on: object, type: type, shape: shape, values: pointers) }
        }.get()
    }

    // MARK: Datatypes

    static func typeSize(_ type: HDF5Handle) throws(HDF5CallError) -> Int {
        try check("H5Tget_size", invalid: 0) { H5Tget_size(type.id) }
    }

    static func isUTF8(_ type: HDF5Handle) throws(HDF5CallError) -> Bool {
        H5T_cset_t(rawValue: try check("H5Tget_cset") { H5Tget_cset(type.id).rawValue }) == H5T_CSET_UTF8
    }

    static func isVariableString(_ type: HDF5Handle) throws(HDF5CallError) -> Bool {
        try check("H5Tis_variable_str") { H5Tis_variable_str(type.id) } > 0
    }

    /// Whether values of `type` are stored as they lie in memory here (single bytes or little-endian).
    static func isLittleEndian(_ type: HDF5Handle) throws(HDF5CallError) -> Bool {
        if try typeSize(type) == 1 { return true }
        return H5T_order_t(rawValue: try check("H5Tget_order") { H5Tget_order(type.id).rawValue }) == H5T_ORDER_LE
    }

    /// A C string type: variable-length (`size` nil) or `size` bytes, NUL-padded.
    static func stringType(size: Int?, utf8: Bool) throws(HDF5CallError) -> HDF5Handle {
        let type = try HDF5Handle.checked(.datatype, "H5Tcopy") { H5Tcopy(qtool_H5T_C_S1()) }
        try check("H5Tset_cset") { H5Tset_cset(type.id, utf8 ? H5T_CSET_UTF8 : H5T_CSET_ASCII) }
        try check("H5Tset_size") { H5Tset_size(type.id, size ?? qtool_H5T_VARIABLE()) }
        if size != nil { try check("H5Tset_strpad") { H5Tset_strpad(type.id, H5T_STR_NULLPAD) } }
        return type
    }
}

extension HDF5Helper {
    /// The libhdf5 linked at run time ("1.10.8"), for `qtool info`; it reads no file, so it runs
    /// in this process.
    public static var libraryVersion: String {
        var (major, minor, release): (UInt32, UInt32, UInt32) = (0, 0, 0)
        guard (try? HDF5.check("H5get_libversion") { H5get_libversion(&major, &minor, &release) }) != nil else { return "unknown" }
        return "\(major).\(minor).\(release)"
    }
}

/// An HDF5 identifier closed when released, with the close function its kind needs.
final class HDF5Handle {
    enum Kind { case file, object, datatype, dataspace, attribute, propertyList }
    fileprivate let id: hid_t
    private let kind: Kind
    private var isOpen = true

    private init(_ id: hid_t, _ kind: Kind) {
        self.id = id
        self.kind = kind
    }

    /// The identifier `body` returns, checked by `HDF5.check`.
    fileprivate static func checked(_ kind: Kind, _ what: @autoclosure () -> String, _ body: () -> hid_t)
        throws(HDF5CallError) -> HDF5Handle
    {
        HDF5Handle(try HDF5.check(what(), body), kind)
    }

    /// Closes the identifier now, checked (a file being written reports its last writes here).
    func close() throws(HDF5CallError) {
        guard isOpen else { return }
        isOpen = false
        let (id, kind) = (id, kind)
        try HDF5.check("closing") {
            switch kind {
            case .file: H5Fclose(id)
            case .object: H5Oclose(id)
            case .datatype: H5Tclose(id)
            case .dataspace: H5Sclose(id)
            case .attribute: H5Aclose(id)
            case .propertyList: H5Pclose(id)
            }
        }
    }

    deinit {
        // Nothing waits for a close here to report its failure; a written file is closed by
        // `close()` first.
        try? close()
    }
}

/// How a dataset's or attribute's elements are stored, as far as qtool reads them.
enum HDF5ElementType: Equatable {
    case numeric(DType)
    case string
    case other(String)

    /// Classifies `type` (an HDF5 datatype).
    static func of(_ type: HDF5Handle) throws(HDF5CallError) -> HDF5ElementType {
        let size = try HDF5.typeSize(type)
        switch H5T_class_t(rawValue: try HDF5.check("H5Tget_class") { H5Tget_class(type.id).rawValue }) {
        case H5T_FLOAT:
            var spos = 0, epos = 0, esize = 0, mpos = 0, msize = 0
            try HDF5.check("H5Tget_fields") { H5Tget_fields(type.id, &spos, &epos, &esize, &mpos, &msize) }
            switch (size, epos, esize, msize) {
            case (8, 52, 11, 52): return .numeric(.f64)
            case (4, 23, 8, 23): return .numeric(.f32)
            case (2, 10, 5, 10): return .numeric(.f16)
            case (2, 7, 8, 7): return .numeric(.bf16)
            default: return .other("a \(size * 8)-bit float with an unusual layout")
            }
        case H5T_INTEGER:
            let sign = H5T_sign_t(rawValue: try HDF5.check("H5Tget_sign") { H5Tget_sign(type.id).rawValue })
            switch (size, sign == H5T_SGN_2) {
            case (1, true): return .numeric(.i8)
            case (2, true): return .numeric(.i16)
            case (4, true): return .numeric(.i32)
            case (8, true): return .numeric(.i64)
            case (1, false): return .numeric(.u8)
            case (2, false): return .numeric(.u16)
            case (4, false): return .numeric(.u32)
            case (8, false): return .numeric(.u64)
            default: return .other("a \(size * 8)-bit integer")
            }
        case H5T_ENUM:
            // h5py stores bool as an 8-bit enum {FALSE = 0, TRUE = 1}.
            let members = try HDF5.check("H5Tget_nmembers") { H5Tget_nmembers(type.id) }
            if size == 1, members == 2 { return .numeric(.bool) }
            return .other("an enumeration")
        case H5T_STRING: return .string
        case H5T_COMPOUND: return .other("a compound type (a record or a complex number)")
        case H5T_REFERENCE: return .other("a reference")
        case H5T_VLEN: return .other("a variable-length sequence")
        case H5T_ARRAY: return .other("an array type")
        case H5T_OPAQUE: return .other("opaque bytes")
        case H5T_BITFIELD: return .other("a bitfield")
        default: return .other("an unknown type")
        }
    }

    /// The little-endian in-memory type to read `dtype` with (a copy of the stored type, so that
    /// half floats and bools read bit for bit).
    static func memoryType(for stored: HDF5Handle, dtype: DType) throws(HDF5CallError) -> HDF5Handle {
        let base = dtype == .bool ? try HDF5Handle.checked(.datatype, "H5Tget_super") { H5Tget_super(stored.id) } : stored
        let copy = try HDF5Handle.checked(.datatype, "H5Tcopy") { H5Tcopy(base.id) }
        try HDF5.check("H5Tset_order") { H5Tset_order(copy.id, H5T_ORDER_LE) }
        return copy
    }

    /// The types qtool writes to HDF5.
    static let writable: Set<DType> = [.f64, .f32, .f16, .bf16, .i8, .i16, .i32, .i64, .u8, .u16, .u32, .u64, .bool]

    /// The file type qtool writes for `dtype` (one of `writable`).
    static func fileType(for dtype: DType) throws(HDF5CallError) -> HDF5Handle {
        func copy(_ id: hid_t) throws(HDF5CallError) -> HDF5Handle { try HDF5Handle.checked(.datatype, "H5Tcopy") { H5Tcopy(id) } }
        switch dtype {
        case .f64: return try copy(qtool_H5T_IEEE_F64LE())
        case .f32: return try copy(qtool_H5T_IEEE_F32LE())
        case .f16, .bf16:
            // h5py's half float: IEEE single with the fields of binary16; bf16 likewise.
            let type = try copy(qtool_H5T_IEEE_F32LE())
            let (epos, esize, msize, bias): (Int, Int, Int, Int) = dtype == .f16 ? (10, 5, 10, 15) : (7, 8, 7, 127)
            try HDF5.check("H5Tset_fields") { H5Tset_fields(type.id, 15, epos, esize, 0, msize) }
            try HDF5.check("H5Tset_size") { H5Tset_size(type.id, 2) }
            try HDF5.check("H5Tset_ebias") { H5Tset_ebias(type.id, bias) }
            return type
        case .i8: return try copy(qtool_H5T_STD_I8LE())
        case .i16: return try copy(qtool_H5T_STD_I16LE())
        case .i32: return try copy(qtool_H5T_STD_I32LE())
        case .i64: return try copy(qtool_H5T_STD_I64LE())
        case .u8: return try copy(qtool_H5T_STD_U8LE())
        case .u16: return try copy(qtool_H5T_STD_U16LE())
        case .u32: return try copy(qtool_H5T_STD_U32LE())
        case .u64: return try copy(qtool_H5T_STD_U64LE())
        case .bool:
            let type = try HDF5Handle.checked(.datatype, "H5Tenum_create") { H5Tenum_create(qtool_H5T_STD_I8LE()) }
            var no: Int8 = 0, yes: Int8 = 1
            try HDF5.check("H5Tenum_insert") { H5Tenum_insert(type.id, "FALSE", &no) }
            try HDF5.check("H5Tenum_insert") { H5Tenum_insert(type.id, "TRUE", &yes) }
            return type
        default: throw HDF5CallError(call: "H5Tcopy", reason: "HDF5 has no type for \(dtype.rawValue)")
        }
    }
}
