import Dispatch

/// Runs `body` over `0..<count` split into fixed chunks of `chunk` items, in parallel.
///
/// The split depends only on `count` and `chunk`, never on the number of threads, so a kernel
/// whose chunks are independent gives the same result however many cores run it.
public func parallelForChunks(
    count: Int, chunk: Int, threads: Int,
    _ body: @Sendable (Range<Int>) -> Void
) {
    guard count > 0 else { return }
    let chunkSize = max(chunk, 1)
    let chunks = (count + chunkSize - 1) / chunkSize
    @Sendable func range(_ index: Int) -> Range<Int> { (index * chunkSize)..<min(count, (index + 1) * chunkSize) }
    if chunks == 1 || threads <= 1 {
        for index in 0..<chunks { body(range(index)) }
        return
    }
    // Each worker takes every `workers`-th chunk: no shared counter, and the chunks are the same.
    let workers = min(threads, chunks)
    DispatchQueue.concurrentPerform(iterations: workers) { worker in
        var index = worker
        while index < chunks {
            body(range(index))
            index += workers
        }
    }
}

/// The process's default thread count for kernels: set once by the command line before any work
/// starts, and read only where a stage is built. Kernels take their count as a parameter.
public enum ParallelismSettings {
    nonisolated(unsafe) public static var threadCount: Int = defaultThreadCount

    public static var defaultThreadCount: Int {
        #if canImport(Glibc) || canImport(Darwin)
            return max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
        #else
            return 1
        #endif
    }
}

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A raw pointer that may cross into the closures of `parallelForChunks`; each chunk touches only
/// its own elements.
public struct SendableRawPointer: @unchecked Sendable {
    public let raw: UnsafeRawPointer
    public init(_ raw: UnsafeRawPointer) { self.raw = raw }
}

/// A mutable raw pointer for the same purpose.
public struct SendableMutableRawPointer: @unchecked Sendable {
    public let raw: UnsafeMutableRawPointer
    public init(_ raw: UnsafeMutableRawPointer) { self.raw = raw }
}
