import Foundation
import TensorCore

/// Paths of the committed fixtures and helpers to run the built `qtool`.
public enum Fixtures {
    /// The repository's root folder.
    public static let root: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    public static func path(_ relative: String) -> String { root + "/fixtures/" + relative }

    public static func bytes(_ path: String) -> [UInt8] {
        (try? [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))) ?? []
    }

    /// A new empty folder under the system's temporary folder.
    public static func temporaryFolder() -> String {
        let path = NSTemporaryDirectory() + "qtool-test-" + UUID().uuidString
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// Names in a folder, sorted (hidden files included: a leftover temporary would show here).
    public static func listing(_ folder: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []).sorted()
    }
}

/// What a run of the `qtool` binary did.
public struct CommandResult: Sendable {
    public let status: Int32
    public let stdout: String
    public let stderr: String
    /// The signal that ended the run, if one did.
    public var signal: Int32? = nil
}

public enum QToolBinary {
    /// The `qtool` built beside the test bundle.
    public static let path: String = {
        let candidates = [
            URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("qtool").path,
            Bundle.main.bundleURL.appendingPathComponent("qtool").path,
            Fixtures.root + "/.build/debug/qtool",
        ]
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) } ?? candidates.last!
    }()

    /// Runs `qtool` with `arguments`, capturing both streams. A run past `timeout` seconds is
    /// killed (and reported as status -1, so a hang fails the test instead of stalling it);
    /// `memoryLimit` caps its address space (bytes), so a run that would blow up memory fails;
    /// `removed` names environment variables the run does not inherit.
    public static func run(
        _ arguments: [String], environment: [String: String] = [:], removing removed: [String] = [], timeout: Double = 300,
        memoryLimit: Int? = nil
    ) throws -> CommandResult {
        let process = Process()
        if let memoryLimit {
            process.executableURL = URL(fileURLWithPath: "/bin/sh")
            process.arguments = ["-c", "ulimit -v \(memoryLimit / 1024); exec \"$0\" \"$@\"", path] + arguments
        } else {
            process.executableURL = URL(fileURLWithPath: path)
            process.arguments = arguments
        }
        var env = ProcessInfo.processInfo.environment
        env.merge(environment) { $1 }
        for name in removed { env[name] = nil }
        process.environment = env
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let finished = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var timedOut = false
        DispatchQueue.global().async {
            if finished.wait(timeout: .now() + timeout) == .timedOut {
                timedOut = true
                kill(process.processIdentifier, SIGKILL)
            }
        }
        defer { finished.signal() }
        // Read both pipes before waiting, so a large output cannot block the child.
        let group = DispatchGroup()
        nonisolated(unsafe) var outData = Data()
        nonisolated(unsafe) var errData = Data()
        DispatchQueue.global().async(group: group) { outData = out.fileHandleForReading.readDataToEndOfFile() }
        DispatchQueue.global().async(group: group) { errData = err.fileHandleForReading.readDataToEndOfFile() }
        group.wait()
        process.waitUntilExit()
        return CommandResult(
            status: timedOut ? -1 : process.terminationStatus, stdout: String(decoding: outData, as: UTF8.self),
            stderr: String(decoding: errData, as: UTF8.self),
            signal: process.terminationReason == .uncaughtSignal ? process.terminationStatus : nil)
    }
}
