import CProcess
import Dispatch

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A file written under a temporary name beside its destination and renamed into place only when
/// complete: a failed or interrupted write leaves the destination as it was.
///
/// The temporary is made by mkstemp (a name no one can predict or plant a link at), registered
/// with `ProcessCleanup` (removed on SIGINT/SIGTERM), and locked with flock for its lifetime, so a
/// later run can tell a leftover of a killed run (unlocked) from a write in progress (locked) and
/// remove it (`StaleTemporaries`).
///
/// Writes are double-buffered: while the caller fills one buffer, a writer thread hands the other
/// to the kernel, so producing bytes (copying, converting) overlaps with the kernel's copy.
public final class AtomicFileOutput: @unchecked Sendable {
    public let destination: String
    /// The path errors name: the destination, or where it will end up (a file of a staged folder).
    public let reportedPath: String
    public let temporaryPath: String
    private var fd: Int32
    private let buffers: [UnsafeMutableRawBufferPointer]
    private var current = 0
    private var buffered = 0
    public private(set) var bytesWritten = 0
    private var finished = false
    private let cleanup: ProcessCleanup.Registration
    private let writer = DispatchQueue(label: "qtool.file-writer")
    /// Signalled when the writer thread is idle; `writeError` is set before the signal.
    private let writerIdle = DispatchSemaphore(value: 1)
    private var writeError: TensorCoreError?

    public init(destination: String, reportingAs reportedPath: String? = nil, bufferSize: Int = 1 << 23) throws {
        self.destination = destination
        self.reportedPath = reportedPath ?? destination
        guard !destination.isEmpty else { throw TensorCoreError.cannotWrite(path: destination, reason: "the path is empty") }
        let directory = FilePaths.directory(of: destination)
        let base = FilePaths.lastComponent(of: destination)
        var template = Array("\(directory)/.\(base)\(StaleTemporaries.marker)XXXXXX".utf8CString)
        let descriptor = template.withUnsafeMutableBufferPointer { qtool_make_temporary($0.baseAddress!) }
        guard descriptor >= 0 else {
            throw TensorCoreError.cannotWrite(path: self.reportedPath, reason: systemErrorText())
        }
        fd = descriptor
        temporaryPath = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        cleanup = ProcessCleanup.register(temporaryPath, kind: .file)
        _ = qtool_try_lock(fd)
        // mkstemp creates 0600; give the file the usual mode for new files.
        let mask = umask(0)
        umask(mask)
        fchmod(fd, 0o666 & ~mask)
        buffers = (0..<2).map { _ in
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bufferSize, alignment: 4096)
            // Its pages in one call (MADV_POPULATE_WRITE, Linux 5.14) rather than a fault each on
            // first use; an older kernel leaves them to fault.
            _ = madvise(buffer.baseAddress, bufferSize, 23)
            return buffer
        }
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
                return TensorCoreError.cannotWrite(path: reportedPath, reason: systemErrorText())
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
    /// Bytes another process wrote to `temporaryPath` (libhdf5 in qtool's HDF5 helper) are
    /// synced too: the descriptor is the same file's.
    public func prepareCommit() throws {
        try drain()
        guard fsync(fd) == 0 else { throw TensorCoreError.cannotWrite(path: reportedPath, reason: systemErrorText()) }
        close(fd)
        fd = -1
    }

    /// Renames a prepared file into place.
    public func finishCommit() throws {
        guard rename(temporaryPath, destination) == 0 else {
            throw TensorCoreError.cannotWrite(path: reportedPath, reason: systemErrorText())
        }
        cleanup.release()
        finished = true
    }

    /// Removes the temporary file; the destination is untouched.
    public func abort() {
        // Let a write in flight finish before its descriptor and buffer go away.
        writerIdle.wait()
        writerIdle.signal()
        if !finished { unlink(temporaryPath) }
        if fd >= 0 { close(fd) }
        fd = -1
        cleanup.release()
        finished = true
    }
}

/// Several files written together as one model folder: the old folder or the new one, never a mix.
///
/// The files are written into a hidden staging folder beside the destination
/// (`.<name>.qtool-XXXXXX`). `commit` syncs them and moves the whole folder into place in one
/// step: a rename when the destination is new (refusing to replace a folder another writer
/// created meanwhile), or else an atomic exchange of the two folders (Linux `renameat2`), after
/// which the old folder is removed. Files of the old folder that the new one does not replace and
/// that are not stale weights (a README, a chat template) are hard-linked into the new one first;
/// its subfolders are moved over after the exchange. Interrupted before the exchange, the old
/// folder is intact; after it, the new one is complete.
public final class FolderOutputTransaction {
    /// The destination, as given.
    public let folder: String
    /// Where the files are staged.
    public let staging: String
    private var files: [AtomicFileOutput] = []
    private var finished = false
    private let cleanup: ProcessCleanup.Registration
    private var lockDescriptor: Int32

