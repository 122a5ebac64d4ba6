import CProcess
import Foundation
import TensorCore

#if canImport(Glibc)
    import Glibc
#endif

/// Where libhdf5 runs. libhdf5 1.10 crashes, loops forever or allocates without bound on some
/// damaged files, and qtool cannot fix it; so for files from outside it runs in a helper process
/// (the qtool binary itself, started with `--hdf5-helper`) with a memory limit, answering one
/// request at a time over a socket. A request that gets no answer within the time limit kills
/// the helper; a helper that dies or answers nonsense is reported as the file's error.
public enum HDF5Containment: Sendable {
    /// libhdf5 in this process: for files qtool or a test just wrote.
    case inProcess
    /// libhdf5 in a helper started from `executable` (a qtool binary); a request that takes
    /// longer than `timeout` seconds stops it.
    case helperProcess(executable: String, timeout: Double = HDF5HelperProcess.defaultTimeout)
}

/// The helper: spawning it, talking to it, and (in the helper) serving requests.
public final class HDF5HelperProcess: @unchecked Sendable {
    /// The argument that makes the qtool binary serve as the helper.
    static let argument = "--hdf5-helper"
    /// The helper's address-space limit: libhdf5 plus a few chunks of the largest datasets.
    static let addressSpaceLimit = 6 << 30
    /// Seconds a request may take: 30, or `QTOOL_HDF5_TIMEOUT`.
    public static let defaultTimeout: Double =
        ProcessInfo.processInfo.environment["QTOOL_HDF5_TIMEOUT"].flatMap(Double.init).flatMap { $0 > 0 ? $0 : nil } ?? 30

    private let timeout: Double
    /// The largest JSON answer the parent reads.
    static let maximumReply = HDF5Limits.maximumLayoutBytes + (64 << 20)

    enum Kind: UInt8 {
        case open = 1, read, create, addDataset, write, finish
        case ok = 10, data, error
    }

    private let pid: pid_t
    private let socket: Int32
    private let lock = NSLock()
    /// The file the helper works on, for errors.
    private let path: String
    private var dead = false

