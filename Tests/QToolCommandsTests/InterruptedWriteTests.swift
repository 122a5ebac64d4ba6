import Foundation
import SafetensorsFormat
import Testing
import TestSupport

@testable import TensorCore

/// Writes that are interrupted (SIGINT, SIGTERM, a kill at any rename of a folder commit),
/// concurrent, or that meet leftovers of killed runs; and an input truncated while qtool reads it.
struct InterruptedWriteTests {
    static let model = Fixtures.path("tiny-llama")

    /// A tensor's type and shape, for a header (it streams nothing).
    struct Declared: TensorPayload {
        let dtype: DType
        let shape: Shape
        var byteCount: Int { shape.elementCount * dtype.bitSize / 8 }
        func stream(chunkBytes: Int, into sink: (UnsafeRawBufferPointer) throws -> Void) throws {}
    }

    /// A safetensors file holding one float32 tensor of `bytes` zeros, sparse (no disk used).
    static func sparseInput(_ path: String, name: String = "big.weight", bytes: Int) throws {
        let count = bytes / 4
        let header = SafeTensorsWriter.headerBytes(
            orderedItems: [.init(name: name, payload: Declared(dtype: .f32, shape: [count / 1024, 1024]))], metadata: nil)
        FileManager.default.createFile(atPath: path, contents: Data(header))
        #expect(truncate(path, off_t(header.count + count * 4)) == 0)
    }

