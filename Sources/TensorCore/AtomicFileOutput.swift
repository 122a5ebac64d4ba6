import Dispatch

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A file written under a temporary name beside its destination and renamed into place only when
/// complete: a failed or interrupted write leaves the destination as it was.
///
/// Writes are double-buffered: while the caller fills one buffer, a writer thread hands the other
/// to the kernel, so producing bytes (copying, converting) overlaps with the kernel's copy.
public final class AtomicFileOutput: @unchecked Sendable {
    public let destination: String
    public let temporaryPath: String
    private var fd: Int32
    private let buffers: [UnsafeMutableRawBufferPointer]
    private var current = 0
    private var buffered = 0
    public private(set) var bytesWritten = 0
    private var finished = false
    private let writer = DispatchQueue(label: "qtool.file-writer")
    /// Signalled when the writer thread is idle; `writeError` is set before the signal.
    private let writerIdle = DispatchSemaphore(value: 1)
    private var writeError: TensorCoreError?

    public init(destination: String, bufferSize: Int = 1 << 23) throws {
        self.destination = destination
        let directory = FilePaths.directory(of: destination)
        let base = FilePaths.lastComponent(of: destination)
        var template = Array("\(directory)/.\(base).qtool-XXXXXX".utf8CString)
        let descriptor = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard descriptor >= 0 else {
            throw TensorCoreError.cannotWrite(path: destination, reason: systemErrorText())
        }
        fd = descriptor
        temporaryPath = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        // mkstemp creates 0600; give the file the usual mode for new files.
        let mask = umask(0)
        umask(mask)
        fchmod(fd, 0o666 & ~mask)
        buffers = (0..<2).map { _ in UnsafeMutableRawBufferPointer.allocate(byteCount: bufferSize, alignment: 4096) }
    }

    deinit {
        if !finished { abort() }
        for buffer in buffers { buffer.deallocate() }
    }

    /// Appends `bytes`.
    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        var offset = 0
        while offset < bytes.count {
            let buffer = buffers[current]
            if buffered == buffer.count { try flush() }
            let n = min(bytes.count - offset, buffer.count - buffered)
            UnsafeMutableRawBufferPointer(rebasing: buffers[current][buffered..<(buffered + n)])
                .copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + n)]))
            buffered += n
            offset += n
        }
        bytesWritten += bytes.count
    }

    public func write(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try write($0) }
    }

    /// Hands the filled buffer to the writer thread and switches to the other one.
    private func flush() throws {
        guard buffered > 0 else { return }
        writerIdle.wait()
        if let writeError {
            writerIdle.signal()
            throw writeError
        }
        let index = current
        let count = buffered
        writer.async { [self] in
            if let error = writeAll(UnsafeRawBufferPointer(rebasing: buffers[index][0..<count])) { writeError = error }
            writerIdle.signal()
        }
        current ^= 1
        buffered = 0
    }

    /// Waits for the writer thread; throws what it met.
    private func drain() throws {
        try flush()
        writerIdle.wait()
        writerIdle.signal()
        if let writeError { throw writeError }
    }

    private func writeAll(_ bytes: UnsafeRawBufferPointer) -> TensorCoreError? {
        var offset = 0
        while offset < bytes.count {
            let n = systemWrite(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if n < 0 {
                if errno == EINTR { continue }
                return TensorCoreError.cannotWrite(path: destination, reason: systemErrorText())
            }
            offset += n
        }
        return nil
    }

    /// Flushes, syncs and renames the file into place.
    public func commit() throws {
        try prepareCommit()
        try finishCommit()
        FilePaths.syncDirectory(FilePaths.directory(of: destination))
    }

    /// Flushes and syncs without renaming (for outputs that commit several files together).
    public func prepareCommit() throws {
        try drain()
        guard fsync(fd) == 0 else { throw TensorCoreError.cannotWrite(path: destination, reason: systemErrorText()) }
        close(fd)
        fd = -1
    }

    /// Renames a prepared file into place.
    public func finishCommit() throws {
        guard rename(temporaryPath, destination) == 0 else {
            throw TensorCoreError.cannotWrite(path: destination, reason: systemErrorText())
        }
        finished = true
    }

    /// Removes the temporary file; the destination is untouched.
    public func abort() {
        // Let a write in flight finish before its descriptor and buffer go away.
        writerIdle.wait()
        writerIdle.signal()
        if fd >= 0 { close(fd) }
        fd = -1
        unlink(temporaryPath)
        finished = true
    }
}

