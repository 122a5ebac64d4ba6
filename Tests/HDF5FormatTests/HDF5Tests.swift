import Foundation
@testable import HDF5Format
import SafetensorsFormat
import TensorCore
import Testing
import TestSupport

/// The HDF5 reader and writer against files written by h5py and Keras, and the arrays h5py read
/// from them (fixtures/hdf5/*.safetensors).
struct HDF5Tests {
    static func tensors(_ reader: HDF5Reader) throws -> NamedTensors {
        var out = NamedTensors()
        for dataset in reader.datasets { out.append(dataset.name, try reader.read(dataset)) }
        return out
    }

    @Test(arguments: [
        ("generic.h5", "generic.safetensors", HDF5Kind.generic),
        ("keras3.weights.h5", "keras3.safetensors", .keras3),
        ("keras-legacy.h5", "keras-legacy.safetensors", .kerasLegacy),
    ])
    func everyArrayEqualsWhatH5pyReads(_ file: String, _ golden: String, _ kind: HDF5Kind) throws {
        let reader = try HDF5Reader(path: Fixtures.path("hdf5/" + file), containment: .inProcess)
        #expect(reader.kind == kind)
        #expect(reader.skipped.isEmpty)
        let expected = try SafeTensorsFile(path: Fixtures.path("hdf5/" + golden)).tensors()
        let actual = try Self.tensors(reader)
        #expect(Set(actual.names) == Set(expected.names))
        for name in expected.names {
            let same = actual[name].map { $0.isIdentical(to: expected[name]!) } ?? false
            #expect(same, "\(name)")
        }
    }

    @Test func legacyKerasNamesKeepTheVariableNames() throws {
        let names = try HDF5Reader(path: Fixtures.path("hdf5/keras-legacy.h5"), containment: .inProcess).datasets.map(\.name)
        #expect(names.contains("model_weights.dense.dense.kernel") && names.contains("model_weights.bn.bn.moving_variance"))
    }

    /// Tensors written with the layout they were read with come back with the same arrays, groups
    /// and attributes.
    @Test(arguments: ["generic.h5", "keras3.weights.h5", "keras-legacy.h5"])
    func writingBackReproducesTheFile(_ file: String) throws {
        let original = try HDF5Reader(path: Fixtures.path("hdf5/" + file), containment: .inProcess)
        let tensors = try Self.tensors(original)
        let out = Fixtures.temporaryFolder() + "/" + file
        try HDF5Writer.write(tensors.entries, layout: original.layout, to: out, containment: .inProcess)
        let again = try HDF5Reader(path: out, containment: .inProcess)
        #expect(again.layout == original.layout)
        #expect(again.kind == original.kind)
        let back = try Self.tensors(again)
        #expect(back.names == tensors.names)
        for name in tensors.names { #expect(back[name]!.isIdentical(to: tensors[name]!), "\(name)") }
    }

    @Test func unsupportedDatasetsAreSkippedByName() throws {
        let reader = try HDF5Reader(path: Fixtures.path("hdf5/unsupported.h5"), containment: .inProcess)
        #expect(reader.datasets.map(\.name) == ["group.bias", "weights"])
        #expect(reader.skipped.map(\.path) == ["/labels", "/records", "/spectrum"])
        #expect(reader.skipped[0].reason.contains("strings"))
    }

    @Test(arguments: [("truncated.h5", "truncated file"), ("not-hdf5.h5", "not a readable HDF5 file")])
    func brokenFilesAreErrors(_ file: String, _ message: String) throws {
        #expect {
            _ = try HDF5Reader(path: Fixtures.path("hdf5/" + file), containment: .inProcess)
        } throws: { error in
            (error as? HDF5Error)?.problem.contains(message) == true
        }
    }

