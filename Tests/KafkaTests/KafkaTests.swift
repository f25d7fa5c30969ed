import Kafka
import Synchronization
import TestSupport
import Testing

/// Delivery reports collected from the poll thread.
final class Reports: Sendable {
    let all = Mutex<[DeliveryReport]>([])
    func add(_ reports: [DeliveryReport]) { self.all.withLock { $0 += reports } }
    var count: Int { self.all.withLock { $0.count } }
}

@Suite(.timeLimit(.minutes(2))) struct KafkaProducerTests {
    static func producer(
        _ cluster: KafkaMockCluster,
        reports: Reports,
        extra: [String: String] = [:]
    ) throws
        -> KafkaProducer
    {
        var properties = [
            "bootstrap.servers": cluster.bootstrapServers, "enable.idempotence": "true", "acks": "all",
            "linger.ms": "5", "log_level": "3",
        ]
        properties.merge(extra) { $1 }
        return try KafkaProducer(properties: properties, onDelivery: { reports.add($0) })
    }

    @Test func everyMessageIsDeliveredOnceWithItsIdAndCountedByEndOffsets() async throws {
        let cluster = try KafkaMockCluster(brokers: 3)
        // Its brokers go down and up: keep their ports from other tests meanwhile.
        let reserved = ReservedPorts(bootstrapServers: cluster.bootstrapServers)
        defer { withExtendedLifetime(reserved) {} }
        try cluster.createTopic("events", partitions: 4)
        let reports = Reports()
        let producer = try Self.producer(cluster, reports: reports)
        for id in 0..<1000 as Range<UInt64> {
            try producer.send(
                topic: "events",
                key: Array("user-\(id % 17)".utf8),
                value: Array("{\"n\":\(id)}".utf8),
                headers: [("event_id", Array("id-\(id)".utf8))],
                id: id
            )
        }
        try await waitUntil { reports.count == 1000 }
        let delivered = reports.all.withLock { $0 }
        #expect(delivered.allSatisfy { $0.error == nil })
        #expect(Set(delivered.map(\.id)) == Set(0..<1000))
        #expect(delivered.allSatisfy { $0.topic == "events" && $0.offset >= 0 })
        let ends = try producer.endOffsets(topic: "events")
        #expect(ends.count == 4)
        #expect(ends.values.reduce(0, +) == 1000)
        producer.close()
    }

    @Test func messagesWaitOutAnOutageOfEveryBroker() async throws {
        let cluster = try KafkaMockCluster(brokers: 3)
        // Its brokers go down and up: keep their ports from other tests meanwhile.
        let reserved = ReservedPorts(bootstrapServers: cluster.bootstrapServers)
        defer { withExtendedLifetime(reserved) {} }
        try cluster.createTopic("events", partitions: 2)
        let reports = Reports()
        let producer = try Self.producer(cluster, reports: reports, extra: ["message.timeout.ms": "60000"])
        try producer.send(topic: "events", key: nil, value: Array("before".utf8), id: 0)
        try await waitUntil { reports.count == 1 }
        for broker in 1...3 { cluster.setBrokerDown(Int32(broker)) }
        for id in 1...50 as ClosedRange<UInt64> {
            try producer.send(topic: "events", key: nil, value: Array("during-\(id)".utf8), id: id)
        }
        try await Task.sleep(for: .seconds(2))
        #expect(reports.count == 1)  // nothing is acknowledged while no broker is up
        for broker in 1...3 { cluster.setBrokerUp(Int32(broker)) }
        try await waitUntil { reports.count == 51 }
        #expect(reports.all.withLock { $0 }.allSatisfy { $0.error == nil })
        #expect(try producer.endOffsets(topic: "events").values.reduce(0, +) == 51)
        producer.close()
    }

    @Test func injectedRetriableErrorsAreRetriedWithoutLossOrDuplicates() async throws {
        let cluster = try KafkaMockCluster(brokers: 3)
        // Its brokers go down and up: keep their ports from other tests meanwhile.
        let reserved = ReservedPorts(bootstrapServers: cluster.bootstrapServers)
        defer { withExtendedLifetime(reserved) {} }
        try cluster.createTopic("events", partitions: 1)
        let reports = Reports()
        let producer = try Self.producer(cluster, reports: reports)
        // Produce (API key 0) fails twice with NOT_LEADER_FOR_PARTITION (6) and once with
        // REQUEST_TIMED_OUT (7); the idempotent producer retries.
        cluster.pushRequestErrors(apiKey: 0, errors: [6, 7, 6])
        for id in 0..<100 as Range<UInt64> {
            try producer.send(topic: "events", key: nil, value: Array("m\(id)".utf8), id: id)
        }
        try await waitUntil { reports.count == 100 }
        #expect(reports.all.withLock { $0 }.allSatisfy { $0.error == nil })
        #expect(try producer.endOffsets(topic: "events") == [0: 100])
        producer.close()
    }

    @Test func closingFromAnAsyncContextDeliversTheFlushsReportsFirst() async throws {
        let cluster = try KafkaMockCluster(brokers: 3)
        try cluster.createTopic("events", partitions: 2)
        let reports = Reports()
        let producer = try Self.producer(cluster, reports: reports, extra: ["linger.ms": "200"])
        for id in 0..<200 as Range<UInt64> {
            try producer.send(topic: "events", key: nil, value: Array("m\(id)".utf8), id: id)
        }
        // Lingering, nothing is acknowledged yet; the close flushes and hands over every report.
        await producer.close(flushTimeout: .seconds(30))
        #expect(reports.count == 200)
        #expect(reports.all.withLock { $0 }.allSatisfy { $0.error == nil })
        await producer.close(flushTimeout: .seconds(1))  // idempotent
    }

    @Test func badPropertiesAreRefusedWithTheirName() {
        #expect(throws: KafkaError.self) {
            _ = try KafkaProducer(properties: ["no.such.property": "1"], onDelivery: { _ in })
        }
        do {
            _ = try KafkaProducer(properties: ["acks": "sometimes"], onDelivery: { _ in })
        } catch {
            #expect(error.message.contains("acks"))
        }
    }
}

