import Foundation
import Kafka
import Synchronization
import TestSupport
import Testing

@Suite(.timeLimit(.minutes(2))) struct DevKafkaTests {
    @Test func devKafkaServesOtherProcessesAndStopsOnSIGTERM() async throws {
        let kafka = try await DevKafka.start(brokers: 3, topics: ["events:3"])
        let bootstrap = kafka.bootstrapServers
        let brokers = bootstrap.split(separator: ",")
        #expect(brokers.count == 3)
        #expect(brokers.allSatisfy { $0.hasPrefix("127.0.0.1:") })

        let reports = Reports()
        let producer = try KafkaProducer(
            properties: ["bootstrap.servers": bootstrap, "enable.idempotence": "true", "log_level": "3"],
            onDelivery: { reports.add($0) }
        )
        for id in 0..<30 as Range<UInt64> {
            try producer.send(topic: "events", key: Array("k\(id)".utf8), value: Array("v\(id)".utf8), id: id)
        }
        try await waitUntil { reports.count == 30 }
        let offsets = try producer.endOffsets(topic: "events")
        #expect(offsets.count == 3)
        #expect(offsets.values.reduce(0, +) == 30)
        producer.close()

        #expect(try await kafka.stop() == 0)
    }
}
