import FuzzTargets
import Foundation

/// `qtool-fuzz`, built with `-sanitize=fuzzer,address` by `make fuzz`: libFuzzer over the reader
/// that `FUZZ_TARGET` names (json, safetensors, nf4, bnb, adapter, hdf5, tokenizer, model, gguf).
nonisolated(unsafe) var target = FuzzTarget.json

@_cdecl("LLVMFuzzerInitialize")
public func fuzzerInitialize(_ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutableRawPointer) -> Int32 {
    let name = ProcessInfo.processInfo.environment["FUZZ_TARGET"] ?? "json"
    guard let chosen = FuzzTarget(rawValue: name) else {
        FileHandle.standardError.write(Data("qtool-fuzz: FUZZ_TARGET must be one of \(FuzzTarget.allCases.map(\.rawValue))\n".utf8))
        exit(64)
    }
    target = chosen
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    target.run(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}

@_silgen_name("LLVMFuzzerRunDriver")
func runDriver(
    _ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32
) -> Int32

/// SwiftPM links an executable's entry point under this name (as `main`).
@_cdecl("QToolFuzz_main")
public func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    var count = argc
    var arguments = argv
    return runDriver(&count, &arguments, fuzzerTestOneInput)
}
