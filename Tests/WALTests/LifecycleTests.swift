import Logging
import ServiceLifecycle
import Synchronization
import Testing

@_spi(Testing) @testable import WAL

/// The WAL's lifecycle as a `Service`: opening recovers and starts nothing, ``WAL/run()``
/// starts the writer, and the service group's shutdown closes it.
@Suite(.timeLimit(.minutes(1))) struct LifecycleTests {
    @Test func openingStartsNothingAndRunStartsTheWriter() async throws {
        let directory = try TemporaryDirectory()
        let wal = try await WAL.open(testConfiguration(directory.path), logger: quietLogger)
        let startedAtOpen = wal.started.load(ordering: .acquiring)
        #expect(!startedAtOpen)
        let acknowledged = Atomic<Bool>(false)
        let receipt = Mutex<AppendReceipt?>(nil)
        wal.append([event("queued before run")]) { result in
            receipt.withLock { $0 = try? result.get() }
            acknowledged.store(true, ordering: .releasing)
        }
        // No writer yet: the append waits in the queue, nothing reaches the disk. (A writer
        // started by `open` would have written and acknowledged it within a millisecond.)
        try await Task.sleep(for: .milliseconds(200))
        let acknowledgedBeforeRun = acknowledged.load(ordering: .acquiring)
        #expect(!acknowledgedBeforeRun)
        #expect(wal.statistics.batches == 0)

        let group = ServiceGroup(
            configuration: .init(services: [wal], gracefulShutdownSignals: [], logger: quietLogger)
        )
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            // The queued append is written once the service runs; a new one goes through too.
            let next = try await wal.append([event("after run")])
            #expect(next.firstLSN == LSN(1))
            let acknowledgedAfterRun = acknowledged.load(ordering: .acquiring)
            #expect(acknowledgedAfterRun)
            #expect(receipt.withLock { $0 } == AppendReceipt(firstLSN: LSN(0), eventCount: 1))
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
        // Shutdown closed it: the lock is free and appends are refused.
        await #expect(throws: WALError.self) { try await wal.append([event("after shutdown")]) }
        let reopened = try await WAL.openAndStart(testConfiguration(directory.path), logger: quietLogger)
        #expect(reopened.durableNextLSN == LSN(2))
        await reopened.close()
    }

    @Test func aWALClosedWithoutRunningWritesWhatWasQueued() async throws {
        let directory = try TemporaryDirectory()
        let wal = try await WAL.open(testConfiguration(directory.path), logger: quietLogger)
        let done = Mutex<Result<AppendReceipt, WALError>?>(nil)
        wal.append([event("queued")]) { result in done.withLock { $0 = result } }
        await wal.close()
        let outcome = try #require(done.withLock { $0 })
        #expect(try outcome.get() == AppendReceipt(firstLSN: LSN(0), eventCount: 1))
        #expect(try allEvents(in: directory.path) == [LSN(0): event("queued")])
    }

    @Test func aWALOpenedAndDroppedUnstartedReleasesItsLock() async throws {
        let directory = try TemporaryDirectory()
        do {
            // A tool that only reads: opened, never run, never closed. Dropping it must not
            // trap (Dispatch refuses to release timer sources that were never activated).
            let wal = try await WAL.open(testConfiguration(directory.path), logger: quietLogger)
            #expect(wal.durableNextLSN == LSN(0))
        }
        let second = try await WAL.openAndStart(testConfiguration(directory.path), logger: quietLogger)
        #expect(second.durableNextLSN == LSN(0))
        await second.close()
    }
}
