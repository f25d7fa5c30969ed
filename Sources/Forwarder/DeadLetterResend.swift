import EventModel
import Foundation
import Kafka
import Synchronization
import WAL

#if canImport(Glibc)
import Glibc
#endif

/// `sluice wal dead-letters resend`: sends the forwarder's dead letters to Kafka again, after
/// the operator fixed what made Kafka refuse them (a topic's `max.message.bytes`, an ACL, a
/// missing topic), as exactly the messages the forwarder would have sent
/// (``ForwarderMessages``: topic, key, headers, sealing).
///
/// Safe beside a running gateway: the file is first claimed by renaming it to
/// `dead-letters.ndjson.resending-<ms>` (the forwarder opens its file by name for each
/// dead letter, so new ones start a fresh file), and a lock keeps two resends apart. A resend
/// that stopped half-way leaves its claim behind, and the next one takes it up first. Once
/// Kafka acknowledged a claim's events, the claim becomes `dead-letters.resent-<ms>.ndjson`, a
/// record of what went; events Kafka refused again stay in a claim for the next run. Duplicates
/// are harmless: the loader folds them by `event_id`.
package struct DeadLetterResend {
    package struct Outcome: Sendable, Equatable {
        /// Events Kafka acknowledged, by the topic they went to.
        package var sent: [String: Int] = [:]
        /// Events Kafka refused again, by reason; they stay claimed for the next run.
        package var failed: [String: Int] = [:]
        /// Lines that are not dead letters (kept in the claim, never sent).
        package var unreadable = 0
        /// The files this run wrote: the record of what was sent, and what is left.
        package var resentFiles: [String] = []
        package var leftFiles: [String] = []
    }

    /// One dead letter as the forwarder wrote it.
    package struct Letter: Sendable, Equatable {
        package var reason: String
        package var lsn: LSN
        package var event: [UInt8]
    }

    package let walDirectory: String
    package var directory: String { self.walDirectory + "/" + DeadLetterFile.directoryName }
    package var path: String { self.directory + "/" + DeadLetterFile.fileName }

    package init(walDirectory: String) { self.walDirectory = walDirectory }

    /// A dead-letter line, or nil when it is not one.
    package static func parse(_ line: Substring) -> Letter? {
        guard let value = try? JSONParser.parse(Array(line.utf8)),
            case .string(let reason) = value["reason"],
            case .number(let lsnText) = value["wal_lsn"], let lsn = UInt64(lsnText),
            case .string(let event) = value["event"]
        else { return nil }
        return Letter(reason: reason, lsn: LSN(lsn), event: Array(event.utf8))
    }

    /// The dead letters waiting: the live file and any claims an earlier run left, by reason;
    /// and the unreadable lines.
    package func pending() throws -> (byReason: [String: Int], unreadable: Int) {
        var reasons: [String: Int] = [:]
        var unreadable = 0
        for file in try self.claims() + (FileManager.default.fileExists(atPath: self.path) ? [self.path] : []) {
            for line in try Self.lines(file) {
                if let letter = Self.parse(line) { reasons[letter.reason, default: 0] += 1 } else { unreadable += 1 }
            }
        }
        return (reasons, unreadable)
    }

    /// Claims the live file, sends every claim's events with `producer` and waits up to
    /// `timeout` for Kafka's acknowledgements; `reports` must receive the producer's delivery
    /// reports.
    package func resend(
        messages: ForwarderMessages,
        producer: KafkaProducer,
        reports: DeliveryReports,
        timeout: Duration
    ) async throws -> Outcome {
        let lock = try self.lock()
        defer { close(lock) }
        try self.claimLiveFile()
        var outcome = Outcome()
        for claim in try self.claims() {
            let lines = try Self.lines(claim)
            var letters: [(line: Substring, letter: Letter)] = []
            var kept: [Substring] = []
            for line in lines {
                if let letter = Self.parse(line) { letters.append((line, letter)) } else { kept.append(line) }
            }
            outcome.unreadable += kept.count
            // Each event's delivery id is its index in this claim: LSNs may repeat across
            // claims (an event dead-lettered twice).
            var refusedAtSend: [Int: String] = [:]
            for (index, item) in letters.enumerated() {
                if let error = Self.send(item.letter, id: UInt64(index), messages: messages, producer: producer) {
                    refusedAtSend[index] = "\(error)"
                }
            }
            let delivered = await reports.wait(
                for: Set(letters.indices.filter { refusedAtSend[$0] == nil }.map(UInt64.init)),
                timeout: timeout
            )
            var sent: [Substring] = []
            for (index, item) in letters.enumerated() {
                if let report = delivered[UInt64(index)], report.error == nil {
                    sent.append(item.line)
                    outcome.sent[report.topic, default: 0] += 1
                } else {
                    kept.append(item.line)
                    let reason =
                        refusedAtSend[index] ?? delivered[UInt64(index)]?.error.map { "\($0)" }
                        ?? "not acknowledged within \(timeout)"
                    outcome.failed[reason, default: 0] += 1
                }
            }
            if !sent.isEmpty {
                // Named by this run: a claim resent in parts leaves one record per part.
                var resent =
                    self.directory + "/dead-letters.resent-\(String(Self.nowMillis()).leftPadded(to: 15)).ndjson"
                while FileManager.default.fileExists(atPath: resent) {
                    resent = resent.replacingOccurrences(of: ".ndjson", with: "-1.ndjson")
                }
                try Self.write(sent, to: resent)
                outcome.resentFiles.append(resent)
            }
            if kept.isEmpty {
                try FileManager.default.removeItem(atPath: claim)
            } else {
                try Self.write(kept, to: claim)
                outcome.leftFiles.append(claim)
            }
        }
        return outcome
    }

    private static func send(
        _ letter: Letter,
        id: UInt64,
        messages: ForwarderMessages,
        producer: KafkaProducer
    ) -> KafkaError? {
        // The id is the delivery id; the wal_lsn header keeps the event's own LSN.
        var lastError: KafkaError?
        for _ in 0..<100 {
            lastError = messages.send(
                letter.event,
                lsn: letter.lsn,
                producer: producer,
                eventOutlivesDelivery: false,
                deliveryID: id
            )
            // librdkafka's local queue is full: let it drain.
            guard let error = lastError, error.code == .queueFull else { return lastError }
            _ = producer.flush(timeoutMilliseconds: 100)
        }
        return lastError
    }

    /// The claims of earlier and this run, oldest first.
    private func claims() throws -> [String] {
        guard FileManager.default.fileExists(atPath: self.directory) else { return [] }
        return try FileManager.default.contentsOfDirectory(atPath: self.directory)
            .filter { $0.hasPrefix(DeadLetterFile.fileName + ".resending-") }
            .sorted()
            .map { self.directory + "/" + $0 }
    }

    private func claimLiveFile() throws {
        guard FileManager.default.fileExists(atPath: self.path) else { return }
        let claim = self.path + ".resending-\(String(Self.nowMillis()).leftPadded(to: 15))"
        guard rename(self.path, claim) == 0 else {
            throw DeadLetterResendError("cannot claim \(self.path): \(String(cString: strerror(errno)))")
        }
        try Self.syncDirectory(self.directory)
    }

    private func lock() throws -> Int32 {
        guard FileManager.default.fileExists(atPath: self.directory) else {
            throw DeadLetterResendError("no dead letters: \(self.directory) does not exist")
        }
        let fd = open(self.directory + "/resend.lock", O_WRONLY | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw DeadLetterResendError(
                "cannot open \(self.directory)/resend.lock: \(String(cString: strerror(errno)))"
            )
        }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            close(fd)
            throw DeadLetterResendError("another resend of \(self.directory) is running")
        }
        return fd
    }

    private static func lines(_ file: String) throws -> [Substring] {
        let text = try String(contentsOfFile: file, encoding: .utf8)
        return text.split(separator: "\n", omittingEmptySubsequences: true)
    }

    /// Writes `lines` to `path` through a temporary file, fsynced and renamed into place.
    private static func write(_ lines: [Substring], to path: String) throws {
        let temporary = path + ".tmp"
        let text = lines.map { $0 + "\n" }.joined()
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw DeadLetterResendError("cannot write \(temporary): \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            guard written > 0 else {
                throw DeadLetterResendError("cannot write \(temporary): \(String(cString: strerror(errno)))")
            }
            offset += written
        }
        guard fdatasync(fd) == 0, rename(temporary, path) == 0 else {
            throw DeadLetterResendError("cannot write \(path): \(String(cString: strerror(errno)))")
        }
        try Self.syncDirectory((path as NSString).deletingLastPathComponent)
    }

    private static func syncDirectory(_ path: String) throws {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw DeadLetterResendError("cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        guard fsync(fd) == 0 else {
            throw DeadLetterResendError("cannot sync \(path): \(String(cString: strerror(errno)))")
        }
    }

    private static func nowMillis() -> Int64 { Int64(Date().timeIntervalSince1970 * 1000) }
}

package struct DeadLetterResendError: Error, CustomStringConvertible {
    package var description: String
    init(_ description: String) { self.description = description }
}

/// Delivery reports by id, for a producer's `onDelivery`, with a wait for a set of ids.
package final class DeliveryReports: Sendable {
    private let reports = Mutex<[UInt64: DeliveryReport]>([:])

    package init() {}

    package func add(_ reports: [DeliveryReport]) {
        self.reports.withLock { stored in for report in reports { stored[report.id] = report } }
    }

    /// The reports of `ids` that arrived within `timeout` (polled every 20 ms).
    func wait(for ids: Set<UInt64>, timeout: Duration) async -> [UInt64: DeliveryReport] {
        let deadline = ContinuousClock.now + timeout
        while true {
            let arrived = self.reports.withLock { stored in stored.filter { ids.contains($0.key) } }
            if arrived.count == ids.count || ContinuousClock.now >= deadline {
                self.reports.withLock { stored in for id in ids { stored[id] = nil } }
                return arrived
            }
            try? await Task.sleep(for: .milliseconds(20))
        }
    }
}

extension String {
    fileprivate func leftPadded(to length: Int) -> String {
        self.count >= length ? self : String(repeating: "0", count: length - self.count) + self
    }
}
