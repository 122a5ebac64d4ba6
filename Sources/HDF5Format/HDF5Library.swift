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

/// The one place qtool calls libhdf5. The library (a serial build) is not thread-safe, so every
/// call goes through `locked`.
enum HDF5 {
    // Recursive: a handle released inside a locked section closes itself under the same lock.
    private static let lock = NSRecursiveLock()

    static func locked<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        lock.lock()
        defer { lock.unlock() }
        // A thread-safe libhdf5 keeps an error stack, and its printing switch, per thread.
        qtool_H5_silence()
        return try body()
    }

    /// libhdf5's innermost message for the last failure (then clears its stack).
    static func lastError() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        qtool_H5_last_error(&buffer)
        let text = HDF5.string(buffer)
        return text.isEmpty ? "libhdf5 reported an error" : text
    }

    static var defaultProperties: hid_t { qtool_H5P_DEFAULT() }

    /// File access without libhdf5's own flock: qtool locks its temporaries itself (to tell a
    /// killed run's leftovers from a write in progress), and reading needs no lock.
    static func fileAccess() -> HDF5Handle {
        let properties = HDF5Handle(H5Pcreate(qtool_H5P_FILE_ACCESS()), .propertyList)
        H5Pset_file_locking(properties.id, false, true)
        return properties
    }

    /// A NUL-terminated C string in a buffer, as UTF-8.
    static func string(_ buffer: [CChar]) -> String {
        String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

extension HDF5Helper {
    /// The libhdf5 linked at run time ("1.10.8"), for `qtool info`; it reads no file, so it runs
    /// in this process.
    public static var libraryVersion: String {
        var (major, minor, release): (UInt32, UInt32, UInt32) = (0, 0, 0)
        let status = HDF5.locked { H5get_libversion(&major, &minor, &release) }
        return status < 0 ? "unknown" : "\(major).\(minor).\(release)"
    }
}

/// An HDF5 identifier closed when released, with the close function its kind needs.
final class HDF5Handle {
    enum Kind { case file, object, datatype, dataspace, attribute, propertyList }
    let id: hid_t
    let kind: Kind

    init(_ id: hid_t, _ kind: Kind) {
        self.id = id
        self.kind = kind
    }

    deinit {
        let (id, kind) = (id, kind)
        _ = HDF5.locked {
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
}

/// How a dataset's or attribute's elements are stored, as far as qtool reads them.
enum HDF5ElementType: Equatable {
    case numeric(DType)
    case string
    case other(String)

    /// Classifies `type` (an HDF5 datatype id).
    static func of(_ type: hid_t) -> HDF5ElementType {
        let size = H5Tget_size(type)
        switch H5Tget_class(type) {
        case H5T_FLOAT:
            var spos = 0, epos = 0, esize = 0, mpos = 0, msize = 0
            H5Tget_fields(type, &spos, &epos, &esize, &mpos, &msize)
            switch (size, epos, esize, msize) {
            case (8, 52, 11, 52): return .numeric(.f64)
            case (4, 23, 8, 23): return .numeric(.f32)
            case (2, 10, 5, 10): return .numeric(.f16)
            case (2, 7, 8, 7): return .numeric(.bf16)
            default: return .other("a \(size * 8)-bit float with an unusual layout")
            }
        case H5T_INTEGER:
            let signed = H5Tget_sign(type) == H5T_SGN_2
            switch (size, signed) {
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
            if size == 1, H5Tget_nmembers(type) == 2 { return .numeric(.bool) }
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
    static func memoryType(for stored: hid_t, dtype: DType) -> HDF5Handle {
        let copy = H5Tcopy(dtype == .bool ? H5Tget_super(stored) : stored)
        H5Tset_order(copy, H5T_ORDER_LE)
        return HDF5Handle(copy, .datatype)
    }

    /// The types qtool writes to HDF5.
    static let writable: Set<DType> = [.f64, .f32, .f16, .bf16, .i8, .i16, .i32, .i64, .u8, .u16, .u32, .u64, .bool]

    /// The file type qtool writes for `dtype`; nil when HDF5 has no type for it.
    static func fileType(for dtype: DType) -> HDF5Handle? {
        func copy(_ id: hid_t) -> HDF5Handle { HDF5Handle(H5Tcopy(id), .datatype) }
        switch dtype {
        case .f64: return copy(qtool_H5T_IEEE_F64LE())
        case .f32: return copy(qtool_H5T_IEEE_F32LE())
        case .f16, .bf16:
            // h5py's half float: IEEE single with the fields of binary16; bf16 likewise.
            let type = copy(qtool_H5T_IEEE_F32LE())
            let (epos, esize, msize, bias): (Int, Int, Int, Int) = dtype == .f16 ? (10, 5, 10, 15) : (7, 8, 7, 127)
            H5Tset_fields(type.id, 15, epos, esize, 0, msize)
            H5Tset_size(type.id, 2)
            H5Tset_ebias(type.id, bias)
            return type
        case .i8: return copy(qtool_H5T_STD_I8LE())
        case .i16: return copy(qtool_H5T_STD_I16LE())
        case .i32: return copy(qtool_H5T_STD_I32LE())
        case .i64: return copy(qtool_H5T_STD_I64LE())
        case .u8: return copy(qtool_H5T_STD_U8LE())
        case .u16: return copy(qtool_H5T_STD_U16LE())
        case .u32: return copy(qtool_H5T_STD_U32LE())
        case .u64: return copy(qtool_H5T_STD_U64LE())
        case .bool:
            let type = HDF5Handle(H5Tenum_create(qtool_H5T_STD_I8LE()), .datatype)
            var no: Int8 = 0, yes: Int8 = 1
            H5Tenum_insert(type.id, "FALSE", &no)
            H5Tenum_insert(type.id, "TRUE", &yes)
            return type
        default: return nil
        }
    }
}
