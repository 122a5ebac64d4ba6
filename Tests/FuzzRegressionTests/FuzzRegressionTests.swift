import Foundation
import FuzzTargets
import Testing
import TestSupport

/// Every committed fuzz input (fixtures/fuzz/<target>/: the seeds, and `crash-*` inputs that
/// once crashed a reader) through its fuzz target: none may crash, hang or blow up.
struct FuzzRegressionTests {
    static func inputs(_ target: FuzzTarget) -> [String] {
        let folder = Fixtures.path("fuzz/" + target.rawValue)
        return Fixtures.listing(folder).map { folder + "/" + $0 }
    }

    @Test(arguments: FuzzTarget.allCases)
    func everyCommittedInputRunsCleanly(_ target: FuzzTarget) throws {
        // The HDF5 target starts the helper from the qtool binary built beside the tests.
        setenv("QTOOL_BINARY", QToolBinary.path, 1)
        let inputs = Self.inputs(target)
        #expect(!inputs.isEmpty, "no corpus for \(target.rawValue)")
        for path in inputs {
            let bytes = Fixtures.bytes(path)
            bytes.withUnsafeBytes { target.run($0) }
        }
    }
}