    init(executable: String, timeout: Double, path: String) throws(HDF5Error) {
        self.path = path
        self.timeout = timeout
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            throw .helperFailed(path: path, object: "/", reason: "cannot start qtool's HDF5 helper: \(systemErrorText())")
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, pair[1], 3)
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        // The helper starts with no signal blocked or ignored, whatever this thread inherited.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t(), all = sigset_t()
        sigemptyset(&empty)
        sigfillset(&all)
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let arguments = [executable, Self.argument]
        var environment = ProcessInfo.processInfo.environment
        environment["OPENBLAS_NUM_THREADS"] = "1"
        let argv = arguments.map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var child: pid_t = 0
        var status = posix_spawn(&child, executable, &actions, &attributes, argv, envp)
        // A binary that another process has open for writing a moment longer (a concurrent fork
        // inherited the descriptor) cannot be started yet: try again shortly.
        for _ in 0..<50 where status == ETXTBSY {
            usleep(20_000)
            status = posix_spawn(&child, executable, &actions, &attributes, argv, envp)
        }
        close(pair[1])
        guard status == 0 else {
            close(pair[0])
            throw .helperFailed(
                path: path, object: "/", reason: "cannot start qtool's HDF5 helper \(executable): \(systemErrorText(status))")
        }
        pid = child
        socket = pair[0]
    }

    deinit {
        close(socket)
        reap(kill: false)
    }

    /// Waits for the helper to end (it ends when its socket closes); kills it if asked, or if it
    /// lingers.
    private func reap(kill shouldKill: Bool) {
        if shouldKill { kill(pid, SIGKILL) }
        var status: Int32 = 0
        for _ in 0..<200 {
            if waitpid(pid, &status, WNOHANG) != 0 { return }
            usleep(5000)
        }
        kill(pid, SIGKILL)
        waitpid(pid, &status, 0)
    }

    // MARK: Requests (parent side)

    /// Sends a request and returns the JSON of an `ok` answer, or reads a `data` answer into
    /// `into` (which must be filled exactly).
    @discardableResult
    func request(
        _ kind: Kind, json: Data, payload: UnsafeRawBufferPointer? = nil, object: String,
        into destination: UnsafeMutableRawBufferPointer? = nil
    ) throws(HDF5Error) -> Data {
        lock.lock()
        defer { lock.unlock() }
        guard !dead else { throw .helperFailed(path: path, object: object, reason: "qtool's HDF5 helper has already failed") }
        let deadline = Date().addingTimeInterval(timeout)
        do {
            var header = [kind.rawValue]
            let length = UInt64(4 + json.count + (payload?.count ?? 0))
            withUnsafeBytes(of: length.littleEndian) { header += $0 }
            withUnsafeBytes(of: UInt32(json.count).littleEndian) { header += $0 }
            try header.withUnsafeBytes { try send($0, deadline) }
            try json.withUnsafeBytes { try send($0, deadline) }
            if let payload { try send(payload, deadline) }

            var replyHeader = [UInt8](repeating: 0, count: 9)
            try replyHeader.withUnsafeMutableBytes { try receive($0, deadline) }
            let replyKind = Kind(rawValue: replyHeader[0])
            let replyLength = replyHeader.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: 1, as: UInt64.self)) }
            switch replyKind {
            case .data:
                guard let destination, replyLength == UInt64(destination.count) else { throw HelperFailure.protocolError }
                try receive(destination, deadline)
                return Data()
            case .ok, .error:
                guard replyLength <= UInt64(Self.maximumReply) else { throw HelperFailure.protocolError }
                var body = Data(count: Int(replyLength))
                try body.withUnsafeMutableBytes { try receive($0, deadline) }
                if replyKind == .ok { return body }
                guard let error = try? JSONDecoder().decode(HDF5Error.self, from: body) else { throw HelperFailure.protocolError }
                throw HelperFailure.reported(error)
            default:
                throw HelperFailure.protocolError
            }
        } catch let failure as HelperFailure {
            if case .reported(let error) = failure { throw error }
            dead = true
            throw .helperFailed(path: path, object: object, reason: describe(failure))
        } catch {
            dead = true
            throw .helperFailed(path: path, object: object, reason: "\(error)")
        }
    }

    private enum HelperFailure: Error {
        case timedOut, closed, protocolError, system(Int32)
        case reported(HDF5Error)
    }

    /// What became of the helper, in words; kills and reaps it.
    private func describe(_ failure: HelperFailure) -> String {
        switch failure {
        case .timedOut:
            reap(kill: true)
            return "libhdf5 did not answer within \(Int(timeout)) s (a damaged file can make it loop); stopped"
        case .protocolError:
            reap(kill: true)
            return "qtool's HDF5 helper answered nonsense (libhdf5 misbehaved on a damaged file)"
        case .system(let code):
            reap(kill: true)
            return "talking to qtool's HDF5 helper failed: \(systemErrorText(code))"
        case .closed, .reported:
            var status: Int32 = 0
            var ended = false
            for _ in 0..<400 {
                if waitpid(pid, &status, WNOHANG) == pid {
                    ended = true
                    break
                }
                usleep(5000)
            }
            if !ended {
                kill(pid, SIGKILL)
                waitpid(pid, &status, 0)
            }
            let signal = status & 0x7F
            guard signal != 0 else { return "qtool's HDF5 helper stopped (status \((status >> 8) & 0xFF)): the file is damaged" }
            let names: [Int32: String] = [
                SIGSEGV: "SIGSEGV", SIGABRT: "SIGABRT", SIGBUS: "SIGBUS", SIGILL: "SIGILL", SIGTRAP: "SIGTRAP", SIGKILL: "SIGKILL",
            ]
            return
                "libhdf5 crashed (\(names[signal] ?? "signal \(signal)")) or passed its \(Self.addressSpaceLimit >> 30) GiB memory limit: "
                + "the file is damaged or declares more than it holds"
        }
    }

    private func send(_ bytes: UnsafeRawBufferPointer, _ deadline: Date) throws {
        var offset = 0
        while offset < bytes.count {
            try wait(for: Int16(POLLOUT), deadline)
            let n = Glibc.send(socket, bytes.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL))
            if n < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                if errno == EPIPE || errno == ECONNRESET { throw HelperFailure.closed }
                throw HelperFailure.system(errno)
            }
            offset += n
        }
    }

    private func receive(_ bytes: UnsafeMutableRawBufferPointer, _ deadline: Date) throws {
        var offset = 0
        while offset < bytes.count {
            try wait(for: Int16(POLLIN), deadline)
            let n = recv(socket, bytes.baseAddress! + offset, bytes.count - offset, 0)
            if n < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                if errno == ECONNRESET { throw HelperFailure.closed }
                throw HelperFailure.system(errno)
            }
            if n == 0 { throw HelperFailure.closed }
            offset += n
        }
    }

    private func wait(for events: Int16, _ deadline: Date) throws {
        while true {
            let remaining = deadline.timeIntervalSinceNow
            guard remaining > 0 else { throw HelperFailure.timedOut }
            var descriptor = pollfd(fd: socket, events: events, revents: 0)
            let ready = poll(&descriptor, 1, Int32(min(remaining * 1000 + 1, 60_000)))
            if ready > 0 { return }
            if ready < 0 && errno != EINTR { throw HelperFailure.system(errno) }
        }
    }

    // MARK: Serving (helper side)

    /// The helper's main loop over the socket at `fd`: one answer per request, until the socket
    /// closes. Returns the process's exit status.
    static func serve(fd: Int32) -> Int32 {
        qtool_die_with_parent()
        // Past a file-size limit a write fails (and is reported) instead of killing the helper.
        signal(SIGXFSZ, SIG_IGN)
        var limit = rlimit(rlim_cur: rlim_t(addressSpaceLimit), rlim_max: rlim_t(addressSpaceLimit))
        setrlimit(__rlimit_resource_t(RLIMIT_AS.rawValue), &limit)
        let session = HDF5Session()
        while true {
            var header = [UInt8](repeating: 0, count: 9)
            guard readAll(fd, &header) else { return 0 }
            let length = header.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: 1, as: UInt64.self)) }
            guard let kind = Kind(rawValue: header[0]), length >= 4, length <= UInt64(maximumReply) + UInt64(HDF5Limits.slabBytes) * 2
            else {
                return 1
            }
            var body = [UInt8](repeating: 0, count: Int(length))
            guard readAll(fd, &body) else { return 1 }
            let jsonLength = Int(body.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: 0, as: UInt32.self)) })
            guard jsonLength <= body.count - 4 else { return 1 }
            let json = Data(body[4..<(4 + jsonLength)])
            let reply: (Kind, [UInt8])
            do {
                reply = try body.withUnsafeBytes { raw in
                    try handle(kind, json: json, payload: UnsafeRawBufferPointer(rebasing: raw[(4 + jsonLength)...]), session: session)
                }
            } catch let error as HDF5Error {
                reply = (.error, Array((try? JSONEncoder().encode(error)) ?? Data()))
            } catch {
                return 1
            }
            var out = [reply.0.rawValue]
            withUnsafeBytes(of: UInt64(reply.1.count).littleEndian) { out += $0 }
            guard writeAll(fd, out + reply.1) else { return 0 }
        }
    }

    struct OpenRequest: Codable { var path: String; var allowExternal: Bool }
    struct ReadRequest: Codable { var dataset: Int; var slab: HDF5Slab }
    struct CreateRequest: Codable { var temporaryPath: String; var reportedPath: String; var layout: String? }
    struct WriteRequest: Codable { var dataset: Int; var slab: HDF5Slab }
    struct IndexReply: Codable { var index: Int }

    private static func handle(_ kind: Kind, json: Data, payload: UnsafeRawBufferPointer, session: HDF5Session) throws -> (Kind, [UInt8]) {
        let decoder = JSONDecoder()
        let encoder = JSONEncoder()
        switch kind {
        case .open:
            let request = try decoder.decode(OpenRequest.self, from: json)
            return (.ok, Array(try encoder.encode(try session.open(path: request.path, allowExternal: request.allowExternal))))
        case .read:
            let request = try decoder.decode(ReadRequest.self, from: json)
            guard let dtype = try? session.dtype(of: request.dataset),
                let bytes = CheckedSize.product(request.slab.count).flatMap({ CheckedSize.multiply($0, dtype.bitSize / 8) }),
                bytes <= HDF5Limits.slabBytes * 2
            else { throw HDF5Error.cannotRead(path: "", object: "?", reason: "a malformed slab request") }
            var buffer = [UInt8](repeating: 0, count: bytes)
            try buffer.withUnsafeMutableBytes { try session.read(dataset: request.dataset, slab: request.slab, into: $0) }
            return (.data, buffer)
        case .create:
            let request = try decoder.decode(CreateRequest.self, from: json)
            var layout: HDF5Layout? = nil
            if let text = request.layout {
                layout = try HDF5Layout(json: try JSONParser.parse(text), path: request.reportedPath)
            }
            try session.create(temporaryPath: request.temporaryPath, reportedPath: request.reportedPath, layout: layout)
            return (.ok, [])
        case .addDataset:
            let spec = try decoder.decode(HDF5DatasetSpec.self, from: json)
            return (.ok, Array(try encoder.encode(IndexReply(index: try session.addDataset(spec)))))
        case .write:
            let request = try decoder.decode(WriteRequest.self, from: json)
            try session.write(dataset: request.dataset, slab: request.slab, bytes: payload)
            return (.ok, [])
        case .finish:
            try session.finish()
            return (.ok, [])
        default:
            throw HDF5Error.cannotRead(path: "", object: "?", reason: "an unknown request")
        }
    }

    private static func readAll(_ fd: Int32, _ bytes: inout [UInt8]) -> Bool {
        var offset = 0
        let count = bytes.count
        return bytes.withUnsafeMutableBytes { raw in
            while offset < count {
                let n = read(fd, raw.baseAddress! + offset, count - offset)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return false }
                offset += n
            }
            return true
        }
    }

    private static func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = Glibc.send(fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return false }
                offset += n
            }
            return true
        }
    }
}

/// Serves as qtool's HDF5 helper when the process was started as one (`qtool --hdf5-helper`);
/// the qtool binary calls this first thing and exits with the status it returns.
public enum HDF5Helper {
    public static func serveIfAsked(_ arguments: [String]) -> Int32? {
        guard arguments.count == 2, arguments[1] == HDF5HelperProcess.argument else { return nil }
        return HDF5HelperProcess.serve(fd: 3)
    }
}
