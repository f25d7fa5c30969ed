#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Keeps a listening socket from being closed and bound again while a child process is being
/// spawned.
///
/// A spawned child holds a copy of every descriptor of this process until it calls `exec`,
/// close-on-exec ones included. A listening socket closed here in that moment stays open, and
/// listening, in the child, so binding its port again fails with `EADDRINUSE`. librdkafka's
/// mock cluster does exactly that when a broker is taken down (it keeps the port by binding
/// a new socket at once), and it aborts the process when the bind fails: with a test run
/// spawning hundreds of processes at once, it did, twice in a row in CI.
///
/// Spawning takes the gate shared (spawns still run side by side); closing and binding again
/// takes it exclusive. `posix_spawn` and `Process.run()` return after the child's `exec`, so
/// the shared hold covers the whole window.
package enum SpawnGate {
    /// Allocated once and never freed; pthread rwlocks may be used from any thread.
    nonisolated(unsafe) private static let lock: UnsafeMutablePointer<pthread_rwlock_t> = {
        let lock = UnsafeMutablePointer<pthread_rwlock_t>.allocate(capacity: 1)
        var attributes = pthread_rwlockattr_t()
        pthread_rwlockattr_init(&attributes)
        // A waiting rebind goes before new spawns: glibc's default lets a steady stream of
        // spawns starve it.
        pthread_rwlockattr_setkind_np(&attributes, Int32(PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP))
        pthread_rwlock_init(lock, &attributes)
        pthread_rwlockattr_destroy(&attributes)
        return lock
    }()

    /// Runs `body`, which spawns a child process.
    package static func spawning<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        pthread_rwlock_rdlock(Self.lock)
        defer { pthread_rwlock_unlock(Self.lock) }
        return try body()
    }

    /// Runs `body`, which closes a listening socket and binds its port again, while no child
    /// is being spawned.
    package static func rebinding<T>(_ body: () -> T) -> T {
        pthread_rwlock_wrlock(Self.lock)
        defer { pthread_rwlock_unlock(Self.lock) }
        return body()
    }
}