    @Test func namesThatCannotBothBePathsAreRefused() throws {
        var tensors = NamedTensors()
        tensors.append("a.b", Tensor(dtype: .f32, shape: [1], values: [Float(1)]))
        tensors.append("a.b.c", Tensor(dtype: .f32, shape: [1], values: [Float(2)]))
        let folder = Fixtures.temporaryFolder()
        #expect(throws: HDF5Error.nameConflict(path: folder + "/x.h5", first: "a.b", second: "a.b.c")) {
            try HDF5Writer.write(tensors.entries, layout: nil, to: folder + "/x.h5", containment: .inProcess)
        }
        #expect(Fixtures.listing(folder).isEmpty)
    }

    /// Without a layout, names become paths; bf16 and every other type read back bit for bit.
    @Test func safetensorsModelRoundTripsThroughHDF5() throws {
        let model = try SafeTensorsModel(path: Fixtures.path("safetensors/tiny-llama-f32.safetensors")).tensors()
        let bf16 = try SafeTensorsModel(path: Fixtures.path("tiny-llama")).tensors()
        var tensors = model
        for (name, tensor) in bf16.entries { tensors.append("bf16." + name, tensor) }
        let out = Fixtures.temporaryFolder() + "/m.hdf5"
        try HDF5Writer.write(tensors.entries, layout: nil, to: out, containment: .inProcess)
        let back = try Self.tensors(try HDF5Reader(path: out, containment: .inProcess))
        #expect(Set(back.names) == Set(tensors.names))
        for name in tensors.names { #expect(back[name]!.isIdentical(to: tensors[name]!), "\(name)") }
    }

    @Test func denseKernelsAreTheTwoDimensionalKernels() {
        #expect(KerasKernels.isDenseKernel(name: "layers.dense_1.vars.0", shape: [16, 4]))
        #expect(KerasKernels.isDenseKernel(name: "model_weights.head.head.kernel", shape: [16, 4]))
        #expect(KerasKernels.isDenseKernel(name: "model_weights.head.head.kernel:0", shape: [16, 4]))
        #expect(!KerasKernels.isDenseKernel(name: "layers.dense.vars.1", shape: [16]))
        #expect(!KerasKernels.isDenseKernel(name: "layers.embedding.vars.0", shape: [10, 3]))
        #expect(!KerasKernels.isDenseKernel(name: "layers.conv1d.vars.0", shape: [3, 4, 8]))
        let t = Tensor(dtype: .f32, shape: [2, 3], values: [Float(1), 2, 3, 4, 5, 6])
        #expect(KerasKernels.transposed(t).values(as: Float.self) == [1, 4, 2, 5, 3, 6])
    }
}

/// libhdf5 misbehaving in the helper: a crash, a hang or nonsense end in the file's error, in
/// bounded time. The helper is replaced by scripts that misbehave in each way.
struct HDF5ContainmentTests {
    static func helper(_ body: String) throws -> String {
        let path = Fixtures.temporaryFolder() + "/helper.sh"
        try Data("#!/bin/sh\n\(body)\n".utf8).write(to: URL(fileURLWithPath: path))
        chmod(path, 0o755)
        return path
    }

    @Test(arguments: [
        ("kill -SEGV $$", "libhdf5 crashed (SIGSEGV)"),
        ("kill -ABRT $$", "libhdf5 crashed (SIGABRT)"),
        ("exec sleep 30", "did not answer within 1 s"),
        ("head -c 9 <&3 >/dev/null; printf 'garbage-that-is-no-answer' >&3; sleep 5", "answered nonsense"),
        ("exit 3", "stopped (status 3)"),
    ])
    func aMisbehavingHelperIsTheFilesError(_ script: String, _ message: String) throws {
        let path = Fixtures.path("hdf5/generic.h5")
        let helper = try Self.helper(script)
        #expect {
            _ = try HDF5Reader(path: path, containment: .helperProcess(executable: helper, timeout: 1))
        } throws: { error in
            guard let error = error as? HDF5Error, case .helperFailed = error, error.path == path else { return false }
            return error.problem.contains(message)
        }
    }

    /// The real helper (the qtool binary) reads what the in-process reader reads.
    @Test func theHelperReadsWhatTheLibraryReads() throws {
        let path = Fixtures.path("hdf5/generic.h5")
        let contained = try HDF5Reader(path: path, containment: .helperProcess(executable: QToolBinary.path))
        let direct = try HDF5Reader(path: path, containment: .inProcess)
        #expect(contained.layout == direct.layout && contained.kind == direct.kind)
        for (a, b) in zip(contained.datasets, direct.datasets) {
            let same = try contained.read(a).isIdentical(to: try direct.read(b))
            #expect(same, "\(a.name)")
        }
    }

    /// Datasets cut into slabs: whole rows where they fit, parts of rows where they do not, and
    /// together every element once, in order.
    @Test(arguments: [[7], [3, 5], [4, 1, 6], [2, 3, 4, 5], [], [0, 3], [1, 100]])
    func slabsCoverEveryElementInOrder(_ shape: [Int]) {
        let slabs = HDF5Slabs.plan(shape: shape, elementBytes: 4, maxBytes: 4 * 7)
        var next = 0
        for slab in slabs {
            // The slab's first element in row-major order.
            var index = 0
            for (d, start) in slab.start.enumerated() { index = index * shape[d] + start }
            #expect(index == next, "\(slab)")
            #expect(slab.elementCount <= 7 || slab.count.dropFirst().allSatisfy { $0 == 1 } == false)
            next += slab.elementCount
        }
        #expect(next == shape.reduce(1, *))
    }
}
