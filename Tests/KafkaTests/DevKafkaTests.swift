import Foundation
import Kafka
import Synchronization
import TestSupport
import Testing

@Suite(.timeLimit(.minutes(2))) struct DevKafkaTests {
    @Test func devKafkaServesOtherProcessesAndStopsOnSIGTERM() async throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try sluiceBinary())
        process.arguments = ["dev-kafka", "--brokers", "3", "--topic", "events:3"]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        let handle = out.fileHandleForReading
        let firstLine = try await offPool { () -> String in
            var bytes: [UInt8] = []
            while let byte = try handle.read(upToCount: 1)?.first, byte != 0x0A { bytes.append(byte) }
            return String(decoding: bytes, as: UTF8.self)
        }
        let brokers = firstLine.split(separator: ",")
        #expect(brokers.count == 3)
        #expect(brokers.allSatisfy { $0.hasPrefix("127.0.0.1:") })

        let reports = Reports()
        let producer = try KafkaProducer(
            properties: ["bootstrap.servers": firstLine, "enable.idempotence": "true", "log_level": "3"],
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

        kill(process.processIdentifier, SIGTERM)
        try await offPool { process.waitUntilExit() }
        #expect(process.terminationStatus == 0)
    }
}
