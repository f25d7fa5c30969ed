import Kafka
import Synchronization
import TestSupport
import Testing

@Suite(.timeLimit(.minutes(2))) struct MockClusterTests {
    /// A child being spawned holds a copy of the brokers' listening sockets until it execs; a
    /// broker taken down in that moment could not bind its port again, and librdkafka aborts
    /// the whole process when it cannot (it did in CI, with every suite spawning at once).
    /// Taking brokers down and up while children are spawned side by side must never do that.
    @Test func brokersGoDownAndUpWhileChildrenAreSpawned() async throws {
        let cluster = try KafkaMockCluster(brokers: 3)
        // Its brokers go down and up: keep their ports from other tests' connections meanwhile.
        let reserved = ReservedPorts(bootstrapServers: cluster.bootstrapServers)
        defer { withExtendedLifetime(reserved) {} }
        let spawners = Spawners()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<2 {
                group.addTask {
                    while !spawners.stop.load(ordering: .relaxed) {
                        let child = try await ChildProcess.run("/bin/true", [])
                        #expect(child.status == 0)
                        spawners.spawned.add(1, ordering: .relaxed)
                    }
                }
            }
            // Wait for the spawners to be under way, then cycle the brokers among them.
            try await waitUntil { spawners.spawned.load(ordering: .relaxed) > 20 }
            for cycle in 0..<60 {
                let broker = Int32(cycle % 3 + 1)
                cluster.setBrokerDown(broker)
                cluster.setBrokerUp(broker)
            }
            spawners.stop.store(true, ordering: .relaxed)
            try await group.waitForAll()
        }
        #expect(spawners.spawned.load(ordering: .relaxed) > 20)
    }
}

private final class Spawners: Sendable {
    let stop = Atomic<Bool>(false)
    let spawned = Atomic<Int>(0)
}
