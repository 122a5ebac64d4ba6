import ArgumentParser
import GGUFFormat
import TensorCore

struct InspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "List the tensors of a checkpoint: name, dtype, shape, parameters, bytes.",
        discussion: """
            PATH is a file or a model folder (model.safetensors, or shards with
            model.safetensors.index.json). A GGUF file's metadata is listed too (arrays
            summarised in the table, in full in --json up to 64 elements).

            Example:
              qtool inspect fixtures/tiny-llama
              qtool inspect model.safetensors --json
            """)

    @Argument(help: "A checkpoint file or model folder.")
    var path: String

    @OptionGroup var inputOptions: InputOptions

    @Flag(help: "Print a JSON report instead of a table.")
    var json = false

    func validate() throws {
        try PathArguments.validate([("PATH", path)])
    }

    func run() throws {
        let checkpoint = try Checkpoint.open(path, allowExternal: inputOptions.allowExternal)
        let report = InspectReport(checkpoint)
        if json { Report.printJSON(report.json()) } else { print(report.table()) }
    }
}

struct InspectReport {
    struct Row {
        var name: String
        var dtype: DType
        var shape: Shape
        var parameters: Int
        var bytes: Int
        var quantization: String?
    }

    let format: String
    let path: String
    let rows: [Row]
    let metadata: [(key: String, value: String)]?
    let files: [String]
    let gguf: GGUFFile?

    init(_ checkpoint: Checkpoint) {
        format = checkpoint.format.description
        path = checkpoint.path
        rows = checkpoint.entries.map { entry in
            Row(
                name: entry.name, dtype: entry.dtype, shape: entry.shape,
                parameters: entry.shape.elementCount, bytes: entry.storedBytes, quantization: entry.quantization)
        }
        metadata = checkpoint.metadata
        files = checkpoint.shardGroups?.map(\.file) ?? []
        gguf = checkpoint.ggufFile
    }

    /// A GGUF value in JSON: arrays of up to 64 elements whole, longer ones by type and count.
    static func ggufJSON(_ value: GGUFValue) -> JSONValue {
        switch value {
        case .string(let s): .string(s)
        case .bool(let b): .bool(b)
        case .float32(let f): f.isFinite ? .double(Double(f)) : .string("\(f)")
        case .float64(let f): f.isFinite ? .double(f) : .string("\(f)")
        case .array(let type, let elements):
            elements.count <= 64
                ? .array(elements.map(ggufJSON))
                : .object([
                    JSONMember(key: "element_type", value: .string(type.description)),
                    JSONMember(key: "count", value: .integer(elements.count)),
                ])
        default: value.integer.map(JSONValue.integer) ?? .string(value.description)
        }
    }

    /// A GGUF value in the table: strings cut at 60 characters, arrays as type and count.
    static func ggufText(_ value: GGUFValue) -> String {
        switch value {
        case .string(let s): s.count > 60 ? "\"\(s.prefix(60))…\" (\(s.count) characters)" : "\"\(s)\""
        case .array(let type, let elements):
            "[\(type) × \(elements.count)]"
                + (elements.isEmpty
                    ? "" : ": " + elements.prefix(4).map(ggufText).joined(separator: ", ") + (elements.count > 4 ? ", …" : ""))
        default: value.description
        }
    }

    var totalParameters: Int { rows.reduce(0) { $0 + $1.parameters } }
    var totalBytes: Int { rows.reduce(0) { $0 + $1.bytes } }
    /// Bytes the tensors took before quantization (their original dtypes).
    var sourceBytes: Int { rows.reduce(0) { $0 + $1.parameters * $1.dtype.bitSize / 8 } }
    var isQuantized: Bool { rows.contains { $0.quantization != nil } }
    var bitsPerParameter: Double { totalParameters == 0 ? 0 : Double(totalBytes * 8) / Double(totalParameters) }

