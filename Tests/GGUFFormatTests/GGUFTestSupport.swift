import Foundation
import GGUFFormat
import SafetensorsFormat
import TensorCore
import TestSupport

/// The GGUF goldens of fixtures/gguf (written by gguf-py 0.17.1, fixtures/generate/gguf_goldens.py).
enum GGUFGoldens {
    static func path(_ name: String) -> String { Fixtures.path("gguf/" + name) }

    /// quant-goldens.safetensors: `<case>.input`, `<case>.<type>.quantized` / `.dequantized`.
    static let quant: NamedTensors = try! SafeTensorsFile(path: path("quant-goldens.safetensors")).tensors()
    /// dequant-goldens.safetensors: `<type>.blocks` / `.dequantized`, `<type>.randn.*`.
    static let dequant: NamedTensors = try! SafeTensorsFile(path: path("dequant-goldens.safetensors")).tensors()

    /// The input cases of quant-goldens.safetensors, in file order.
    static let quantCases: [String] = quant.names.filter { $0.hasSuffix(".input") }.map { String($0.dropLast(".input".count)) }

    /// metadata.json: what gguf-py's GGUFReader reads in each GGUF fixture.
    static let metadataJSON: JSONValue = try! JSONParser.parse(String(decoding: Fixtures.bytes(path("metadata.json")), as: UTF8.self))

    static func expected(_ file: String) -> JSONValue { metadataJSON["files"]![file]! }

    static func tensor(_ tensors: NamedTensors, _ name: String) -> Tensor {
        guard let tensor = tensors[name] else { fatalError("no tensor '\(name)' in the goldens") }
        return tensor
    }
}

extension GGMLType {
    /// The type gguf-py names `name` (`Q8_0`, `BF16`, …).
    init?(named name: String) {
        guard let type = GGMLType.allCases.first(where: { $0.description == name }) else { return nil }
        self = type
    }
}

/// Float32 values equal bit for bit, where any NaN equals any NaN (its sign and payload are the
/// CPU's, not the format's).
func sameFloat(_ a: Float, _ b: Float) -> Bool { a.bitPattern == b.bitPattern || (a.isNaN && b.isNaN) }

/// The first index where two float arrays differ (NaN-aware), described; nil when they agree.
func firstFloatDifference(_ got: [Float], _ want: [Float]) -> String? {
    guard got.count == want.count else { return "\(got.count) values, expected \(want.count)" }
    guard let i = got.indices.first(where: { !sameFloat(got[$0], want[$0]) }) else { return nil }
    let mismatches = got.indices.filter { !sameFloat(got[$0], want[$0]) }.count
    return "\(mismatches) values differ; first at \(i): \(got[i]) (0x\(String(got[i].bitPattern, radix: 16))), "
        + "expected \(want[i]) (0x\(String(want[i].bitPattern, radix: 16)))"
}

/// The first index where two byte arrays differ, described; nil when they agree.
func firstByteDifference(_ got: [UInt8], _ want: [UInt8]) -> String? {
    guard got.count == want.count else { return "\(got.count) bytes, expected \(want.count)" }
    guard let i = got.indices.first(where: { got[$0] != want[$0] }) else { return nil }
    let mismatches = got.indices.filter { got[$0] != want[$0] }.count
    return "\(mismatches) bytes differ; first at \(i): \(got[i]), expected \(want[i])"
}

/// GGMLBlocks.dequantize of whole blocks.
func dequantized(_ type: GGMLType, _ blocks: [UInt8]) -> [Float] {
    let count = blocks.count / type.typeSize * type.blockSize
    var out = [Float](repeating: .nan, count: count)
    blocks.withUnsafeBytes { source in
        out.withUnsafeMutableBufferPointer { GGMLBlocks.dequantize(type, source, into: $0) }
    }
    return out
}

/// GGMLBlocks.quantize of whole blocks.
func quantized(_ type: GGMLType, _ values: [Float]) -> [UInt8] {
    var out = [UInt8](repeating: 0xAA, count: values.count / type.blockSize * type.typeSize)
    values.withUnsafeBufferPointer { source in
        out.withUnsafeMutableBytes { GGMLBlocks.quantize(type, source, into: $0) }
    }
    return out
}

/// A tensor of any float type as float32 values.
func floats(_ tensor: Tensor) -> [Float] {
    if tensor.dtype == .f32 { return tensor.values(as: Float.self) }
    var out = [Float](repeating: .nan, count: tensor.elementCount)
    tensor.withBytes { bytes in
        out.withUnsafeMutableBufferPointer { destination in
            guard let base = bytes.baseAddress, let target = destination.baseAddress else { return }
            FloatConversion.decodeToFloat32(base, tensor.dtype, from: 0, count: tensor.elementCount, into: target)
        }
    }
    return out
}

/// The name of a GGUFError's case, for tables of expected failures.
func caseName(_ error: GGUFError) -> String {
    switch error {
    case .notGGUF: "notGGUF"
    case .unsupportedVersion: "unsupportedVersion"
    case .truncated: "truncated"
    case .invalidHeader: "invalidHeader"
    case .invalidMetadata: "invalidMetadata"
    case .invalidTensor: "invalidTensor"
    case .unsupportedType: "unsupportedType"
    case .cannotWrite: "cannotWrite"
    }
}

/// Little-endian bytes.
func le<T: FixedWidthInteger>(_ value: T) -> [UInt8] { withUnsafeBytes(of: value.littleEndian) { Array($0) } }

