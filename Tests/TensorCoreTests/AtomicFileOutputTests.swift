import Foundation
import Testing
import TestSupport

@testable import TensorCore

struct AtomicFileOutputTests {
    @Test func commitWritesEverythingAndLeavesNoTemporary() throws {
        let folder = Fixtures.temporaryFolder()
        let output = try AtomicFileOutput(destination: folder + "/out.bin", bufferSize: 7)
        var expected: [UInt8] = []
        for n in [0, 1, 6, 7, 8, 20, 3] {
            let piece = (0..<n).map { UInt8(($0 * 31 + n) & 0xFF) }
            try output.write(piece)
            expected += piece
        }
        #expect(Fixtures.listing(folder).count == 1 && Fixtures.listing(folder)[0].hasPrefix(".out.bin.qtool-"))
        try output.commit()
        #expect(Fixtures.bytes(folder + "/out.bin") == expected)
        #expect(Fixtures.listing(folder) == ["out.bin"])
    }

    @Test func abortLeavesTheDestinationAsItWas() throws {
        let folder = Fixtures.temporaryFolder()
        try Data("old".utf8).write(to: URL(fileURLWithPath: folder + "/out.bin"))
        let output = try AtomicFileOutput(destination: folder + "/out.bin")
        try output.write([1, 2, 3])
        output.abort()
        #expect(Fixtures.bytes(folder + "/out.bin") == Array("old".utf8))
        #expect(Fixtures.listing(folder) == ["out.bin"])
    }

    @Test func droppedWithoutCommitRemovesTheTemporary() throws {
        let folder = Fixtures.temporaryFolder()
        do {
            let output = try AtomicFileOutput(destination: folder + "/out.bin")
            try output.write([1, 2, 3])
        }
        #expect(Fixtures.listing(folder).isEmpty)
    }

    @Test func aFailedRenameIsReported() throws {
        let output = try AtomicFileOutput(destination: Fixtures.temporaryFolder() + "/x")
        try output.write([1, 2, 3])
        try FileManager.default.removeItem(atPath: FilePaths.directory(of: output.destination))
        #expect(throws: TensorCoreError.self) { try output.commit() }
    }

    @Test func aFolderTransactionAbortRemovesTheFolderItMade() throws {
        let folder = Fixtures.temporaryFolder() + "/model"
        let transaction = try FolderOutputTransaction(folder: folder)
        try transaction.file(named: "a.safetensors").write([1])
        transaction.abort()
        #expect(!FileManager.default.fileExists(atPath: folder))
    }
}
