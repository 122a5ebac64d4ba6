import Foundation
import Testing
import TestSupport

/// `qtool info`: the report a bug needs, and the kernel choice it shows.
struct InfoCommandTests {
    @Test func jsonNamesEveryPartAndAKernelForTheCPU() throws {
        let result = try QToolBinary.run(["info", "--json"], removing: ["OPENBLAS_CORETYPE"])
        #expect(result.status == 0, "\(result.stderr)")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
        #expect(report["version"] as? String == "0.1.0")
        let cpu = try #require(report["cpu"] as? [String: Any])
        let features = try #require(cpu["features"] as? [String])
        #expect(!(cpu["model"] as? String ?? "").isEmpty)
        let blas = try #require(report["blas"] as? [String: Any])
        #expect(blas["library"] as? String == "OpenBLAS")
        #expect((blas["version"] as? String ?? "").first?.isNumber == true)
        #expect((blas["threads"] as? Int ?? 0) >= 1)
        #expect(blas["sgemm_gflops"] == nil, "measured only with --bench")
        let kernel = (blas["kernel"] as? String ?? "").lowercased()
        if features.contains("avx512f") && features.contains("avx512bw") && features.contains("avx512vl") {
            #expect(["skylakex", "cooperlake", "sapphirerapids"].contains(kernel), "kernel \(kernel) on an AVX-512 CPU")
        } else if features.contains("avx2") && features.contains("fma") {
            #expect(["haswell", "zen"].contains(kernel), "kernel \(kernel) on an AVX2 CPU")
        }
        #expect((report["zstd"] as? String ?? "").first?.isNumber == true)
        #expect((report["hdf5"] as? String ?? "").first?.isNumber == true)
    }

    @Test func theUsersCoreTypeWins() throws {
        let result = try QToolBinary.run(["info", "--json"], environment: ["OPENBLAS_CORETYPE": "Prescott"])
        #expect(result.status == 0, "\(result.stderr)")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
        let blas = try #require(report["blas"] as? [String: Any])
        #expect(blas["kernel"] as? String == "Prescott")
        #expect(blas["kernel_chosen_by"] as? String == "OPENBLAS_CORETYPE")
    }

    @Test func benchReportsBothFigures() throws {
        let result = try QToolBinary.run(["info", "--bench", "--json", "--threads", "2"])
        #expect(result.status == 0, "\(result.stderr)")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
        let blas = try #require(report["blas"] as? [String: Any])
        let gflops = try #require(blas["sgemm_gflops"] as? [String: Any])
        #expect((gflops["1"] as? Double ?? 0) > 0)
        #expect((gflops["all"] as? Double ?? 0) > 0)
        #expect(blas["threads"] as? Int == 2)
    }
}
