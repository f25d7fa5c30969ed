import ServiceLifecycle
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Threads at a lower scheduling priority for the work of a process that does not answer
/// clients: the forwarder, the loader and the ledger's followers when they share a process
/// (and two cores) with the gateway.
///
/// A gateway acknowledges after the fsync, so its answer waits for the WAL's writer thread,
/// NIO's threads and a handler on the cooperative pool. On a saturated host, every runnable
/// thread of the forwarder, the loader or ClickHouse takes turns with them, and the ack's tail
/// grew to hundreds of milliseconds while the median stayed at 2 ms (docs/performance.md,
/// "The reference load's tail"). Jobs run here on threads with a higher nice value: the
/// kernel still gives them every cycle nobody else wants, so their throughput is unchanged on
/// an idle host, but under contention the answering threads go first. Raising one's own nice
/// value needs no privilege; lowering it does, so the threads are this executor's own and
/// never return to a shared pool.
///
/// Tasks started under ``withTaskExecutorPreference(_:isolation:operation:)`` with this
/// executor, their child tasks, and the default actors they call all run here.
package final class BackgroundExecutor: TaskExecutor, @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>
    /// Guarded by `mutex`. A ring would save the occasional compaction; jobs are few.
    private var jobs: [UnownedJob] = []
    private var head = 0
    /// The nice value each thread managed to set (the last one's), for the log and tests.
    private var appliedNiceness: Int32?
    /// Threads created, guarded by `mutex`.
    private var created = 0

    /// `threads` threads, each adding `niceness` (+10 is about a tenth of a default thread's
    /// share when both want the CPU) to its nice value.
    package init(threads: Int, niceness: Int32) {
        self.mutex = .allocate(capacity: 1)
        self.condition = .allocate(capacity: 1)
        pthread_mutex_init(self.mutex, nil)
        pthread_cond_init(self.condition, nil)
        for _ in 0..<max(1, threads) {
            let spawned = Self.spawn { [self] in
                let applied = addNiceness(niceness, toThread: 0)
                pthread_mutex_lock(self.mutex)
                self.appliedNiceness = applied
                pthread_mutex_unlock(self.mutex)
                self.work()
            }
            if spawned {
                pthread_mutex_lock(self.mutex)
                self.created += 1
                pthread_mutex_unlock(self.mutex)
            }
        }
    }

    /// Threads that could be created.
    package var threadCount: Int {
        pthread_mutex_lock(self.mutex)
        defer { pthread_mutex_unlock(self.mutex) }
        return self.created
    }

    package func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        pthread_mutex_lock(self.mutex)
        self.jobs.append(job)
        pthread_cond_signal(self.condition)
        pthread_mutex_unlock(self.mutex)
    }

    /// The nice value of this executor's threads once one has started, or nil when the
    /// kernel refused to change it (they then run at the process's priority).
    package var niceness: Int32? {
        pthread_mutex_lock(self.mutex)
        defer { pthread_mutex_unlock(self.mutex) }
        return self.appliedNiceness
    }

    private func work() -> Never {
        while true {
            pthread_mutex_lock(self.mutex)
            while self.head == self.jobs.count { pthread_cond_wait(self.condition, self.mutex) }
            let job = self.jobs[self.head]
            self.head += 1
            if self.head == self.jobs.count {
                self.jobs.removeAll(keepingCapacity: true)
                self.head = 0
            } else if self.head >= 1024, self.head * 2 >= self.jobs.count {
                self.jobs.removeFirst(self.head)
                self.head = 0
            }
            pthread_mutex_unlock(self.mutex)
            job.runSynchronously(on: self.asUnownedTaskExecutor())
        }
    }

    /// Names the calling thread (as `top -H` and `perf` show it).
    fileprivate static func name(_ name: String) {
        let fd = open("/proc/thread-self/comm", O_WRONLY)
        guard fd >= 0 else { return }
        _ = name.withCString { write(fd, $0, strlen($0)) }
        close(fd)
    }

    /// The cores online: the number of threads a process's executor should have.
    package static func cores() -> Int {
        let online = sysconf(Int32(_SC_NPROCESSORS_ONLN))
        return online > 0 ? online : 2
    }

    private static func spawn(_ body: @escaping @Sendable () -> Void) -> Bool {
        final class Box: @unchecked Sendable {
            let body: @Sendable () -> Void
            init(_ body: @escaping @Sendable () -> Void) { self.body = body }
        }
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        var thread = pthread_t()
        let created = pthread_create(
            &thread,
            nil,
            { argument in
                let box = Unmanaged<Box>.fromOpaque(argument!).takeRetainedValue()
                BackgroundExecutor.name("sluice-bg")
                box.body()
                return nil
            },
            box
        )
        guard created == 0 else {
            Unmanaged<Box>.fromOpaque(box).release()
            return false
        }
        pthread_detach(thread)
        return true
    }
}

/// Runs a service's work on a ``BackgroundExecutor``: the forwarder, the loader and the
/// ledger followers of a process that also answers clients.
package struct InBackground: Service {
    package let service: any Service
    private let executor: BackgroundExecutor

    package init(_ service: any Service, executor: BackgroundExecutor) {
        self.service = service
        self.executor = executor
    }

    package func run() async throws {
        try await withTaskExecutorPreference(self.executor) { try await self.service.run() }
    }
}

extension BackgroundExecutor {
    private static let instances = Mutex<[Int32: BackgroundExecutor]>([:])

    /// The process's executor at `niceness`, one thread per core, created on first use and
    /// kept for the process's life (its threads never end); nil when the system refused
    /// every thread, and the work then runs where it would have run anyway.
    package static func process(niceness: Int32) -> BackgroundExecutor? {
        Self.instances.withLock { instances in
            if let existing = instances[niceness] { return existing.threadCount > 0 ? existing : nil }
            let executor = BackgroundExecutor(threads: Self.cores(), niceness: niceness)
            instances[niceness] = executor
            return executor.threadCount > 0 ? executor : nil
        }
    }
}

/// Adds `niceness` to the nice value of thread `thread` (0: the calling thread) and returns
/// the new value, or nil if refused. On Linux the nice value belongs to a thread, not to
/// its process: `PRIO_PROCESS` with a thread id changes that thread alone.
package func addNiceness(_ niceness: Int32, toThread thread: id_t) -> Int32? {
    let which = __priority_which_t(PRIO_PROCESS.rawValue)
    errno = 0
    let current = getpriority(which, thread)
    guard errno == 0 else { return nil }
    let target = min(19, current + niceness)
    guard setpriority(which, thread, target) == 0 else { return nil }
    return target
}
