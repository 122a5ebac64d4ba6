import CZstd
import TensorCore

/// zstd through libzstd: whole-buffer frames with a content checksum.
enum ZstdCodec {
    /// The libzstd linked at run time ("1.5.4").
    static var libraryVersion: String { String(cString: ZSTD_versionString()) }

    /// The compressed frame, or nil when zstd fails.
    static func compress(_ input: UnsafeRawBufferPointer, level: Int32) -> [UInt8]? {
        guard let context = ZSTD_createCCtx() else { return nil }
        defer { ZSTD_freeCCtx(context) }
        ZSTD_CCtx_setParameter(context, ZSTD_c_compressionLevel, level)
        ZSTD_CCtx_setParameter(context, ZSTD_c_checksumFlag, 1)
        var output = [UInt8](repeating: 0, count: ZSTD_compressBound(input.count))
        let written = output.withUnsafeMutableBytes { out in
            ZSTD_compress2(context, out.baseAddress, out.count, input.baseAddress, input.count)
        }
        guard ZSTD_isError(written) == 0 else { return nil }
        output.removeSubrange(written...)
        return output
    }

    /// Decompresses a frame that must hold exactly `size` bytes. The frame's own content size
    /// must say so before anything is allocated; the buffer is not touched beyond what zstd writes.
    static func decompress(_ input: UnsafeRawBufferPointer, size: Int) -> OwnedBytes? {
        guard let start = input.baseAddress, ZSTD_getFrameContentSize(start, input.count) == UInt64(size) else { return nil }
        let output = OwnedBytes(count: size)
        let written = ZSTD_decompress(output.buffer.baseAddress, size, start, input.count)
        guard ZSTD_isError(written) == 0, written == size else { return nil }
        return output
    }
}
