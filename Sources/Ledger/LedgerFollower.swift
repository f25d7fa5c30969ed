import Kafka
import Logging

/// Reads the ledger topic from its start and hands each record on, for as long as the task
/// runs: the receipts of a gateway and `sluice audit` build their view from it. The follower
/// is a consumer group of one member with a name of its own and commits nothing, so every
/// process that follows reads the whole topic, and a restarted one reads it again.
public struct LedgerFollower: Sendable {
    public let topic: String
    let properties: [String: String]
    let logger: Logger

    /// - Parameters:
    ///   - properties: the Kafka client's properties (`bootstrap.servers`, TLS, SASL…).
    ///   - name: part of the follower's group id, for the brokers' logs (e.g. the gateway id).
    public init(properties: [String: String], topic: String, name: String, logger: Logger) {
        var merged = properties
        merged["group.id"] = "sluice-ledger-\(name)-\(UInt64.random(in: 0...UInt64.max))"
        merged["auto.offset.reset"] = "earliest"
        merged["enable.partition.eof"] = "false"
        self.properties = merged
        self.topic = topic
        self.logger = logger
    }

    /// Polls until the task is cancelled, calling `onRecords` after each poll with its records
    /// (in each partition's order; none when the poll found nothing, so that the caller can
    /// keep time). A message that is not a record is logged and skipped: the
    /// ledger is a report, and a stranger on its topic must not stop it.
    public func run(_ onRecords: @Sendable ([LedgerRecord]) async -> Void) async throws(KafkaError) {
        let consumer = try KafkaConsumer(properties: self.properties, topics: [self.topic])
        while !Task.isCancelled {
            let poll = await consumer.poll(maxMessages: 1000, timeout: .milliseconds(200))
            var records: [LedgerRecord] = []
            records.reserveCapacity(poll.messages.count)
            for message in poll.messages {
                switch LedgerRecord.parse(message.value) {
                case .success(let record): records.append(record)
                case .failure(let error):
                    self.logger.warning(
                        "ledger.unreadable_record",
                        metadata: [
                            "topic": "\(message.topic)", "partition": "\(message.partition)",
                            "offset": "\(message.offset)", "error": "\(error)",
                        ]
                    )
                }
            }
            await onRecords(records)
        }
        await consumer.close()
    }
}
