import Dispatch

/// Runs blocking work — `fsync`, a file read, librdkafka's flush, waiting for a child
/// process — on a Dispatch thread, so it never holds one of the cooperative pool's few
/// threads (two on the reference machine) while the kernel or a broker takes its time.
package func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        DispatchQueue.global().async { continuation.resume(with: Result { try body() }) }
    }
}

/// ``offPool(_:)`` for work that cannot fail.
package func offPool<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        DispatchQueue.global().async { continuation.resume(returning: body()) }
    }
}