    /// Starts qtool; returns the process and its stderr pipe.
    static func start(_ arguments: [String]) throws -> (Process, Pipe) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: QToolBinary.path)
        process.arguments = arguments
        let err = Pipe()
        process.standardError = err
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        return (process, err)
    }

    /// Waits (up to 60 s) until `folder` holds a qtool temporary.
    static func waitForTemporary(in folder: String) -> Bool {
        for _ in 0..<6000 {
            if Fixtures.listing(folder).contains(where: { $0.contains(".qtool-") }) { return true }
            usleep(10_000)
        }
        return false
    }

    @Test(arguments: [SIGINT, SIGTERM])
    func aSignalMidWriteKeepsTheOldFileAndLeavesNoTemporary(_ signal: Int32) throws {
        let folder = Fixtures.temporaryFolder()
        try Self.sparseInput(folder + "/in.safetensors", bytes: 1 << 30)
        let output = Fixtures.temporaryFolder()
        try Data("old".utf8).write(to: URL(fileURLWithPath: output + "/out.safetensors"))
        let (process, _) = try Self.start(["convert", folder + "/in.safetensors", output + "/out.safetensors", "--dtype", "bf16"])
        #expect(Self.waitForTemporary(in: output))
        kill(process.processIdentifier, signal)
        process.waitUntilExit()
        #expect(process.terminationReason == .uncaughtSignal && process.terminationStatus == signal)
        #expect(Fixtures.listing(output) == ["out.safetensors"])
        let kept = Fixtures.bytes(output + "/out.safetensors") == Array("old".utf8)
        #expect(kept)
    }

    @Test(arguments: [SIGINT, SIGTERM])
    func aSignalMidFolderWriteKeepsTheOldFolder(_ signal: Int32) throws {
        let folder = Fixtures.temporaryFolder()
        try Self.sparseInput(folder + "/in.safetensors", bytes: 1 << 30)
        let parent = Fixtures.temporaryFolder()
        #expect(try QToolBinary.run(["convert", Self.model, parent + "/model", "--quiet"]).status == 0)
        let before = Fixtures.bytes(parent + "/model/model.safetensors")
        let (process, _) = try Self.start(["convert", folder + "/in.safetensors", parent + "/model", "--dtype", "bf16"])
        #expect(Self.waitForTemporary(in: parent))
        kill(process.processIdentifier, signal)
        process.waitUntilExit()
        #expect(process.terminationReason == .uncaughtSignal)
        #expect(Fixtures.listing(parent) == ["model"])
        let kept = Fixtures.bytes(parent + "/model/model.safetensors") == before
        #expect(kept)
    }

    /// The names and bytes of a model folder's tensors, if it loads.
    static func load(_ folder: String) -> [String: [UInt8]]? {
        guard let model = try? SafeTensorsModel(path: folder) else { return nil }
        var out: [String: [UInt8]] = [:]
        for (name, tensor) in model.tensors().entries { out[name] = tensor.withBytes { Array($0) } }
        return out
    }

    /// A sharded folder rewritten over one with the same shard names, killed (SIGKILL) at each
    /// rename in turn: every time, the folder loads as the old model or the new one, never a mix;
    /// and the next run removes what the killed one left.
    @Test func aKillAtAnyRenameLeavesTheOldModelOrTheNew() throws {
        let parent = Fixtures.temporaryFolder()
        let target = parent + "/model"
        let reference = Fixtures.temporaryFolder()
        #expect(try QToolBinary.run(["convert", Self.model, reference + "/old", "--max-shard-size", "1MB", "--quiet"]).status == 0)
        #expect(
            try QToolBinary.run(["convert", Self.model, reference + "/new", "--max-shard-size", "1MB", "--dtype", "f32", "--quiet"]).status
                == 0)
        let old = try #require(Self.load(reference + "/old")), new = try #require(Self.load(reference + "/new"))
        let differ = old != new
        #expect(differ)
        var killedAt: [Int] = []
        for n in 1...40 {
            try? FileManager.default.removeItem(atPath: target)
            try FileManager.default.copyItem(atPath: reference + "/old", toPath: target)
            let strace = Process()
            strace.executableURL = URL(fileURLWithPath: "/usr/bin/strace")
            strace.arguments = [
                "-f", "-o", "/dev/null", "-e", "trace=rename,renameat,renameat2",
                "-e", "inject=rename,renameat,renameat2:signal=SIGKILL:when=\(n)",
                QToolBinary.path, "convert", Self.model, target, "--max-shard-size", "1MB", "--dtype", "f32", "--quiet",
            ]
            strace.standardError = FileHandle.nullDevice
            try strace.run()
            strace.waitUntilExit()
            let loaded = try #require(Self.load(target), "after a kill at rename \(n)")
            // (Booleans, not the models: a failed expectation would print every byte.)
            let isOld = loaded == old, isNew = loaded == new
            #expect(isOld || isNew, "a mix after a kill at rename \(n)")
            if strace.terminationStatus == 0 {
                #expect(isNew)
                break
            }
            killedAt.append(n)
        }
        #expect(killedAt.count >= 5, "the commit renames each shard, the index and the folder")
        // Leftovers of the killed runs (once a moment old) go with the next write into the folder.
        sleep(UInt32(StaleTemporaries.minimumAge) + 1)
        #expect(try QToolBinary.run(["convert", Self.model, target, "--max-shard-size", "1MB", "--quiet"]).status == 0)
        #expect(Fixtures.listing(parent) == ["model"])
        let restored = Self.load(target) == old
        #expect(restored)
    }

    @Test func twoWritersIntoOneNewFolderLeaveOneWholeModel() throws {
        let parent = Fixtures.temporaryFolder()
        let target = parent + "/model"
        let runs = try [["--dtype", "f32"], ["--dtype", "bf16"]].map { options in
            try Self.start(["convert", Self.model, target, "--max-shard-size", "1MB", "--quiet"] + options)
        }
        for (process, _) in runs { process.waitUntilExit() }
        #expect(runs.allSatisfy { $0.0.terminationStatus == 0 })
        let reference = Fixtures.temporaryFolder()
        #expect(
            try QToolBinary.run(["convert", Self.model, reference + "/f32", "--max-shard-size", "1MB", "--dtype", "f32", "--quiet"]).status
                == 0)
        #expect(
            try QToolBinary.run(["convert", Self.model, reference + "/bf16", "--max-shard-size", "1MB", "--dtype", "bf16", "--quiet"])
                .status == 0)
        let loaded = try #require(Self.load(target))
        let whole = loaded == Self.load(reference + "/f32") || loaded == Self.load(reference + "/bf16")
        #expect(whole)
        #expect(Fixtures.listing(parent) == ["model"])
    }

    /// A temporary nobody holds is a killed run's and goes; one a running writer holds (locked) stays.
    @Test func leftoversOfKilledRunsAreRemovedAndLiveOnesKept() throws {
        let parent = Fixtures.temporaryFolder()
        try Data("stale".utf8).write(to: URL(fileURLWithPath: parent + "/.model.qtool-Ab3dE9"))
        try FileManager.default.createDirectory(atPath: parent + "/.other.qtool-Zz9yX8", withIntermediateDirectories: true)
        try Data("stale".utf8).write(to: URL(fileURLWithPath: parent + "/.other.qtool-Zz9yX8/model.safetensors"))
        try Data("live".utf8).write(to: URL(fileURLWithPath: parent + "/.live.qtool-Qq1wW2"))
        let held = open(parent + "/.live.qtool-Qq1wW2", O_RDONLY)
        #expect(flock(held, LOCK_EX) == 0)
        defer { close(held) }
        try Data("mine".utf8).write(to: URL(fileURLWithPath: parent + "/notes.qtool-Ab3dE9"))
        try Data("young".utf8).write(to: URL(fileURLWithPath: parent + "/.young.qtool-Yy7uU6"))
        // All but the young one were left a minute ago.
        for name in [
            ".model.qtool-Ab3dE9", ".other.qtool-Zz9yX8", ".other.qtool-Zz9yX8/model.safetensors", ".live.qtool-Qq1wW2",
            "notes.qtool-Ab3dE9",
        ] {
            try FileManager.default.setAttributes([.modificationDate: Date(timeIntervalSinceNow: -60)], ofItemAtPath: parent + "/" + name)
        }
        #expect(try QToolBinary.run(["convert", Self.model, parent + "/model", "--quiet"]).status == 0)
        #expect(Fixtures.listing(parent) == [".live.qtool-Qq1wW2", ".young.qtool-Yy7uU6", "model", "notes.qtool-Ab3dE9"])
    }

    /// Files of the old folder that the new save does not write (a README) stay; stale weights go.
    @Test func rewritingAFolderKeepsItsOtherFiles() throws {
        let target = Fixtures.temporaryFolder() + "/model"
        #expect(try QToolBinary.run(["convert", Self.model, target, "--max-shard-size", "1MB", "--quiet"]).status == 0)
        try Data("notes".utf8).write(to: URL(fileURLWithPath: target + "/README.md"))
        try FileManager.default.createDirectory(atPath: target + "/extra", withIntermediateDirectories: true)
        try Data("x".utf8).write(to: URL(fileURLWithPath: target + "/extra/file.txt"))
        #expect(try QToolBinary.run(["convert", Self.model, target, "--quiet"]).status == 0)
        let listing = Fixtures.listing(target)
        #expect(listing.contains("README.md") && listing.contains("extra") && listing.contains("model.safetensors"))
        #expect(!listing.contains { $0.hasPrefix("model-0000") } && !listing.contains("model.safetensors.index.json"))
        #expect(Fixtures.bytes(target + "/extra/file.txt") == Array("x".utf8))
    }

    /// An input cut short while qtool has it mapped: the fault becomes the file's error.
    @Test func anInputTruncatedWhileMappedIsReported() throws {
        let adapter = Fixtures.temporaryFolder() + "/adapter"
        try FileManager.default.createDirectory(atPath: adapter, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: Fixtures.path("lora/lora/adapter_config.json"), toPath: adapter + "/adapter_config.json")
        // A 4 GiB tensor (sparse zeros) that the adapter check reads through before anything else.
        let weights = adapter + "/adapter_model.safetensors"
        try Self.sparseInput(weights, name: "base_model.model.lm_head.weight", bytes: 4 << 30)
        let (process, err) = try Self.start(["merge", Self.model, "--adapter", adapter, "--dry-run"])
        usleep(300_000)
        #expect(truncate(weights, 4096) == 0)
        let message = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationReason == .exit && process.terminationStatus == 2, "\(message)")
        #expect(message == "error: \(weights): the file was truncated or changed while qtool was reading it\n")
    }
}
