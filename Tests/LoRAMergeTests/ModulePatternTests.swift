import Foundation
import Testing
import TestSupport

@testable import LoRAMerge
@testable import TensorCore

/// rank_pattern / alpha_pattern keys against module names, held to PEFT's own `get_pattern_key`
/// (fixtures/lora/pattern-matches.json, made by fixtures/generate/pattern_goldens.py).
struct ModulePatternTests {
    struct Case: Sendable {
        let key: String
        let module: String
        let matches: Bool
    }

    static let cases: [Case] = {
        let json = try! JSONParser.parse(String(decoding: Fixtures.bytes(Fixtures.path("lora/pattern-matches.json")), as: UTF8.self))
        return json.arrayValues!.map {
            Case(key: $0["key"]!.stringValue!, module: $0["module"]!.stringValue!, matches: $0["matches"]!.boolValue!)
        }
    }()

    @Test func everyPairMatchesAsPEFTDoes() throws {
        #expect(Self.cases.count > 1000)
        var compiled: [String: ModulePattern] = [:]
        for testCase in Self.cases {
            let pattern = try compiled[testCase.key] ?? ModulePattern(peftKey: testCase.key)
            compiled[testCase.key] = pattern
            #expect(pattern.matches(testCase.module) == testCase.matches, "key \(testCase.key) on \(testCase.module)")
        }
    }

    /// Keys on which a backtracking engine takes exponential time finish at once on long names.
    @Test(arguments: ["(.*)*X", "(a*)*b", "((a|b)+)+c", "(x+x+)+y", "(.*.*)*\\.Z"])
    func nestedRepetitionsRunInLinearTime(_ key: String) throws {
        let pattern = try ModulePattern(peftKey: key)
        let long = String(repeating: "a", count: 5000) + "." + String(repeating: "x", count: 5000)
        #expect(!pattern.matches(long))
        #expect(try ModulePattern(peftKey: "(.*)*").matches(long))
    }

    @Test(arguments: [
        ("(a)\\1", "backreferences"), ("(?=a)b", "lookahead"), ("(?<=a)b", "lookbehind"), ("(?P=x)", "named backreferences"),
        ("(?i)q_proj", "inline flags"), ("a{1,2}+", "possessive"), ("(?>a)", "atomic"), ("(a", "missing ')'"), ("a)", "unbalanced"),
        ("[a", "unterminated"), ("*a", "nothing to repeat"), ("a{3,2}", "min repeat"), ("(a{1000}){1000}", "more than"),
        ("\\q", "bad escape"),
    ])
    func unsupportedSyntaxIsRefusedWithAReason(_ key: String, _ reason: String) {
        #expect {
            _ = try ModulePattern(peftKey: key)
        } throws: { error in
            (error as? ModulePattern.SyntaxError)?.message.contains(reason) == true
        }
    }
}