    func json() -> JSONValue {
        var members: [JSONMember] = [
            JSONMember(key: "path", value: .string(path)),
            JSONMember(key: "format", value: .string(format)),
        ]
        if !files.isEmpty { members.append(JSONMember(key: "files", value: .array(files.map(JSONValue.string)))) }
        if let metadata {
            members.append(JSONMember(key: "metadata", value: .object(metadata.map { JSONMember(key: $0.key, value: .string($0.value)) })))
        }
        if let gguf {
            members.append(JSONMember(key: "gguf_version", value: .integer(Int(gguf.version))))
            members.append(JSONMember(key: "alignment", value: .integer(gguf.alignment)))
            members.append(
                JSONMember(
                    key: "metadata",
                    value: .array(
                        gguf.metadata.entries.map { entry in
                            var item = [
                                JSONMember(key: "key", value: .string(entry.key)),
                                JSONMember(key: "type", value: .string(entry.value.type.description)),
                            ]
                            if case .array(let type, _) = entry.value {
                                item.append(JSONMember(key: "element_type", value: .string(type.description)))
                            }
                            item.append(JSONMember(key: "value", value: Self.ggufJSON(entry.value)))
                            return .object(item)
                        })))
        }
        members.append(
            JSONMember(
                key: "tensors",
                value: .array(
                    rows.map { row in
                        .object(
                            [
                                JSONMember(key: "name", value: .string(row.name)),
                                JSONMember(key: "dtype", value: .string(row.dtype.rawValue)),
                                JSONMember(key: "shape", value: .array(row.shape.dimensions.map(JSONValue.integer))),
                                JSONMember(key: "parameters", value: .integer(row.parameters)),
                                JSONMember(key: "bytes", value: .integer(row.bytes)),
                            ] + (row.quantization.map { [JSONMember(key: "quantization", value: .string($0))] } ?? []))
                    })))
        members.append(JSONMember(key: "total_parameters", value: .integer(totalParameters)))
        members.append(JSONMember(key: "total_bytes", value: .integer(totalBytes)))
        if isQuantized {
            members.append(JSONMember(key: "quantized_tensors", value: .integer(rows.filter { $0.quantization != nil }.count)))
            members.append(JSONMember(key: "bits_per_parameter", value: .double((bitsPerParameter * 1000).rounded() / 1000)))
            members.append(JSONMember(key: "source_bytes", value: .integer(sourceBytes)))
            members.append(
                JSONMember(
                    key: "size_vs_source", value: .double((Double(totalBytes) / Double(max(sourceBytes, 1)) * 10000).rounded() / 10000)))
        }
        return .object(members)
    }

    func table() -> String {
        var lines: [String] = []
        // Names and metadata come from the file: escaped, so none acts on the terminal.
        let text = TerminalText.escaped
        lines.append("\(text(path, false)): \(format)" + (files.isEmpty ? "" : ", \(files.count) shards"))
        if let metadata, !metadata.isEmpty {
            // A long value (an HDF5 layout, a model config) is cut: --json has it whole.
            lines.append(
                "metadata: "
                    + metadata.map { item in
                        "\(text(item.key, false))="
                            + text(item.value.count > 80 ? "\(item.value.prefix(60))… (\(item.value.count) characters)" : item.value, false)
                    }.joined(separator: ", "))
        }
        if let gguf {
            lines.append("GGUF version \(gguf.version), alignment \(gguf.alignment), \(gguf.metadata.count) metadata keys:")
            for entry in gguf.metadata.entries {
                lines.append("  \(text(entry.key, false)) (\(entry.value.type)) = \(text(Self.ggufText(entry.value), false))")
            }
        }
        var header = ["name", "dtype", "shape", "parameters", "bytes"]
        var cells = rows.map { [text($0.name, false), $0.dtype.rawValue, $0.shape.description, grouped($0.parameters), grouped($0.bytes)] }
        if isQuantized {
            header.append("stored as")
            for (index, row) in rows.enumerated() { cells[index].append(row.quantization ?? "as is") }
        }
        let widths = (0..<header.count).map { column in ([header] + cells).map { $0[column].count }.max()! }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { column, text in
                column == 3 || column == 4
                    ? text.leftPadded(to: widths[column]) : text + String(repeating: " ", count: widths[column] - text.count)
            }.joined(separator: "  ")
        }
        lines.append(line(header))
        lines.append(contentsOf: cells.map(line))
        lines.append(
            "\(rows.count) tensors, \(grouped(totalParameters)) parameters, \(grouped(totalBytes)) bytes"
                + " (\(ProgressBar.formatBytes(Double(totalBytes))))")
        if isQuantized {
            lines.append(
                String(
                    format: "%d quantized; %.3f bits per parameter; %.1f%% of the source's %@",
                    rows.filter { $0.quantization != nil }.count, bitsPerParameter,
                    Double(totalBytes) / Double(max(sourceBytes, 1)) * 100, ProgressBar.formatBytes(Double(sourceBytes))))
        }
        return lines.joined(separator: "\n")
    }

    private func grouped(_ value: Int) -> String {
        let digits = Array(String(value))
        var out = ""
        for (i, d) in digits.enumerated() {
            if i > 0 && (digits.count - i) % 3 == 0 { out.append(",") }
            out.append(d)
        }
        return out
    }
}
