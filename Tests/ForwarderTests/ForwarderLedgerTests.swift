import Foundation
@_spi(Testing) import Kafka
import Ledger
import ServiceLifecycle
import Synchronization
import TestSupport
import Testing
@_spi(Testing) import WAL

@testable import Forwarder

/// Keeps what the forwarder hands the ledger.
final class CollectedRecords: LedgerSink {
    private let records = Mutex<[LedgerRecord]>([])

    func record(_ record: LedgerRecord) { self.records.withLock { $0.append(record) } }

    var all: [LedgerRecord] { self.records.withLock { $0 } }

    var forwarded: [LedgerRecord.Forwarded] {
        self.all.compactMap {
            if case .forwarded(let record) = $0 { return record }
            return nil
        }
    }

    var accepted: [LedgerRecord.Accepted] {
        self.all.compactMap {
            if case .accepted(let record) = $0 { return record }
            return nil
        }
    }
}

@Suite(.timeLimit(.minutes(2))) struct ForwarderLedgerTests {
    /// A forwarder over a WAL, with the ledger on, into a 3-broker mock cluster.
    struct Setup {
        let directory: TemporaryDirectory
        let wal: WAL
        let cluster: KafkaMockCluster
        let sink = CollectedRecords()

        init() async throws {
            self.directory = try TemporaryDirectory()
            var configuration = WALConfiguration(directory: self.directory.path + "/wal")
            configuration.segmentBytes = 256 << 10
            configuration.budget = DiskBudget(maxBytes: 1 << 40, minFreeBytes: 0)
            self.wal = try await WAL.openAndStart(configuration, logger: quietLogger)
            self.cluster = try KafkaMockCluster(brokers: 3)
            try self.cluster.createTopic("events", partitions: 4)
        }

        func forwarder(maxInFlight: Int = 100_000, cursor: String = "forwarder") -> Forwarder {
            var forwarding = ForwarderConfiguration(
                kafkaProperties: ["bootstrap.servers": self.cluster.bootstrapServers, "log_level": "0"]
            )
            forwarding.commitInterval = .milliseconds(50)
            forwarding.maxInFlightEvents = maxInFlight
            forwarding.ledger = self.sink
            forwarding.gatewayID = "gw-ledger"
            forwarding.cursorName = cursor
            return Forwarder(wal: self.wal, configuration: forwarding, logger: quietLogger)
        }

        /// Runs `forwarder` until the cursor reached the WAL's end, then stops it.
        func forward(with forwarder: Forwarder, cursor: String = "forwarder") async throws {
            let group = ServiceGroup(services: [forwarder], logger: quietLogger)
            let task = Task { try await group.run() }
            let end = self.wal.durableNextLSN
            try await waitUntil(timeout: .seconds(30)) {
                (self.wal.cursor(cursor)?.lsn ?? .zero) >= end
                    && (self.sink.forwarded.last.map { $0.to >= end.rawValue } ?? false)
            }
            await group.triggerGracefulShutdown()
            try await task.value
        }

        /// Where kcat finds each message: wal_lsn → (partition, offset), every copy.
        func placements() async throws -> [UInt64: [(partition: Int32, offset: Int64)]] {
            let kcat = try await ChildProcess.run(
                "/usr/bin/kcat",
                [
                    "-C", "-b", self.cluster.bootstrapServers, "-t", "events", "-o", "beginning", "-e", "-q", "-f",
                    "%p\t%o\t%h\n",
                ]
            )
            #expect(kcat.status == 0, "\(kcat.standardError)")
            var found: [UInt64: [(partition: Int32, offset: Int64)]] = [:]
            for line in kcat.standardOutput.split(separator: "\n") {
                let parts = line.split(separator: "\t")
                guard parts.count == 3, let partition = Int32(parts[0]), let offset = Int64(parts[1]) else { continue }
                for header in parts[2].split(separator: ",") where header.hasPrefix("wal_lsn=") {
                    if let lsn = UInt64(header.dropFirst("wal_lsn=".count)) {
                        found[lsn, default: []].append((partition, offset))
                    }
                }
            }
            return found
        }
    }

    @Test func theLedgerPlacesEveryEventWhereKafkaHasIt() async throws {
        let setup = try await Setup()
        _ = try await Prefill(wal: setup.wal).append(600)
        try await setup.forward(with: setup.forwarder(maxInFlight: 50))
        let end = setup.wal.durableNextLSN.rawValue

        // Accepted and forwarded ranges follow each other without gaps from 0 to the end.
        var next: UInt64 = 0
        for record in setup.sink.forwarded {
            // The identity names the gateway the events carry ("gw"), not the configured id.
            #expect(record.gateway == "gw")
            #expect(record.from == next, "forwarded ranges must be contiguous")
            next = record.to
        }
        #expect(next == end)
        #expect(setup.sink.accepted.first?.from == 0)
        #expect(setup.sink.accepted.last?.to == end)
        #expect(setup.sink.forwarded.count > 1, "a cap of 50 in flight makes several records")

        // Each event is placed exactly once, and exactly where kcat finds it.
        var placed: [UInt64: (partition: Int32, offset: Int64)] = [:]
        for record in setup.sink.forwarded {
            for placement in record.placements {
                #expect(placement.topic == "events")
                for pair in placement.pairs {
                    #expect(pair.lsn >= record.from && pair.lsn < record.to)
                    #expect(placed.updateValue((placement.partition, pair.offset), forKey: pair.lsn) == nil)
                }
            }
        }
        #expect(placed.count == 600)
        let kafka = try await setup.placements()
        for (lsn, place) in placed {
            let copies = kafka[lsn] ?? []
            #expect(copies.count == 1)
            #expect(copies.first?.partition == place.partition && copies.first?.offset == place.offset)
        }
        await setup.wal.close()
    }

    @Test func aRestartedForwarderRecordsWhatItSendsAgain() async throws {
        let setup = try await Setup()
        _ = try await Prefill(wal: setup.wal).append(200)
        try await setup.forward(with: setup.forwarder())
        let first = setup.sink.forwarded.count
        // A forwarder whose cursor is behind (here a second cursor at the start, as after a
        // crash before the cursor commit) sends the range again: it is recorded again, with
        // its new offsets, and the first records stay true.
        _ = try await Prefill(wal: setup.wal).append(50, from: 200)
        try await setup.forward(with: setup.forwarder(cursor: "again"), cursor: "again")
        let again = setup.sink.forwarded[first...]
        #expect(again.first?.from == 0)
        let lsns = again.flatMap { $0.placements.flatMap { $0.pairs.map(\.lsn) } }
        #expect(lsns.count == 250)
        #expect(Set(lsns) == Set(0..<setup.wal.durableNextLSN.rawValue))
        let kafka = try await setup.placements()
        for lsn in 0..<UInt64(200) { #expect(kafka[lsn]?.count == 2, "sent twice: \(lsn)") }
        let firstPlaces = Set(
            setup.sink.forwarded[..<first].flatMap { record in
                record.placements.flatMap { placement in placement.pairs.map { "\(placement.partition)/\($0.offset)" } }
            }
        )
        let secondPlaces = Set(
            again.flatMap { record in
                record.placements.flatMap { placement in placement.pairs.map { "\(placement.partition)/\($0.offset)" } }
            }
        )
        #expect(firstPlaces.isDisjoint(with: secondPlaces))
        await setup.wal.close()
    }
}
