import Foundation

/// A progress bar with rate and ETA on standard error, drawn only when standard error is a
/// terminal and not silenced, and only once the work has taken more than half a second.
/// Progress may be reported from the thread that produces tensors and the one that writes them;
/// a lock keeps the count and the drawing consistent.
public final class ProgressBar: @unchecked Sendable {
    private let lock = NSLock()
    private let label: String
    private let total: Int
    private let enabled: Bool
    private let start = Date()
    private var lastDraw = Date.distantPast
    private var drawn = false
    private let unit: Unit
    private var done = 0

    /// `.steps` shows the caller's detail text (loss, rate) in place of a rate.
    public enum Unit { case bytes, items, tokens, steps }
    private var detail = ""

    public init(label: String, total: Int, unit: Unit = .bytes, quiet: Bool) {
        self.label = label
        self.total = max(total, 1)
        self.unit = unit
        enabled = !quiet && StandardError.isTerminal
    }

    /// Records `count` more units done and redraws when due.
    public func advance(by count: Int) {
        lock.lock()
        defer { lock.unlock() }
        done += count
        draw(done)
    }

    public func update(_ done: Int) {
        lock.lock()
        defer { lock.unlock() }
        self.done = done
        draw(done)
    }

    /// Records `done` units and the text shown beside the bar.
    public func update(_ done: Int, detail: String) {
        lock.lock()
        defer { lock.unlock() }
        self.done = done
        self.detail = detail
        draw(done)
    }

    private func draw(_ done: Int) {
        guard enabled else { return }
        let now = Date()
        let elapsed = now.timeIntervalSince(start)
        guard elapsed > 0.5, now.timeIntervalSince(lastDraw) > 0.1 || done >= total else { return }
        lastDraw = now
        drawn = true
        let fraction = min(1, Double(done) / Double(total))
        let width = 30
        let filled = Int(fraction * Double(width))
        let bar = String(repeating: "█", count: filled) + String(repeating: "░", count: width - filled)
        let rate = Double(done) / elapsed
        let eta = rate > 0 ? Double(total - done) / rate : 0
        let rateText =
            switch unit {
            case .bytes: ProgressBar.formatBytes(rate) + "/s"
            case .items: String(format: "%.1f/s", rate)
            case .tokens: String(format: "%.0f tokens/s", rate)
            case .steps: String(format: "%d/%d ", done, total) + detail
            }
        StandardError.write(
            String(format: "\r%@ %@ %3.0f%% %@ ETA %@ ", label, bar, fraction * 100, rateText, ProgressBar.formatDuration(eta)))
    }

    /// Clears the bar's line so that a line of text can be printed; the next update draws it again.
    public func clear() {
        lock.lock()
        defer { lock.unlock() }
        guard enabled, drawn else { return }
        StandardError.write("\r\u{1B}[2K")
        lastDraw = .distantPast
    }

    /// Clears the bar's line.
    public func finish() {
        guard enabled, drawn else { return }
        StandardError.write("\r\u{1B}[2K")
    }

    public static func formatBytes(_ value: Double) -> String {
        let units = ["B", "KB", "MB", "GB", "TB"]
        var v = value
        var i = 0
        while v >= 1000 && i < units.count - 1 {
            v /= 1000
            i += 1
        }
        return i == 0 ? String(format: "%.0f %@", v, units[i]) : String(format: "%.2f %@", v, units[i])
    }

    static func formatDuration(_ seconds: Double) -> String {
        let s = Int(seconds.rounded())
        return s >= 3600 ? String(format: "%d:%02d:%02d", s / 3600, s / 60 % 60, s % 60) : String(format: "%d:%02d", s / 60, s % 60)
    }
}