@Suite struct KafkaErrorTests {
    @Test func authorizationFailuresMayPassLaterAndAreNeverPermanent() {
        // A new ACL can take a while to reach every broker: the message must wait, not be
        // set aside.
        for code: KafkaError.Code in [
            .topicAuthorizationFailed, .clusterAuthorizationFailed, .transactionalIDAuthorizationFailed,
        ] {
            let error = KafkaError(code, "test")
            #expect(error.isRetriable, "\(code)")
            #expect(!error.isPermanent, "\(code)")
            #expect(!error.isFatal, "\(code)")
        }
    }

    @Test func onlyWhatBelongsToTheMessageIsPermanent() {
        for code: KafkaError.Code in [
            .messageSizeTooLarge, .recordListTooLarge, .invalidRecord, .invalidMessage, .topicException,
        ] {
            #expect(KafkaError(code, "test").isPermanent, "\(code)")
            #expect(!KafkaError(code, "test").isRetriable, "\(code)")
        }
        for code: KafkaError.Code in [.queueFull, .allBrokersDown, .notLeaderForPartition, .requestTimedOut, .fatal] {
            #expect(!KafkaError(code, "test").isPermanent, "\(code)")
        }
        #expect(KafkaError(.fatal, "fenced").isFatal)
        #expect(KafkaError(.invalidProducerEpoch, "fenced", isFatal: true).isFatal)
    }

    @Test func anErrorCarriesItsCodeNameAndWhereItWasRaised() {
        let error = KafkaError(.messageSizeTooLarge, "producing to events")
        let line = #line - 1
        #expect(error.code.rawValue == 10)
        #expect(error.name == "MSG_SIZE_TOO_LARGE")
        #expect(error.file == "KafkaTests/KafkaTests.swift" && error.line == line)
        #expect(error.description == "KafkaError(MSG_SIZE_TOO_LARGE): producing to events")
        #expect(KafkaError.Code(rawValue: 10) == .messageSizeTooLarge)
        do {
            _ = try KafkaProducer(properties: ["acks": "sometimes"], onDelivery: { _ in })
            Issue.record("a bad property was accepted")
        } catch {
            #expect(error.code == .invalidArgument)
            #expect(error.file.hasPrefix("Kafka/"))
        }
    }
}
