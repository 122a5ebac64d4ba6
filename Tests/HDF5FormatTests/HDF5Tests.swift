import Foundation
import HDF5Format
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