/// Several files written together into one folder: all appear, or none do.
///
/// Each file is staged as an `AtomicFileOutput`; `commit` syncs them all before renaming any, and
/// removes the given stale files afterwards. A folder this transaction created is removed again
/// when it is aborted.
public final class FolderOutputTransaction {
    public let folder: String
    private var files: [AtomicFileOutput] = []
    private let createdFolder: Bool
    private var finished = false

    public init(folder: String) throws {
        self.folder = folder
        var info = stat()
        if stat(folder, &info) == 0 {
            guard (info.st_mode & S_IFMT) == S_IFDIR else {
                throw TensorCoreError.cannotWrite(path: folder, reason: "exists and is not a folder")
            }
            createdFolder = false
        } else {
            guard mkdir(folder, 0o777) == 0 else {
                throw TensorCoreError.cannotWrite(path: folder, reason: systemErrorText())
            }
            createdFolder = true
        }
    }

    deinit { if !finished { abort() } }

    /// A new staged file named `name` inside the folder.
    public func file(named name: String) throws -> AtomicFileOutput {
        let output = try AtomicFileOutput(destination: folder + "/" + name)
        files.append(output)
        return output
    }

    /// A staged copy of the file at `source`, named `name` inside the folder.
    public func copyFile(from source: String, named name: String) throws {
        let input = try MappedFile(path: source)
        let output = try file(named: name)
        try input.withBytes(in: 0..<input.count) { try output.write($0) }
    }

    /// Moves every staged file into place, then deletes `staleNames` not among them.
    public func commit(removingStale staleNames: [String] = []) throws {
        for file in files { try file.prepareCommit() }
        for file in files { try file.finishCommit() }
        let written = Set(files.map { FilePaths.lastComponent(of: $0.destination) })
        for name in staleNames where !written.contains(name) { unlink(folder + "/" + name) }
        FilePaths.syncDirectory(folder)
        finished = true
    }

    public func abort() {
        for file in files { file.abort() }
        if createdFolder { rmdir(folder) }
        finished = true
    }
}

private func systemWrite(_ fd: Int32, _ bytes: UnsafeRawPointer, _ count: Int) -> Int {
    write(fd, bytes, count)
}

/// Small path helpers over plain strings.
public enum FilePaths {
    public static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        let directory = String(path[..<slash])
        return directory.isEmpty ? "/" : directory
    }

    public static func lastComponent(of path: String) -> String {
        var trimmed = Substring(path)
        while trimmed.count > 1 && trimmed.hasSuffix("/") { trimmed = trimmed.dropLast() }
        guard let slash = trimmed.lastIndex(of: "/") else { return String(trimmed) }
        return String(trimmed[trimmed.index(after: slash)...])
    }

    public static func isDirectory(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR
    }

    public static func exists(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0
    }

    /// Names of the entries of a folder (no `.` and `..`), sorted.
    public static func contents(of folder: String) throws -> [String] {
        guard let dir = opendir(folder) else {
            throw TensorCoreError.cannotOpen(path: folder, reason: systemErrorText())
        }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    static func syncDirectory(_ path: String) {
        let fd = open(path, O_RDONLY | O_DIRECTORY)
        guard fd >= 0 else { return }
        fsync(fd)
        close(fd)
    }
}
