import Foundation
import Logging
import ServiceLifecycle
import SluiceCore
import Synchronization
import Testing

/// The lower-priority threads the forwarder and the loader run on in a gateway's process.
@Suite struct BackgroundExecutorTests {
    /// The calling thread's nice value (per thread on Linux).
    static func niceness() -> Int32 {
        getpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0)
    }

    /// Where it was called, as a default actor.
    actor Tally {
        var nicenesses: Set<Int32> = []
        func record() {
            self.nicenesses.insert(BackgroundExecutorTests.niceness())
        }
    }

    @Test func aTaskItsChildrenAndTheActorsItCallsRunOnTheLowerPriorityThreads() async throws {
        let base = Self.niceness()
        let executor = BackgroundExecutor(threads: 2, niceness: 7)
        let tally = Tally()
        let (own, children) = await withTaskExecutorPreference(executor) {
            let own = Self.niceness()
            await tally.record()
            let children = await withTaskGroup(of: Int32.self) { group in
                for _ in 0..<8 { group.addTask { Self.niceness() } }
                return await group.reduce(into: Set<Int32>()) { $0.insert($1) }
            }
            return (own, children)
        }
        #expect(executor.threadCount == 2)
        #expect(executor.niceness == min(19, base + 7))
        #expect(own == min(19, base + 7))
        #expect(children == [min(19, base + 7)])
        #expect(await tally.nicenesses == [min(19, base + 7)])
        // The test's own threads keep their priority: the executor's threads are its own.
        #expect(Self.niceness() == base)
    }

    @Test func manyJobsAllRun() async {
        let executor = BackgroundExecutor(threads: 2, niceness: 1)
        let sum = await withTaskExecutorPreference(executor) {
            await withTaskGroup(of: Int.self) { group in
                for value in 1...5000 {
                    group.addTask {
                        await Task.yield()
                        return value
                    }
                }
                return await group.reduce(0, +)
            }
        }
        #expect(sum == 5000 * 5001 / 2)
    }

    /// A service wrapped in ``InBackground`` runs there, and a graceful shutdown still reaches it.
    @Test func aWrappedServiceRunsThereAndStopsGracefully() async throws {
        final class Probe: Service, Sendable {
            let seen = Mutex<Int32?>(nil)
            func run() async throws {
                self.seen.withLock { $0 = BackgroundExecutorTests.niceness() }
                try? await gracefulShutdown()
            }
        }
        let base = Self.niceness()
        let executor = try #require(BackgroundExecutor.process(niceness: 5))
        #expect(BackgroundExecutor.process(niceness: 5) === executor)
        let probe = Probe()
        let group = ServiceGroup(
            configuration: .init(services: [InBackground(probe, executor: executor)], logger: .init(label: "test"))
        )
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            while probe.seen.withLock({ $0 }) == nil { await Task.yield() }
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
        #expect(probe.seen.withLock { $0 } == min(19, base + 5))
    }
}
