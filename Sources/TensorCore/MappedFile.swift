import CProcess

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A whole file mapped read-only into memory.
///
/// Pages are read on first touch and can be given back with `releasePages`, so streaming a large
/// file through a mapping keeps the resident set small. Only regular files are mapped: a FIFO, a
/// device or a socket is refused without blocking (the open does not wait for a writer). A file
/// truncated by someone else while mapped would fault (SIGBUS) on the next touch past its new end;
/// the mapping is registered so that the fault ends the process with the file's name and exit 2.
public final class MappedFile: @unchecked Sendable {
    public let path: String
    public let count: Int
    private let base: UnsafeRawPointer?
    private let mappedLength: Int
    private let faultSlot: Int32

    public init(path: String) throws {
        self.path = path
        guard !path.isEmpty else { throw TensorCoreError.cannotOpen(path: path, reason: "the path is empty") }
        // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)
        guard fd >= 0 else { throw TensorCoreError.cannotOpen(path: path, reason: systemErrorText()) }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            throw TensorCoreError.cannotOpen(path: path, reason: systemErrorText())
        }
        guard (info.st_mode & S_IFMT) == S_IFREG else { throw TensorCoreError.notAFile(path: path) }
        count = Int(info.st_size)
        if count == 0 {
            base = nil
            mappedLength = 0
            faultSlot = -1
            return
        }
        let pointer = mmap(nil, count, PROT_READ, MAP_PRIVATE, fd, 0)
        guard let pointer, pointer != MAP_FAILED else {
            throw TensorCoreError.cannotMap(path: path, reason: systemErrorText())
        }
        base = UnsafeRawPointer(pointer)
        mappedLength = count
        faultSlot = ProcessCleanup.registerMapping(UnsafeRawPointer(pointer), length: count, path: path)
    }

    deinit {
        ProcessCleanup.unregisterMapping(faultSlot)
        if let base { munmap(UnsafeMutableRawPointer(mutating: base), mappedLength) }
    }

    /// Calls `body` with the bytes of `range`, which the caller has checked against `count`.
    @inlinable
    public func withBytes<R>(in range: Range<Int>, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        precondition(range.lowerBound >= 0 && range.upperBound <= count, "range outside the mapped file")
        return try body(UnsafeRawBufferPointer(start: baseAddress.map { $0 + range.lowerBound }, count: range.count))
    }

    @usableFromInline var baseAddress: UnsafeRawPointer? { base }

    /// Drops the pages wholly inside `range` from this process's resident set; the data stays
    /// readable (it is read back from the page cache on the next touch).
    public func releasePages(_ range: Range<Int>) {
        guard let base, !range.isEmpty else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = (range.lowerBound + page - 1) / page * page
        let end = range.upperBound == count ? count : range.upperBound / page * page
        guard end > start else { return }
        _ = madvise(UnsafeMutableRawPointer(mutating: base + start), end - start, MADV_DONTNEED)
    }

    /// Maps every page of `range` in one call (MADV_POPULATE_READ, Linux 5.14), where touching
    /// them would take a page fault each; a kernel without it leaves them to fault as before.
    public func populate(_ range: Range<Int>) { advise(range, 22 /* MADV_POPULATE_READ */) }

    /// Asks the kernel to read `range` ahead of use.
    public func prefetch(_ range: Range<Int>) { advise(range, MADV_WILLNEED) }

    /// `madvise` over the pages that hold `range` (from the page its first byte is on).
    private func advise(_ range: Range<Int>, _ advice: Int32) {
        guard let base, !range.isEmpty else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = range.lowerBound / page * page
        _ = madvise(UnsafeMutableRawPointer(mutating: base + start), range.upperBound - start, advice)
    }
}

/// Bytes set aside while an output that lists every size up front is prepared (a safetensors
/// file of 4-bit tensors needs them all before its header): written once to an unlinked file
/// beside the output, then mapped back and streamed like any input, so they take disk, not memory.
public final class SpillFile: @unchecked Sendable {
    private var fd: Int32
    private var length = 0
    private let directory: String

    public init(directory: String) throws {
        self.directory = directory
        var template = Array("\(directory)/.qtool-spill-XXXXXX".utf8CString)
        fd = template.withUnsafeMutableBufferPointer { qtool_make_temporary($0.baseAddress!) }
        guard fd >= 0 else { throw TensorCoreError.cannotWrite(path: directory, reason: systemErrorText()) }
        // Unlinked at once: the file goes with the process however it ends.
        template.withUnsafeBufferPointer { _ = unlink($0.baseAddress!) }
    }

    deinit { if fd >= 0 { close(fd) } }

    /// Appends a payload's bytes; returns where they lie.
    public func append(_ payload: any TensorPayload) throws -> Range<Int> {
        let start = length
        try payload.stream(chunkBytes: 8 << 20) { piece in
            var offset = 0
            while offset < piece.count {
                let n = write(fd, piece.baseAddress! + offset, piece.count - offset)
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else {
                    throw TensorCoreError.cannotWrite(path: directory, reason: "setting aside 4-bit tensors: \(systemErrorText())")
                }
                offset += n
            }
            length += piece.count
        }
        return start..<length
    }

    /// The bytes written so far, mapped.
    public func mapped() throws -> MappedFile {
        try MappedFile(path: "/proc/self/fd/\(fd)")
    }
}
