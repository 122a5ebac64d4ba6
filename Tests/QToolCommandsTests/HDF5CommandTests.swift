import Foundation
import SafetensorsFormat
import TensorCore
import Testing
import TestSupport

/// `qtool convert` / `inspect` with HDF5 on either side.
struct HDF5CommandTests {
    @Test func kerasFileConvertsAndComesBack() throws {
        let folder = Fixtures.temporaryFolder()
        let source = Fixtures.path("hdf5/keras3.weights.h5")
        #expect(try QToolBinary.run(["convert", source, folder + "/k.safetensors", "--quiet"]).status == 0)
        let converted = try SafeTensorsFile(path: folder + "/k.safetensors").tensors()
        let golden = try SafeTensorsFile(path: Fixtures.path("hdf5/keras3.safetensors")).tensors()
        for name in golden.names { #expect(converted[name]?.isIdentical(to: golden[name]!) == true, "\(name)") }
        #expect(converted.metadata?.contains { $0.key == "hdf5_layout" } == true)
        // --layout torch transposes the Dense kernels only; back with --layout keras.
        #expect(
            try QToolBinary.run(["convert", folder + "/k.safetensors", folder + "/t.safetensors", "--layout", "torch", "--quiet"]).status
                == 0)
        let torch = try SafeTensorsFile(path: folder + "/t.safetensors").tensors()
        #expect(torch["layers.dense.vars.0"]?.shape == [16, 8] && torch["layers.dense_1.vars.0"]?.shape == [4, 16])
        #expect(torch["layers.batch_normalization.vars.0"]?.isIdentical(to: golden["layers.batch_normalization.vars.0"]!) == true)
        // Asking again for the layout it has changes nothing.
        #expect(
            try QToolBinary.run(["convert", folder + "/t.safetensors", folder + "/t2.safetensors", "--layout", "torch", "--quiet"]).status
                == 0)
        #expect(Fixtures.bytes(folder + "/t.safetensors") == Fixtures.bytes(folder + "/t2.safetensors"))
        let back = try QToolBinary.run(["convert", folder + "/t.safetensors", folder + "/back.weights.h5", "--layout", "keras", "--quiet"])
        #expect(back.status == 0, "\(back.stderr)")
        #expect(try QToolBinary.run(["convert", folder + "/back.weights.h5", folder + "/again.safetensors", "--quiet"]).status == 0)
        let again = try SafeTensorsFile(path: folder + "/again.safetensors").tensors()
        for name in golden.names { #expect(again[name]?.isIdentical(to: golden[name]!) == true, "\(name)") }
    }

    @Test func unsupportedDatasetsWarnByName() throws {
        let folder = Fixtures.temporaryFolder()
        let source = Fixtures.path("hdf5/unsupported.h5")
        let result = try QToolBinary.run(["convert", source, folder + "/u.safetensors", "--quiet"])
        #expect(result.status == 0)
        for name in ["/labels", "/records", "/spectrum"] {
            #expect(result.stderr.contains("warning: \(source): dataset '\(name)'"), "\(result.stderr)")
        }
        #expect(try SafeTensorsFile(path: folder + "/u.safetensors").tensors().names.sorted() == ["group.bias", "weights"])
    }

    @Test(arguments: [("truncated.h5", "truncated file"), ("not-hdf5.h5", "not an HDF5 file")])
    func brokenInputExitsTwoWithNoOutput(_ file: String, _ message: String) throws {
        let folder = Fixtures.temporaryFolder()
        let source = Fixtures.path("hdf5/" + file)
        for output in [folder + "/x.safetensors", folder + "/x.h5"] {
            let result = try QToolBinary.run(["convert", source, output])
            #expect(
                result.status == 2 && result.stderr.hasPrefix("error: \(source): ") && result.stderr.contains(message), "\(result.stderr)")
        }
        #expect(Fixtures.listing(folder).isEmpty)
    }

    @Test func tensorsHDF5CannotHoldAreRefused() throws {
        let folder = Fixtures.temporaryFolder()
        let result = try QToolBinary.run(["convert", Fixtures.path("safetensors/reference-all-dtypes.safetensors"), folder + "/x.h5"])
        #expect(result.status == 2 && result.stderr.contains("has no HDF5 type"), "\(result.stderr)")
        #expect(Fixtures.listing(folder).isEmpty)
    }

    /// libhdf5 failing part way through a write (a file-size limit): the file's error, exit 2,
    /// no temporary left, whatever libhdf5 does when it shuts down.
    @Test func aFailedHDF5WriteIsReportedAndLeavesNothing() throws {
        let folder = Fixtures.temporaryFolder()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = [
            "-c", "ulimit -f 64; exec \"$0\" convert \"$1\" \"$2\"", QToolBinary.path, Fixtures.path("tiny-llama"), folder + "/out.h5",
        ]
        let err = Pipe()
        process.standardError = err
        try process.run()
        let message = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationReason == .exit && process.terminationStatus == 2, "\(message)")
        #expect(message.hasPrefix("error: \(folder)/out.h5: cannot write"), "\(message)")
        #expect(Fixtures.listing(folder).isEmpty)
    }
}
