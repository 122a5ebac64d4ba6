import Foundation
import TensorCore

/// Writes tensors as an HDF5 file, one at a time: each tensor a dataset at the path its
/// `HDF5Layout` records (with that layout's groups and attributes, so a file read by `HDF5Reader`
/// comes back the same), or else at its name with `.` as the separator. Each tensor streams to
/// libhdf5 a slab at a time, so writing holds one slab, not the model. Atomic: libhdf5 writes the
/// temporary of an `AtomicFileOutput` beside the target, which is then synced and renamed.
public final class HDF5Writer {
    public let path: String
    private let output: AtomicFileOutput
    private let targets: [String: (path: String, attributes: [HDF5Attribute])]
    private var backend: Backend?
    private var finished = false

    private enum Backend {
        case inProcess(HDF5Session)
        case helper(HDF5HelperProcess)
    }

    /// Checks every name and the layout, then creates the file with its groups. `tensorNames`
    /// are all the tensors `add` will be given.
    public init(path: String, tensorNames: [String], layout: HDF5Layout?, containment: HDF5Containment) throws {
        self.path = path
        targets = try Self.plan(tensorNames, layout: layout, path: path)
        output = try AtomicFileOutput(destination: path)
        do {
            switch containment {
            case .inProcess:
                let session = HDF5Session()
                try session.create(temporaryPath: output.temporaryPath, reportedPath: path, layout: layout)
                backend = .inProcess(session)
            case .helperProcess(let executable, let timeout):
                let helper = try HDF5HelperProcess(executable: executable, timeout: timeout, path: path)
                backend = .helper(helper)
                let request = HDF5HelperProcess.CreateRequest(
                    temporaryPath: output.temporaryPath, reportedPath: path, layout: layout?.json.serialized(.compact))
                try helper.request(.create, json: try JSONEncoder().encode(request), object: "/")
            }
        } catch {
            abort()
            throw error
        }
    }

    deinit { if !finished { abort() } }

    /// Where each tensor goes, checked: no empty components, no NUL (libhdf5 would cut the name
    /// there), no dataset that is also another's group.
    private static func plan(_ names: [String], layout: HDF5Layout?, path: String) throws(HDF5Error)
        -> [String: (path: String, attributes: [HDF5Attribute])]
    {
        let pathOf = Dictionary(layout?.datasets.map { ($0.tensor, $0) } ?? [], uniquingKeysWith: { first, _ in first })
        var targets: [String: (path: String, attributes: [HDF5Attribute])] = [:]
        var owner: [String: String] = [:]
        for name in names {
            guard !name.unicodeScalars.contains("\u{0}") else {
                throw .unsupportedTensor(path: path, tensor: name, problem: "its name holds a NUL character, which HDF5 names cannot")
            }
            let entry = pathOf[name]
            let datasetPath = entry?.path ?? "/" + name.replacing(".", with: "/")
            guard !datasetPath.split(separator: "/", omittingEmptySubsequences: false).dropFirst().contains(where: \.isEmpty),
                datasetPath != "/", datasetPath.hasPrefix("/"), !datasetPath.unicodeScalars.contains("\u{0}")
            else {
                throw .unsupportedTensor(path: path, tensor: name, problem: "its name gives an empty HDF5 path component")
            }
            if let other = owner[datasetPath] { throw .nameConflict(path: path, first: other, second: name) }
            owner[datasetPath] = name
            targets[name] = (datasetPath, entry?.attributes ?? [])
        }
        for (datasetPath, name) in owner {
            var prefix = ""
            for component in datasetPath.split(separator: "/").dropLast() {
                prefix += "/" + component
                if let other = owner[prefix] { throw .nameConflict(path: path, first: other, second: name) }
            }
        }
        for group in layout?.groups ?? [] where group.path.unicodeScalars.contains("\u{0}") {
            throw .invalidLayout(path: path, problem: "group '\(group.path)' has a NUL in its name")
        }
        for attribute in (layout?.groups.flatMap(\.attributes) ?? []) + (layout?.datasets.flatMap(\.attributes) ?? []) {
            var texts = [attribute.name]
            if case .strings(let strings, _, _) = attribute.values { texts += strings }
            if texts.contains(where: { $0.unicodeScalars.contains("\u{0}") }) {
                throw .invalidLayout(path: path, problem: "attribute '\(attribute.name)' holds a NUL character, which HDF5 strings cannot")
            }
        }
        return targets
    }

