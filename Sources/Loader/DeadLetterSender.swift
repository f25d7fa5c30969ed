import Kafka
import Synchronization

/// Sends dead letters and waits for Kafka's verdict on each: delivery reports are matched, by
/// message id, to continuations (swift-kafka-client's `sendAndAwait`).
///
/// The loader commits the offsets of a batch only after every dead letter of it was
/// acknowledged (acks=all), so the wait must be exact: a report resumes the one send waiting
/// for it, at once, whichever comes first (the report or the wait).
final class DeadLetterSender: Sendable {
    /// Where one message's verdict stands.
    private enum Entry {
        /// Queued in librdkafka; nobody waits yet, no report yet.
        case queued
        /// Reported before anyone waited: true when acknowledged.
        case reported(Bool)
        /// A send waits for the report.
        case awaited(CheckedContinuation<Bool, Never>)
        /// The waiting task was cancelled before it waited: the wait returns false at once.
        case cancelled
    }

    private struct State {
        var nextID: UInt64 = 1
        var entries: [UInt64: Entry] = [:]
    }

    private let state = Mutex(State())

    /// Messages sent and not yet settled (for tests: nothing leaks).
    var outstanding: Int { self.state.withLock { $0.entries.count } }

    /// Whether a send waits for message `id`'s report now (for tests: the report then takes
    /// the waiting path).
    func isAwaited(_ id: UInt64) -> Bool {
        self.state.withLock { state in
            if case .awaited = state.entries[id] { return true }
            return false
        }
    }

    /// Sends `letters` to `route`'s dead-letter topic and returns, per letter, whether Kafka
    /// acknowledged it. Waits for every report; a cancelled task stops waiting and counts the
    /// rest as not acknowledged.
    func send(_ letters: [DeadLetter], to route: LoaderRoute, via producer: KafkaProducer) async -> [Bool] {
        let ids = self.register(letters.count)
        for (letter, id) in zip(letters, ids) {
            let message = letter.message
            var headers = message.headers.filter { !$0.name.hasPrefix("dlq_") }
            headers.append(("dlq_reason", Array(letter.reason.utf8)))
            headers.append(("dlq_topic", Array(message.topic.utf8)))
            headers.append(("dlq_partition", Array(String(message.partition).utf8)))
            headers.append(("dlq_offset", Array(String(message.offset).utf8)))
            headers.append(("dlq_table", Array(route.table.utf8)))
            do {
                try producer.send(
                    topic: route.deadLetterTopic,
                    key: message.key,
                    value: message.value,
                    headers: headers.map { ($0.name, $0.value) },
                    id: id
                )
            } catch {
                // Not queued: no report will come. The caller sends it again after a back-off.
                self.settle(id, acknowledged: false)
            }
        }
        var acknowledged: [Bool] = []
        acknowledged.reserveCapacity(ids.count)
        for id in ids { acknowledged.append(await self.verdict(id)) }
        return acknowledged
    }

    /// Ids for `count` messages about to be sent; each must then be reported or settled.
    func register(_ count: Int) -> [UInt64] {
        self.state.withLock { state in
            let ids = (0..<UInt64(count)).map { state.nextID + $0 }
            state.nextID += UInt64(count)
            for id in ids { state.entries[id] = .queued }
            return ids
        }
    }

    /// The producer's delivery reports (on its poll thread): resumes the sends waiting for them.
    func report(_ reports: [DeliveryReport]) {
        for report in reports { self.settle(report.id, acknowledged: report.error == nil) }
    }

    /// Records the verdict on message `id` (reports of ids not registered here are ignored).
    func settle(_ id: UInt64, acknowledged: Bool) {
        let waiting: CheckedContinuation<Bool, Never>? = self.state.withLock { state in
            switch state.entries[id] {
            case .queued:
                state.entries[id] = .reported(acknowledged)
                return nil
            case .awaited(let continuation):
                state.entries[id] = nil
                return continuation
            case .cancelled:
                state.entries[id] = nil
                return nil
            case .reported, nil:
                return nil
            }
        }
        waiting?.resume(returning: acknowledged)
    }

    /// Waits for the verdict on message `id`: true when Kafka acknowledged it; false when it
    /// failed or the task was cancelled.
    func verdict(_ id: UInt64) async -> Bool {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
                let ready: Bool? = self.state.withLock { state in
                    switch state.entries[id] {
                    case .queued:
                        state.entries[id] = .awaited(continuation)
                        return nil
                    case .reported(let acknowledged):
                        state.entries[id] = nil
                        return acknowledged
                    case .cancelled, .awaited, nil:
                        // Cancelled before waiting (the report, if it comes, clears the entry),
                        // or a second wait for one id: not acknowledged as far as this wait knows.
                        return false
                    }
                }
                if let ready { continuation.resume(returning: ready) }
            }
        } onCancel: {
            let waiting: CheckedContinuation<Bool, Never>? = self.state.withLock { state in
                switch state.entries[id] {
                case .awaited(let continuation):
                    state.entries[id] = .cancelled
                    return continuation
                case .queued:
                    state.entries[id] = .cancelled
                    return nil
                case .reported, .cancelled, nil:
                    return nil
                }
            }
            waiting?.resume(returning: false)
        }
    }
}
