import Kafka
import TestSupport
import Testing

@Suite(.serialized, .timeLimit(.minutes(2))) struct KafkaConsumerTests {
    static func fill(_ cluster: KafkaMockCluster, topic: String, count: Int) async throws {
        let reports = Reports()
        let producer = try KafkaProducer(
            properties: ["bootstrap.servers": cluster.bootstrapServers, "log_level": "3"],
            onDelivery: { reports.add($0) }
        )
        for id in 0..<UInt64(count) {
            try producer.send(
                topic: topic,
                key: Array("k\(id % 5)".utf8),
                value: Array("m\(id)".utf8),
                headers: [("n", Array("\(id)".utf8))],
                id: id
            )
        }
        try await waitUntil { reports.count == count }
        producer.close()
    }

    static func consumer(_ cluster: KafkaMockCluster, group: String, topics: [String]) throws -> KafkaConsumer {
        try KafkaConsumer(
            properties: [
                "bootstrap.servers": cluster.bootstrapServers, "group.id": group, "log_level": "3",
                "session.timeout.ms": "6000", "heartbeat.interval.ms": "500",
            ],
            topics: topics
        )
    }

    /// Reads until `count` messages arrived (or a minute passed).
    static func read(_ consumer: KafkaConsumer, count: Int) async -> (messages: [ConsumedMessage], assigned: Int) {
        var messages: [ConsumedMessage] = []
        var assigned = 0
        let deadline = ContinuousClock.now + .seconds(60)
        while messages.count < count && ContinuousClock.now < deadline {
            let poll = await consumer.poll(maxMessages: 500, timeout: .milliseconds(200))
            messages += poll.messages
            assigned += poll.assigned.count
        }
        return (messages, assigned)
    }

    @Test func aGroupResumesFromWhatWasCommittedAndNothingElse() async throws {
        let cluster = try KafkaMockCluster(brokers: 3)
        try cluster.createTopic("events", partitions: 3)
        try await Self.fill(cluster, topic: "events", count: 300)

        let first = try Self.consumer(cluster, group: "loaders", topics: ["events"])
        let (messages, assigned) = await Self.read(first, count: 300)
        #expect(messages.count == 300)
        #expect(assigned == 3)
        #expect(Set(messages.map { String(decoding: $0.value, as: UTF8.self) }).count == 300)
        #expect(messages.allSatisfy { $0.header("n") != nil && $0.key != nil })
        // Commit only the first 40 of each partition: the rest is "not confirmed".
        var commits: [TopicPartition: Int64] = [:]
        for partition in 0..<3 as Range<Int32> { commits[TopicPartition("events", partition)] = 40 }
        try await first.commit(commits)
        let committed = try await first.committed(Array(commits.keys))
        #expect(committed.values.allSatisfy { $0 == 40 })
        await first.close()

        let second = try Self.consumer(cluster, group: "loaders", topics: ["events"])
        let (again, _) = await Self.read(second, count: 300 - 120)
        #expect(again.count == 300 - 120)
        #expect(again.allSatisfy { $0.offset >= 40 })
        let marks = try await second.watermarks(topic: "events")
        #expect(marks.values.map(\.high).reduce(0, +) == 300)
        await second.close()
    }

    @Test func commitsForPartitionsNotAssignedAreLeftOut() async throws {
        let cluster = try KafkaMockCluster(brokers: 1)
        try cluster.createTopic("events", partitions: 1)
        try await Self.fill(cluster, topic: "events", count: 10)
        let consumer = try Self.consumer(cluster, group: "g", topics: ["events"])
        _ = await Self.read(consumer, count: 10)
        try await consumer.commit([TopicPartition("events", 0): 10, TopicPartition("other", 0): 5])
        let committed = try await consumer.committed([TopicPartition("events", 0), TopicPartition("other", 0)])
        #expect(committed[TopicPartition("events", 0)] == .some(10))
        #expect(committed[TopicPartition("other", 0)] == .some(nil))
        await consumer.close()
    }

    /// The lag counts what the group has not committed, from the brokers' own watermarks, and
    /// keeps moving while partitions are paused (the loader pauses them while it retries an
    /// insert; librdkafka's cached watermarks froze then).
    @Test func lagIsUncommittedMessagesAndMovesWhilePaused() async throws {
        let cluster = try KafkaMockCluster(brokers: 3)
        try cluster.createTopic("events", partitions: 2)
        try await Self.fill(cluster, topic: "events", count: 200)
        let consumer = try Self.consumer(cluster, group: "lag", topics: ["events"])
        let (messages, _) = await Self.read(consumer, count: 200)
        #expect(messages.count == 200)
        // Everything fetched, nothing committed: all 200 are lag.
        #expect(await consumer.lag().values.reduce(0, +) == 200)
        let partitions = [TopicPartition("events", 0), TopicPartition("events", 1)]
        try await consumer.commit([partitions[0]: 30, partitions[1]: 20])
        let counts = Dictionary(grouping: messages, by: \.partition).mapValues(\.count)
        let lag = await consumer.lag()
        #expect(lag[partitions[0]] == Int64(counts[0] ?? 0) - 30)
        #expect(lag[partitions[1]] == Int64(counts[1] ?? 0) - 20)

        await consumer.pause(partitions)
        try await Self.fill(cluster, topic: "events", count: 100)
        #expect(await consumer.lag().values.reduce(0, +) == 300 - 50)
        await consumer.close()
        #expect(await consumer.lag().isEmpty, "a closed consumer answers nothing, and does not crash")
    }
}