    /// Writes one tensor as its dataset, slab by slab.
    public func add(name: String, _ payload: any TensorPayload) throws {
        guard let target = targets[name], let backend else {
            throw HDF5Error.cannotWrite(path: path, object: name, reason: "not among the tensors the writer was planned for")
        }
        guard HDF5ElementType.writable.contains(payload.dtype) else {
            throw HDF5Error.unsupportedTensor(path: path, tensor: name, problem: "\(payload.dtype.rawValue) has no HDF5 type qtool writes")
        }
        let spec = HDF5DatasetSpec(path: target.path, dtype: payload.dtype.rawValue, shape: payload.shape.dimensions)
        let index: Int
        switch backend {
        case .inProcess(let session): index = try session.addDataset(spec)
        case .helper(let helper):
            let reply = try helper.request(.addDataset, json: try JSONEncoder().encode(spec), object: target.path)
            guard let decoded = try? JSONDecoder().decode(HDF5HelperProcess.IndexReply.self, from: reply) else {
                throw HDF5Error.helperFailed(path: path, object: target.path, reason: "qtool's HDF5 helper answered nonsense")
            }
            index = decoded.index
        }
        let width = payload.dtype.bitSize / 8
        let slabs = HDF5Slabs.plan(shape: spec.shape, elementBytes: width)
        let buffer = OwnedBytes(count: slabs.map { $0.elementCount * width }.max() ?? 0)
        var current = 0
        var filled = 0
        func flush() throws {
            let slab = slabs[current]
            let bytes = UnsafeRawBufferPointer(start: buffer.buffer.baseAddress, count: filled)
            switch backend {
            case .inProcess(let session): try session.write(dataset: index, slab: slab, bytes: bytes)
            case .helper(let helper):
                let request = try JSONEncoder().encode(HDF5HelperProcess.WriteRequest(dataset: index, slab: slab))
                try helper.request(.write, json: request, payload: bytes, object: target.path)
            }
            current += 1
            filled = 0
        }
        try payload.stream(chunkBytes: HDF5Limits.slabBytes) { piece in
            var offset = 0
            while offset < piece.count {
                guard current < slabs.count else {
                    throw HDF5Error.cannotWrite(
                        path: path, object: target.path, reason: "the tensor streamed more bytes than its shape holds")
                }
                let n = min(slabs[current].elementCount * width - filled, piece.count - offset)
                (buffer.buffer.baseAddress! + filled).copyMemory(from: piece.baseAddress! + offset, byteCount: n)
                filled += n
                offset += n
                if filled == slabs[current].elementCount * width { try flush() }
            }
        }
        guard current == slabs.count else {
            throw HDF5Error.cannotWrite(path: path, object: target.path, reason: "the tensor streamed fewer bytes than its shape holds")
        }
    }

    /// Closes the file, syncs it and moves it into place.
    public func commit() throws {
        switch backend {
        case .inProcess(let session): try session.finish()
        case .helper(let helper): try helper.request(.finish, json: Data("{}".utf8), object: "/")
        case nil: break
        }
        backend = nil
        try output.commit()
        finished = true
    }

    /// Removes the temporary file (and stops the helper); the target is untouched.
    public func abort() {
        backend = nil
        output.abort()
        finished = true
    }

    /// Writes `tensors` in one go.
    public static func write(
        _ tensors: [(name: String, tensor: Tensor)], layout: HDF5Layout?, to path: String, containment: HDF5Containment
    ) throws {
        let writer = try HDF5Writer(path: path, tensorNames: tensors.map(\.name), layout: layout, containment: containment)
        do {
            for (name, tensor) in tensors {
                try writer.add(name: name, tensor)
                tensor.releaseResidentPages()
            }
            try writer.commit()
        } catch {
            writer.abort()
            throw error
        }
    }
}

/// Keras Dense kernels are `[in, out]`, torch Linear weights `[out, in]`: which tensors
/// `convert --layout torch|keras` transposes.
public enum KerasKernels {
    /// A 2-D `kernel` (legacy Keras names, `kernel` or `kernel:0`), or variable 0 of a Keras 3
    /// `dense` layer group (`layers/dense_1/vars/0`).
    public static func isDenseKernel(name: String, shape: Shape) -> Bool {
        guard shape.rank == 2 else { return false }
        let parts = name.split(separator: ".")
        guard let last = parts.last else { return false }
        if last == "kernel" || last == "kernel:0" { return true }
        if last == "0", parts.count >= 3, parts[parts.count - 2] == "vars" {
            return parts[parts.count - 3].hasPrefix("dense")
        }
        return false
    }

    /// The 2-D tensor transposed.
    public static func transposed(_ tensor: Tensor) -> Tensor {
        let rows = tensor.shape.dimensions[0], columns = tensor.shape.dimensions[1]
        let width = tensor.dtype.bitSize / 8
        let output = OwnedBytes(count: tensor.byteCount)
        tensor.withBytes { source in
            for row in 0..<rows {
                for column in 0..<columns {
                    (output.buffer.baseAddress! + (column * rows + row) * width)
                        .copyMemory(from: source.baseAddress! + (row * columns + column) * width, byteCount: width)
                }
            }
        }
        return Tensor(dtype: tensor.dtype, shape: Shape([columns, rows]), storage: .owned(output))
    }
}
