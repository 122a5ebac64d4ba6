import CProcess

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Paths that must not outlive an interrupted run: a signal handler (installed by the qtool
/// binary) removes every registered temporary on SIGINT, SIGTERM and SIGHUP, and when a mapped
/// input is truncated under qtool (SIGBUS), before the process ends.
public enum ProcessCleanup {
    public enum Kind {
        case file
        /// A staging folder: its files are removed, then the folder.
        case folder
    }

    /// A registration, released with `release()` once the path is committed or removed.
    public struct Registration: Sendable {
        let slot: Int32
        public func release() { qtool_temporary_unregister(slot) }
    }

    public static func register(_ path: String, kind: Kind) -> Registration {
        Registration(slot: qtool_temporary_register(path, kind == .file ? Int32(QTOOL_TEMPORARY_FILE) : Int32(QTOOL_TEMPORARY_FOLDER)))
    }

    /// Installs the handlers; the qtool binary calls this first thing.
    public static func installSignalHandlers() {
        qtool_install_signal_handlers()
        // Past a file-size limit, writes should fail with EFBIG (reported, temporaries removed)
        // rather than kill the process.
        signal(SIGXFSZ, SIG_IGN)
    }

    /// From now on the first SIGINT or SIGTERM is only recorded (see `stopRequested`), so that a
    /// long job can end its step and save; a second one ends the process as before.
    public static func deferTermination() { qtool_defer_termination(1) }

    /// The signal recorded while deferring, or nil.
    public static var stopRequested: Int32? {
        let signal = qtool_termination_requested()
        return signal == 0 ? nil : signal
    }

    /// Registers a mapped input: a SIGBUS inside it becomes `error: <path>: …` and exit 2.
    static func registerMapping(_ base: UnsafeRawPointer, length: Int, path: String) -> Int32 {
        let message = "error: \(TerminalText.escaped(path)): the file was truncated or changed while qtool was reading it\n"
        return qtool_mapping_register(base, length, message)
    }

    static func unregisterMapping(_ slot: Int32) { qtool_mapping_unregister(slot) }
}

/// Text from files (tensor names, paths, JSON strings) made safe to print on a terminal: control
/// characters, C1 controls, DEL, line separators and bidirectional overrides are shown as escapes
/// (`\x1b`, `\u{202e}`) instead of acting on the terminal.
public enum TerminalText {
    /// `keepingNewlines` leaves line feeds as they are (for multi-line messages qtool wrote).
    public static func escaped(_ text: String, keepingNewlines: Bool = false) -> String {
        func escape(_ scalar: Unicode.Scalar) -> Bool { needsEscape(scalar) && !(keepingNewlines && scalar == "\n") }
        guard text.unicodeScalars.contains(where: escape) else { return text }
        var out = ""
        for scalar in text.unicodeScalars {
            if escape(scalar) {
                let hex = String(scalar.value, radix: 16)
                out += scalar.value < 0x100 ? "\\x" + hex.leftPadded(to: 2, with: "0") : "\\u{\(hex)}"
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    public static func needsEscape(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0x00...0x1F, 0x7F...0x9F: true
        case 0x2028, 0x2029, 0x200E, 0x200F, 0x202A...0x202E, 0x2066...0x2069, 0x061C: true
        default: false
        }
    }
}