/// A GGUF string: u64 length, then the bytes.
func ggufString(_ text: String) -> [UInt8] { ggufString(Array(text.utf8)) }
func ggufString(_ bytes: [UInt8]) -> [UInt8] { le(UInt64(bytes.count)) + bytes }

/// Where each field of a GGUF file starts: found by walking the file the way the spec lays it out
/// (a test-side walk, independent of the reader), so that tests can change one field.
struct GGUFLayout {
    struct Entry {
        /// Offset of the key's u64 length.
        var key: Int
        /// Offset of the u32 value type.
        var type: Int
        /// Offset of the value (for an array: its element type).
        var value: Int
    }

    struct TensorFields {
        var name: Int
        var rank: Int
        var dimensions: [Int]
        var type: Int
        var offset: Int
    }

    var tensorCount = 8
    var keyCount = 16
    var entries: [String: Entry] = [:]
    var tensors: [String: TensorFields] = [:]
    var tensorOrder: [String] = []
    var headerEnd = 0

    init(_ bytes: [UInt8]) {
        var offset = 24
        func u32() -> Int {
            defer { offset += 4 }
            return Int(bytes[offset..<(offset + 4)].reversed().reduce(UInt32(0)) { $0 << 8 | UInt32($1) })
        }
        func u64() -> Int {
            defer { offset += 8 }
            return Int(bytes[offset..<(offset + 8)].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
        }
        func string() -> String {
            let length = u64()
            defer { offset += length }
            return String(decoding: bytes[offset..<(offset + length)], as: UTF8.self)
        }
        func skipValue(_ type: Int) {
            switch type {
            case 0, 1, 7: offset += 1
            case 2, 3: offset += 2
            case 4, 5, 6: offset += 4
            case 10, 11, 12: offset += 8
            case 8: _ = string()
            case 9:
                let element = u32()
                let count = u64()
                for _ in 0..<count { skipValue(element) }
            default: fatalError("unknown value type \(type) in a fixture")
            }
        }
        offset = 8
        let tensorTotal = u64()
        let keyTotal = u64()
        for _ in 0..<keyTotal {
            let keyOffset = offset
            let key = string()
            let typeOffset = offset
            let type = u32()
            entries[key] = Entry(key: keyOffset, type: typeOffset, value: offset)
            skipValue(type)
        }
        for _ in 0..<tensorTotal {
            let nameOffset = offset
            let name = string()
            let rankOffset = offset
            let rank = u32()
            let dimensions = (0..<rank).map { 8 * $0 + offset }
            offset += 8 * rank
            let typeOffset = offset
            offset += 4
            tensors[name] = TensorFields(name: nameOffset, rank: rankOffset, dimensions: dimensions, type: typeOffset, offset: offset)
            tensorOrder.append(name)
            offset += 8
        }
        headerEnd = offset
    }
}

extension Array where Element == UInt8 {
    /// Overwrites the bytes at `offset` with `value`, little-endian.
    mutating func put<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        replaceSubrange(offset..<(offset + MemoryLayout<T>.size), with: le(value))
    }
}

/// A GGUF file built by hand: each part given as bytes, so that any of them can be wrong.
struct GGUFBuilder {
    var magic: [UInt8] = Array("GGUF".utf8)
    var version: [UInt8] = le(UInt32(3))
    /// Raw key/value entries: the key string, type and value bytes.
    var entries: [[UInt8]] = []
    var tensorInfos: [[UInt8]] = []
    var alignment = 32
    var data: [UInt8] = []
    var tensorCount: UInt64? = nil
    var keyCount: UInt64? = nil

    mutating func add(key: String, type: GGUFValueType, _ value: [UInt8]) {
        entries.append(ggufString(key) + le(type.rawValue) + value)
    }

    mutating func addTensor(_ name: String, dimensions: [UInt64], type: UInt32, offset: UInt64) {
        tensorInfos.append(
            ggufString(name) + le(UInt32(dimensions.count)) + dimensions.flatMap { le($0) } + le(type) + le(offset))
    }

    var bytes: [UInt8] {
        var out = magic + version
        out += le(tensorCount ?? UInt64(tensorInfos.count))
        out += le(keyCount ?? UInt64(entries.count))
        for entry in entries { out += entry }
        for info in tensorInfos { out += info }
        out += [UInt8](repeating: 0, count: (alignment - out.count % alignment) % alignment)
        return out + data
    }
}

/// Writes bytes to a new temporary file and returns its path.
func temporaryFile(_ bytes: [UInt8], name: String = "input.gguf") -> String {
    let path = Fixtures.temporaryFolder() + "/" + name
    try! Data(bytes).write(to: URL(fileURLWithPath: path))
    return path
}

/// What opening `bytes` as a GGUF file gives: the file, or the GGUFError (any other error is
/// returned as a description, which every test treats as a failure).
enum OpenResult {
    case opened(GGUFFile)
    case refused(GGUFError, path: String)
    case otherError(String)
}

func openGGUF(_ bytes: [UInt8]) -> OpenResult {
    let path = temporaryFile(bytes)
    defer { try? FileManager.default.removeItem(atPath: FilePaths.directory(of: path)) }
    do {
        return .opened(try GGUFFile(path: path))
    } catch let error as GGUFError {
        return .refused(error, path: path)
    } catch {
        return .otherError("\(type(of: error)): \(error)")
    }
}
