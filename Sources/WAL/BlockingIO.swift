import Dispatch

/// Runs blocking work (file reads, fsync of cursor files) on threads outside Swift's
/// cooperative pool.
enum BlockingIO {
    private static let queue = DispatchQueue(label: "sluice.wal.blocking-io", attributes: .concurrent)

    static func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            self.queue.async { continuation.resume(with: Result { try body() }) }
        }
    }

    static func run<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { continuation in
            self.queue.async { continuation.resume(returning: body()) }
        }
    }
}