    public init(folder: String) throws {
        self.folder = folder
        guard !folder.isEmpty else { throw TensorCoreError.cannotWrite(path: folder, reason: "the path is empty") }
        var info = stat()
        if lstat(folder, &info) == 0 {
            let type = info.st_mode & S_IFMT
            if type == S_IFLNK {
                guard FilePaths.isDirectory(folder) else {
                    throw TensorCoreError.cannotWrite(path: folder, reason: "exists and is not a folder")
                }
            } else if type != S_IFDIR {
                throw TensorCoreError.cannotWrite(path: folder, reason: "exists and is not a folder")
            }
        }
        let parent = FilePaths.directory(of: FilePaths.resolvingLink(folder))
        StaleTemporaries.removeLeftovers(in: parent)
        var template = Array("\(parent)/.\(FilePaths.lastComponent(of: folder))\(StaleTemporaries.marker)XXXXXX".utf8CString)
        guard template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) != nil else {
            throw TensorCoreError.cannotWrite(path: folder, reason: systemErrorText())
        }
        staging = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        cleanup = ProcessCleanup.register(staging, kind: .folder)
        lockDescriptor = open(staging, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if lockDescriptor >= 0 { _ = qtool_try_lock(lockDescriptor) }
        // mkdtemp creates 0700: give the folder the old one's mode, or the usual mode for new ones.
        let mask = umask(0)
        umask(mask)
        var existing = stat()
        chmod(staging, stat(folder, &existing) == 0 ? existing.st_mode & 0o7777 : 0o777 & ~mask)
    }

    deinit { if !finished { abort() } }

    /// A new staged file named `name` inside the folder.
    public func file(named name: String) throws -> AtomicFileOutput {
        guard !name.isEmpty, !name.contains("/"), name != ".", name != ".." else {
            throw TensorCoreError.cannotWrite(path: folder + "/" + name, reason: "not a plain file name")
        }
        let output = try AtomicFileOutput(destination: staging + "/" + name, reportingAs: folder + "/" + name)
        files.append(output)
        return output
    }

    /// A staged copy of the file at `source`, named `name` inside the folder.
    public func copyFile(from source: String, named name: String) throws {
        let input = try MappedFile(path: source)
        let output = try file(named: name)
        try input.withBytes(in: 0..<input.count) { try output.write($0) }
    }

    /// Moves the new folder into place. Entries of the old folder for which `isStale` holds
    /// (weights of an earlier save) are dropped; every other entry the new folder lacks is kept.
    public func commit(dropping isStale: (String) -> Bool = { _ in false }) throws {
        for file in files { try file.prepareCommit() }
        for file in files { try file.finishCommit() }
        let written = Set(files.map { FilePaths.lastComponent(of: $0.destination) })
        let target = FilePaths.resolvingLink(folder)
        var subfolders: [String] = []
        if FilePaths.isDirectory(target) {
            for name in try FilePaths.contents(of: target) where !written.contains(name) && !isStale(name) {
                if name.contains(StaleTemporaries.marker) { continue }
                var info = stat()
                guard lstat(target + "/" + name, &info) == 0 else { continue }
                switch info.st_mode & S_IFMT {
                case S_IFREG:
                    guard link(target + "/" + name, staging + "/" + name) == 0 else {
                        throw TensorCoreError.cannotWrite(path: folder, reason: "cannot keep '\(name)': \(systemErrorText())")
                    }
                case S_IFLNK:
                    let destination = try FilePaths.linkDestination(target + "/" + name)
                    guard symlink(destination, staging + "/" + name) == 0 else {
                        throw TensorCoreError.cannotWrite(path: folder, reason: "cannot keep '\(name)': \(systemErrorText())")
                    }
                default:
                    subfolders.append(name)
                }
            }
            FilePaths.syncDirectory(staging)
            try swapIn(target)
            // The staging path now holds the old folder.
            for name in subfolders { rename(staging + "/" + name, target + "/" + name) }
            FilePaths.removeFolderOfFiles(staging)
        } else {
            FilePaths.syncDirectory(staging)
            if qtool_rename_noreplace(staging, target) != 0 {
                let code = errno
                guard code == EEXIST || code == ENOTEMPTY, FilePaths.isDirectory(target) else {
                    throw TensorCoreError.cannotWrite(path: folder, reason: systemErrorText(code))
                }
                // Another writer created the folder meanwhile: replace its model as a whole.
                try swapIn(target)
                FilePaths.removeFolderOfFiles(staging)
            }
        }
        FilePaths.syncDirectory(FilePaths.directory(of: target))
        finish()
    }

