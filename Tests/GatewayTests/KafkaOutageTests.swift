import EventModel
import Forwarder
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Kafka
import ServiceLifecycle
import Synchronization
import Testing
import WAL

@Suite(.serialized, .timeLimit(.minutes(3))) struct KafkaOutageTests {
    /// The delivery contract end to end: while every broker is down for 20 s the gateway keeps
    /// answering 202, and once Kafka is back every acknowledged event is in it.
    @Test func everyBrokerDownFor20SecondsWhileEventsKeepArriving() async throws {
        let cluster = try KafkaMockCluster(brokers: 3)
        // Its brokers go down and up: keep their ports from other tests meanwhile.
        let reserved = ReservedPorts(bootstrapServers: cluster.bootstrapServers)
        defer { withExtendedLifetime(reserved) {} }
        try cluster.createTopic("events", partitions: 3)
        let gateway = try await TestGateway.make()
        var forwarding = ForwarderConfiguration(kafkaProperties: [
            "bootstrap.servers": cluster.bootstrapServers, "log_level": "0",
        ])
        forwarding.commitInterval = .milliseconds(100)
        let forwarder = Forwarder(wal: gateway.wal, configuration: forwarding, logger: quietLogger)
        let group = ServiceGroup(services: [forwarder], logger: quietLogger)
        let running = Task { try await group.run() }

        let app = Application(router: gateway.router, logger: quietLogger)
        final class Outcomes: Sendable {
            let acknowledged = Mutex<[String]>([])
            let statuses = Mutex<[HTTPResponse.Status]>([])
        }
        let outcomes = Outcomes()
        try await app.test(.router) { client in
            func post(_ count: Int) async throws {
                let ids = (0..<count).map { _ in UUIDText.v7(millis: Timestamp.nowMillis()) }
                let body = ids.map { #"{"action":"outage","user_id":"u","event_id":"\#($0)"}"# }.joined(separator: "\n")
                let response = try await client.execute(
                    uri: "/v1/events/batch",
                    method: .post,
                    headers: headers([.contentType: "application/x-ndjson"]),
                    body: buffer(body)
                )
                outcomes.statuses.withLock { $0.append(response.status) }
                if response.status == .accepted { outcomes.acknowledged.withLock { $0 += ids } }
            }
            try await post(20)
            for broker in 1...3 { cluster.setBrokerDown(Int32(broker)) }
            let outageEnds = ContinuousClock.now + .seconds(20)
            while ContinuousClock.now < outageEnds {
                try await post(10)
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(gateway.wal.cursor("forwarder")?.lsn ?? .zero <= LSN(20))  // nothing reached Kafka meanwhile
            for broker in 1...3 { cluster.setBrokerUp(Int32(broker)) }
            try await post(20)
        }
        let acknowledged = outcomes.acknowledged.withLock { $0 }
        #expect(outcomes.statuses.withLock { $0 }.allSatisfy { $0 == .accepted })
        let total = LSN(UInt64(acknowledged.count))
        let deadline = ContinuousClock.now + .seconds(60)
        while (gateway.wal.cursor("forwarder")?.lsn ?? .zero) < total && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(gateway.wal.cursor("forwarder")?.lsn == total)
        let reports = Mutex(0)
        let counter = try KafkaProducer(
            properties: ["bootstrap.servers": cluster.bootstrapServers, "log_level": "0"],
            onDelivery: { batch in reports.withLock { $0 += batch.count } }
        )
        let inKafka = try counter.endOffsets(topic: "events").values.reduce(0, +)
        counter.close()
        #expect(inKafka >= Int64(acknowledged.count))
        print(
            "kafka outage test: \(acknowledged.count) events acknowledged around and during a 20 s outage, \(inKafka) messages in Kafka afterwards"
        )
        await group.triggerGracefulShutdown()
        try await running.value
        await gateway.wal.close()
    }
}
