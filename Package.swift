// swift-tools-version: 6.0
import PackageDescription

// The kernels are written as SIMD8 loops; on x86-64 they are compiled for AVX2/FMA/F16C
// (Haswell, 2013, and every x86-64 server since), which doubles their width over baseline SSE2.
#if arch(x86_64)
    let kernelSettings: [SwiftSetting] = [.unsafeFlags(["-target-cpu", "haswell"])]
#else
    let kernelSettings: [SwiftSetting] = []
#endif

let package = Package(
    name: "qtool",
    // Builds on Linux only (Glibc, /proc, renameat2, flock, PR_SET_PDEATHSIG); no Apple platform
    // is claimed.
    products: [
        .executable(name: "qtool", targets: ["qtool"])
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2")
    ],
    targets: [
        // System libraries: one module map and one header each, found through pkg-config.
        .systemLibrary(
            name: "CZstd", pkgConfig: "libzstd",
            providers: [.apt(["libzstd-dev"])]),
        .systemLibrary(
            name: "CHDF5", pkgConfig: "hdf5-serial",
            providers: [.apt(["libhdf5-dev"])]),
        .systemLibrary(
            name: "COpenBLAS", pkgConfig: "openblas",
            providers: [.apt(["libopenblas-dev"])]),

        // Signal handlers and the few Linux calls Swift's Glibc module does not import.
        .target(name: "CProcess"),
        // cpuid/xgetbv, and the OpenBLAS kernel that fits the CPU, chosen before main.
        .target(name: "CBLASKernel", dependencies: ["COpenBLAS"]),
        // The 4-bit quantizer's AVX-512 block kernel, chosen at run time.
        .target(name: "CQuantKernel"),
        // The language model's element-wise kernels that need eˣ (vectorised by the C compiler).
        .target(name: "CModelKernels", cSettings: [.unsafeFlags(["-O2"])]),

        .target(name: "TensorCore", dependencies: ["COpenBLAS", "CBLASKernel", "CProcess"], swiftSettings: kernelSettings),
        .target(name: "SafetensorsFormat", dependencies: ["TensorCore"]),
        .target(name: "Quantization", dependencies: ["TensorCore", "CQuantKernel"], swiftSettings: kernelSettings),
        .target(name: "NF4Format", dependencies: ["TensorCore", "CZstd"]),
        .target(name: "HDF5Format", dependencies: ["TensorCore", "CHDF5"]),
        .target(name: "GGUFFormat", dependencies: ["TensorCore"], swiftSettings: kernelSettings),
        .target(name: "LoRAMerge", dependencies: ["TensorCore", "Quantization"], swiftSettings: kernelSettings),
        .target(name: "Tokenizer", dependencies: ["TensorCore"], swiftSettings: kernelSettings),
        .target(
            name: "LanguageModel", dependencies: ["TensorCore", "Quantization", "LoRAMerge", "CModelKernels"], swiftSettings: kernelSettings
        ),
        .target(name: "GGUFConversion", dependencies: ["GGUFFormat", "Tokenizer", "LanguageModel", "TensorCore"]),
        .target(
            name: "FineTune", dependencies: ["TensorCore", "SafetensorsFormat", "LanguageModel"], swiftSettings: kernelSettings),
        .target(
            name: "QToolCommands",
            dependencies: [
                "TensorCore", "SafetensorsFormat", "Quantization", "NF4Format", "LoRAMerge", "HDF5Format", "LanguageModel", "Tokenizer",
                "FineTune", "GGUFFormat", "GGUFConversion",
                "CProcess",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),
        .executableTarget(name: "qtool", dependencies: ["QToolCommands"]),

        .target(name: "TestSupport", dependencies: ["TensorCore"], path: "Tests/TestSupport"),
        // The readers as fuzz targets: run by `make fuzz` (libFuzzer) and by the regression test.
        .target(
            name: "FuzzTargets",
            dependencies: [
                "TensorCore", "SafetensorsFormat", "NF4Format", "Quantization", "LoRAMerge", "HDF5Format", "Tokenizer", "LanguageModel",
                "GGUFFormat",
            ],
            path: "Tests/FuzzTargets"),
        .testTarget(name: "FuzzRegressionTests", dependencies: ["FuzzTargets", "TestSupport", "qtool"]),
        .testTarget(name: "TensorCoreTests", dependencies: ["TensorCore", "SafetensorsFormat", "TestSupport"]),
        .testTarget(
            name: "QuantizationTests",
            dependencies: ["Quantization", "SafetensorsFormat", "TensorCore", "TestSupport"]),
        .testTarget(name: "LoRAMergeTests", dependencies: ["LoRAMerge", "Quantization", "SafetensorsFormat", "TensorCore", "TestSupport"]),
        .testTarget(name: "HDF5FormatTests", dependencies: ["HDF5Format", "SafetensorsFormat", "TensorCore", "TestSupport", "qtool"]),
        .testTarget(
            name: "LanguageModelTests",
            dependencies: ["LanguageModel", "LoRAMerge", "Quantization", "SafetensorsFormat", "TensorCore", "TestSupport"]),
        .testTarget(name: "NF4FormatTests", dependencies: ["NF4Format", "TensorCore", "TestSupport"]),
        .testTarget(name: "GGUFFormatTests", dependencies: ["GGUFFormat", "SafetensorsFormat", "TensorCore", "TestSupport"]),
        .testTarget(
            name: "FineTuneTests",
            dependencies: ["FineTune", "LanguageModel", "LoRAMerge", "Quantization", "SafetensorsFormat", "TensorCore", "TestSupport"]),
        .testTarget(name: "TokenizerTests", dependencies: ["Tokenizer", "TensorCore", "TestSupport"]),
        .testTarget(name: "CLibrariesTests", dependencies: ["CZstd", "CHDF5", "COpenBLAS"]),
        .testTarget(
            name: "SafetensorsFormatTests",
            dependencies: ["SafetensorsFormat", "TensorCore", "TestSupport"]),
        .testTarget(
            name: "QToolCommandsTests",
            dependencies: ["QToolCommands", "SafetensorsFormat", "GGUFFormat", "TensorCore", "TestSupport", "qtool"]),
        .testTarget(
            name: "GGUFConversionTests", dependencies: ["GGUFConversion", "GGUFFormat", "Tokenizer", "TensorCore", "TestSupport"]),
    ]
)

// `make fuzz` builds the libFuzzer executable: `QTOOL_FUZZ=1 swift build -Xswiftc -sanitize=fuzzer,address`.
// libFuzzer supplies `main`, so the target exists only in that build.
if Context.environment["QTOOL_FUZZ"] != nil {
    package.products.append(.executable(name: "qtool-fuzz", targets: ["QToolFuzz"]))
    package.targets.append(
        .executableTarget(
            name: "QToolFuzz", dependencies: ["FuzzTargets"], path: "Tests/Fuzz",
            swiftSettings: [.unsafeFlags(["-parse-as-library"])]))
}