    /// Exchanges the staging folder with `target` in one step.
    private func swapIn(_ target: String) throws {
        if qtool_rename_exchange(staging, target) == 0 { return }
        let code = errno
        guard code == EINVAL || code == ENOSYS else { throw TensorCoreError.cannotWrite(path: folder, reason: systemErrorText(code)) }
        // A file system without the exchange: two renames, the destination missing in between.
        let aside = staging + ".old"
        guard rename(target, aside) == 0 else { throw TensorCoreError.cannotWrite(path: folder, reason: systemErrorText()) }
        guard rename(staging, target) == 0 else {
            let failure = systemErrorText()
            rename(aside, target)
            throw TensorCoreError.cannotWrite(path: folder, reason: failure)
        }
        rename(aside, staging)
    }

    private func finish() {
        if lockDescriptor >= 0 { close(lockDescriptor) }
        lockDescriptor = -1
        cleanup.release()
        finished = true
    }

    public func abort() {
        guard !finished else { return }
        for file in files { file.abort() }
        FilePaths.removeFolderOfFiles(staging)
        finish()
    }
}

/// Leftovers of killed runs: temporaries are named `.<name>.qtool-XXXXXX` and locked (flock) by
/// the process writing them, so one that nobody holds belongs to a run that died. One changed
/// in the last `minimumAge` seconds is left alone: its writer may have made it and not yet
/// locked it.
public enum StaleTemporaries {
    public static let marker = ".qtool-"
    public static let minimumAge = 2

    /// Removes unlocked qtool temporaries (files, and staging folders holding only files) in `folder`.
    public static func removeLeftovers(in folder: String) {
        guard let names = try? FilePaths.contents(of: folder) else { return }
        for name in names where name.hasPrefix(".") && isTemporaryName(name) {
            let path = folder + "/" + name
            let fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
            guard fd >= 0 else { continue }
            defer { close(fd) }
            var info = stat()
            guard fstat(fd, &info) == 0, time(nil) - info.st_mtim.tv_sec >= StaleTemporaries.minimumAge,
                qtool_try_lock(fd) == 0
            else { continue }
            switch info.st_mode & S_IFMT {
            case S_IFREG: unlink(path)
            case S_IFDIR: FilePaths.removeFolderOfFiles(path)
            default: break
            }
        }
    }

    /// `.<name>.qtool-XXXXXX`, with an optional `.old` (a staging folder moved aside).
    static func isTemporaryName(_ name: String) -> Bool {
        var text = Substring(name)
        if text.hasSuffix(".old") { text = text.dropLast(4) }
        let suffix = text.suffix(6)
        return text.dropLast(6).hasSuffix(marker) && suffix.count == 6
            && suffix.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber) }
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

    /// The path a symbolic link points to, resolved to an absolute path; other paths as they are.
    public static func resolvingLink(_ path: String) -> String {
        var info = stat()
        guard lstat(path, &info) == 0, info.st_mode & S_IFMT == S_IFLNK, let resolved = realpath(path, nil) else { return path }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    /// What a symbolic link holds.
    static func linkDestination(_ path: String) throws -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let length = readlink(path, &buffer, buffer.count - 1)
        guard length >= 0 else { throw TensorCoreError.cannotOpen(path: path, reason: systemErrorText()) }
        return String(decoding: buffer[0..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Unlinks the entries of `path` that are not folders, then removes it (it stays when it
    /// still holds folders).
    static func removeFolderOfFiles(_ path: String) {
        for name in (try? contents(of: path)) ?? [] {
            var info = stat()
            if lstat(path + "/" + name, &info) == 0, info.st_mode & S_IFMT != S_IFDIR { unlink(path + "/" + name) }
        }
        rmdir(path)
    }

    static func syncDirectory(_ path: String) {
        let fd = open(path, O_RDONLY | O_DIRECTORY)
        guard fd >= 0 else { return }
        fsync(fd)
        close(fd)
    }
}
