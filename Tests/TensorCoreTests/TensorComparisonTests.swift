import Foundation
import Testing

@testable import TensorCore

/// The comparison measures, on cases whose answers follow from their definitions.
struct TensorComparisonTests {
    @Test func identicalTensorsCompareExactly() {
        var comparison = TensorComparison()
        let values: [Float] = [1, -2, 0.5, 0, -0.0, 3e-38]
        comparison.add(reference: values, candidate: values)
        #expect(comparison.count == values.count)
        #expect(comparison.rmse == 0 && comparison.maxAbsError == 0 && comparison.maxULPs == 0)
        #expect(comparison.cosine == 1 && comparison.sqnr == .infinity)
    }

    @Test func measuresFollowTheirDefinitions() {
        var comparison = TensorComparison()
        // Split over two chunks: the result is the one of a single pass.
        comparison.add(reference: [3, 0], candidate: [3, 4])
        comparison.add(reference: [0, 4], candidate: [0, 4])
        #expect(comparison.count == 4)
        #expect(comparison.rmse == 2)  // √(16 / 4)
        #expect(comparison.maxAbsError == 4)
        #expect(comparison.relativeRMSE == 0.8)  // √(16 / 25)
        #expect(abs(comparison.cosine - 25 / (5 * 41.0.squareRoot())) < 1e-15)
        #expect(abs(comparison.sqnr - 10 * log10(25.0 / 16)) < 1e-12)
    }

    @Test func ulpDistanceCountsRepresentableSteps() {
        #expect(TensorComparison.ulpDistance(1, Float(1).nextUp) == 1)
        #expect(TensorComparison.ulpDistance(Float(1).nextDown, Float(1).nextUp) == 2)
        #expect(TensorComparison.ulpDistance(0, -0.0) == 0)
        #expect(TensorComparison.ulpDistance(Float.leastNonzeroMagnitude, -Float.leastNonzeroMagnitude) == 2)
        #expect(TensorComparison.ulpDistance(.nan, 1) == .max)
        #expect(TensorComparison.ulpDistance(.infinity, .greatestFiniteMagnitude) == 1)
    }
}
