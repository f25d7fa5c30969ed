import Kafka

/// The on-call side of consumer groups: where a group stands, and moving it (replay).
public struct OffsetTools: Sendable {
    /// librdkafka properties; `bootstrap.servers` at least (TLS/SASL as for the loader).
    public var properties: [String: String]

    public init(properties: [String: String]) { self.properties = properties }

    /// One partition of a topic as a group sees it.
    public struct PartitionState: Sendable, Equatable {
        public var partition: Int32
        /// nil: the group never committed here (it starts at `auto.offset.reset`).
        public var committed: Int64?
        public var low: Int64
        public var high: Int64
        /// Messages after the committed offset (from the low watermark when none is).
        public var lag: Int64 { self.high - max(self.committed ?? self.low, self.low) }
    }

    /// Where `group` stands on each partition of `topic`.
    public func describe(group: String, topic: String) async throws -> [PartitionState] {
        let consumer = try self.consumer(group: group)
        do {
            let marks = try await consumer.watermarks(topic: topic)
            let committed = try await consumer.committed(marks.keys.map { TopicPartition(topic, $0) })
            await consumer.close()
            return marks.keys.sorted().map { partition in
                PartitionState(
                    partition: partition,
                    committed: committed[TopicPartition(topic, partition)] ?? nil,
                    low: marks[partition]!.low,
                    high: marks[partition]!.high
                )
            }
        } catch {
            await consumer.close()
            throw error
        }
    }

    /// Where to move a group.
    public enum Target: Sendable, Equatable {
        case earliest
        case latest
        /// Offsets per partition; partitions not named keep their offset.
        case offsets([Int32: Int64])
        /// The first message at or after this time (unix ms).
        case time(Int64)
    }

    public struct Change: Sendable, Equatable {
        public var partition: Int32
        public var from: Int64?
        public var to: Int64
    }

    /// Moves `group` on `topic` to `target`; with `dryRun`, only says what would change.
    ///
    /// Refuses while the group has active members (a member would overwrite the reset with its
    /// next commit). Clusters that cannot list group members (librdkafka's mock) are left to the
    /// broker's own check: Kafka refuses a non-member's commit to a group that is not empty.
    ///
    /// - Throws: ``LoaderError`` with code ``LoaderError/Code/groupIsActive`` while the group is
    ///   in use, ``LoaderError/Code/invalidTarget`` for a partition or an offset the topic does
    ///   not have; Kafka's errors as they come.
    public func reset(group: String, topic: String, to target: Target, dryRun: Bool) async throws -> [Change] {
        let consumer = try self.consumer(group: group)
        do {
            let members: Int? = try? await consumer.activeMembers(group: group)
            if let members, members > 0 { throw Self.groupIsActive(group, detail: "\(members) member(s)") }
            let marks = try await consumer.watermarks(topic: topic)
            let current = try await consumer.committed(marks.keys.map { TopicPartition(topic, $0) })
            var destination: [Int32: Int64] = [:]
            switch target {
            case .earliest:
                for (partition, mark) in marks { destination[partition] = mark.low }
            case .latest:
                for (partition, mark) in marks { destination[partition] = mark.high }
            case .offsets(let offsets):
                for (partition, offset) in offsets {
                    guard let mark = marks[partition] else {
                        throw LoaderError(
                            .invalidTarget,
                            message: "topic \(topic) has no partition \(partition) (it has \(marks.count))"
                        )
                    }
                    guard offset >= mark.low && offset <= mark.high else {
                        throw LoaderError(
                            .invalidTarget,
                            message:
                                "offset \(offset) is outside partition \(partition)'s range \(mark.low)…\(mark.high)"
                        )
                    }
                    destination[partition] = offset
                }
            case .time(let millis):
                destination = try await consumer.offsets(topic: topic, atOrAfterMillis: millis)
            }
            let changes = destination.keys.sorted().map { partition in
                Change(
                    partition: partition,
                    from: current[TopicPartition(topic, partition)] ?? nil,
                    to: destination[partition]!
                )
            }
            await consumer.close()
            if !dryRun {
                try await self.commitAsSoleMember(
                    group: group,
                    topic: topic,
                    partitions: Set(marks.keys),
                    offsets: Dictionary(
                        uniqueKeysWithValues: changes.map { (TopicPartition(topic, $0.partition), $0.to) }
                    )
                )
            }
            return changes
        } catch {
            await consumer.close()
            throw error
        }
    }

    /// Joins the group and commits once it holds every partition of the topic: only an idle
    /// group hands them all to a newcomer, so this also proves no loader is running. (Kafka
    /// accepts a non-member's commit to an empty group, but librdkafka's mock cluster does
    /// not, and not every cluster lets clients list group members.)
    private func commitAsSoleMember(
        group: String,
        topic: String,
        partitions: Set<Int32>,
        offsets: [TopicPartition: Int64]
    ) async throws {
        var properties = self.properties
        properties["group.id"] = group
        // A short session: should the leave be lost, the group forgets this member quickly.
        properties["session.timeout.ms"] = properties["session.timeout.ms"] ?? "6000"
        properties["heartbeat.interval.ms"] = properties["heartbeat.interval.ms"] ?? "500"
        let member = try KafkaConsumer(properties: properties, topics: [topic])
        let all = Set(partitions.map { TopicPartition(topic, $0) })
        let deadline = ContinuousClock.now + .seconds(15)
        while !member.assignment.isSuperset(of: all) && ContinuousClock.now < deadline {
            _ = await member.poll(maxMessages: 1, timeout: .milliseconds(200))
        }
        let held = member.assignment.intersection(all).count
        guard held == all.count else {
            await member.close()
            throw Self.groupIsActive(group, detail: "it handed this tool \(held) of \(all.count) partitions")
        }
        do {
            try await member.commit(offsets)
        } catch {
            await member.close()
            throw error
        }
        await member.close()
    }

    private static func groupIsActive(_ group: String, detail: String, line: Int = #line) -> LoaderError {
        LoaderError(
            .groupIsActive,
            message:
                "group \(group) has active members (\(detail)): stop its loaders first, then reset it (a loader stopped a moment ago counts until the group notices, at most its session.timeout.ms; try again shortly)",
            line: line
        )
    }

    private func consumer(group: String) throws -> KafkaConsumer {
        var properties = self.properties
        properties["group.id"] = group
        return try KafkaConsumer(properties: properties)
    }
}
