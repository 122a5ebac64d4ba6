import CHDF5
import COpenBLAS
import CZstd
import Testing

/// The system libraries `make setup` installs are found, link, and answer.
@Test func zstdRoundTripsBytes() {
    let input: [UInt8] = Array(repeating: 7, count: 4096) + Array(0..<255)
    var compressed = [UInt8](repeating: 0, count: ZSTD_compressBound(input.count))
    let size = ZSTD_compress(&compressed, compressed.count, input, input.count, 3)
    #expect(ZSTD_isError(size) == 0)
    var output = [UInt8](repeating: 0, count: input.count)
    let restored = ZSTD_decompress(&output, output.count, compressed, size)
    #expect(restored == input.count)
    #expect(output == input)
}

@Test func hdf5ReportsItsVersion() {
    var major: UInt32 = 0, minor: UInt32 = 0, release: UInt32 = 0
    #expect(H5get_libversion(&major, &minor, &release) >= 0)
    #expect(major == 1 && minor >= 10)
    #expect(qtool_H5P_DEFAULT() == 0)
}

@Test func openBLASMultipliesMatrices() {
    let a: [Float] = [1, 2, 3, 4]  // [2, 2]
    let b: [Float] = [5, 6, 7, 8]
    var c = [Float](repeating: 0, count: 4)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 2, 2, 2, 1, a, 2, b, 2, 0, &c, 2)
    #expect(c == [19, 22, 43, 50])
}
