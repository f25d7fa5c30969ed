import EventModel
import Foundation
import Gateway
import Kafka
import LocalClickHouse
import TestSupport
import Testing

@Suite(.serialized, .timeLimit(.minutes(10))) struct SegmentSDKTests {
    /// Whether python3 can import both SDKs (scripts/setup installs them).
    static var sdksInstalled: Bool {
        guard let python = ChildProcess.find("python3") else { return false }
        let check = try? ChildProcess.runBlocking(
            python,
            ["-c", "import segment.analytics, rudderstack.analytics"],
            timeout: .seconds(60)
        )
        return check?.status == 0
    }

    /// What one line of Tests/Segment/send.py says it sent.
    struct Sent: Decodable {
        var sent: String
        var messageId: String
        var userId: String?
        var anonymousId: String?
        var timestamp_ms: Int64
        var action: String
        var page: String?
    }

    /// The Segment and RudderStack Python SDKs from PyPI, unchanged, pointed at `sluice gateway`
    /// (HTTPS with a test CA, a secret key as the write key) with its forwarder, a Kafka and
    /// `sluice loader` into ClickHouse. Each sends track, page, identify, a retried message whose
    /// messageId is not a UUID, and 200 tracks in batches, with its clock an hour slow. Every
    /// message arrives exactly once under the event id the mapping gives its messageId, with its
    /// user and anonymous ids, and at the real time (the skew corrected from `sentAt`).
    @Test func theSegmentAndRudderStackSDKsDeliverEveryMessageOnce() async throws {
        try #require(
            Self.sdksInstalled,
            "segment-analytics-python and rudder-sdk-python are not installed (scripts/setup installs them): CI requires them"
        )
        let cluster = try KafkaMockCluster(brokers: 1)
        try cluster.createTopic("events", partitions: 2)
        let clickHouse = try await ClickHouseServer.start()
        defer { clickHouse.stop() }
        let state = try TemporaryDirectory()
        let door = try await FrontDoor.make(in: state.path)
        let environment = ["SLUICE_KAFKA_PROPERTIES_LOG__LEVEL": "2", "SLUICE_LOGGING_LEVEL": "warning"]
            .merging(door.environment) { $1 }
        let gateway = try SluiceProcess(
            [
                "gateway", "--listen", "127.0.0.1:0", "--wal-dir", state.path + "/wal",
                "--kafka-bootstrap", cluster.bootstrapServers,
            ],
            environment: environment
        )
        let port = try await gateway.listeningPort()
        let loader = try SluiceProcess(
            ["loader", "--kafka-bootstrap", cluster.bootstrapServers, "--clickhouse-url", clickHouse.httpURL],
            environment: environment.merging(["SLUICE_LOADER_BATCH_AGE": "250ms"]) { $1 }
        )
        let analyst = Analyst(url: clickHouse.httpURL)
        let script = repositoryRoot().appendingPathComponent("Tests/Segment/send.py").path

        var expected: [String: Sent] = [:]
        for sdk in ["segment", "rudder"] {
            let run = try await ChildProcess.run(
                "python3",
                [script, sdk, "https://127.0.0.1:\(port)", door.key],
                environment: ["REQUESTS_CA_BUNDLE": door.caFile],
                timeout: .seconds(180)
            )
            #expect(run.status == 0, "\(sdk): \(run.standardOutput.suffix(2000)) \(run.standardError.suffix(2000))")
            #expect(run.standardOutput.contains("\"done\": true"), "\(sdk) did not finish")
            // The key never travels further than the check.
            #expect(!gateway.standardOutput.contains(door.key) && !gateway.standardError.contains(door.key))
            for line in run.standardOutput.split(separator: "\n") where line.contains("\"sent\"") {
                let sent = try JSONDecoder().decode(Sent.self, from: Data(line.utf8))
                let id =
                    UUIDText.normalize(sent.messageId)
                    ?? SegmentMapping.derivedEventID(messageID: sent.messageId, source: "key:e2e")
                #expect(expected.updateValue(sent, forKey: id) == nil, "\(sdk) sent \(sent.messageId) twice in the log")
            }
        }
        #expect(expected.count == 2 * 204)

        let wanted = Set(expected.keys)
        var loaded: Set<String> = []
        do {
            try await waitUntil(timeout: .seconds(120), pollEvery: .milliseconds(500)) {
                loaded = await analyst.eventIDs()
                return wanted.isSubset(of: loaded)
            }
        } catch {
            Issue.record(
                "missing \(wanted.subtracting(loaded).count) events\nloader: \(loader.standardOutput.suffix(3000))"
            )
        }
        #expect(loaded == wanted, "not sent by the SDKs: \(loaded.subtracting(wanted).prefix(5))")
        let rows = try await analyst.rows(
            """
            SELECT event_id, action, user_id, anonymous_id, toUnixTimestamp(timestamp), page, device, is_bot, count(),
                toUnixTimestamp(sent_at)
            FROM sluice.events FINAL
            GROUP BY event_id, action, user_id, anonymous_id, timestamp, page, device, is_bot, sent_at
            """
        )
        #expect(rows.count == wanted.count)
        for row in rows {
            let cells = row.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            try #require(cells.count == 10, "\(row)")
            guard let sent = expected[cells[0]] else { continue }
            #expect(cells[8] == "1", "\(cells[0]) is stored \(cells[8]) times")
            #expect(cells[1] == sent.action)
            #expect(cells[2] == (sent.userId ?? ""))
            #expect(cells[3] == (sent.anonymousId ?? ""))
            // ClickHouse 18.16 stores seconds; the SDK's clock was an hour slow.
            let stored = try #require(Int64(cells[4]))
            #expect(
                abs(stored - sent.timestamp_ms / 1000) <= 30,
                "\(sent.messageId): \(stored) vs \(sent.timestamp_ms)"
            )
            // sent_at is stored as the SDK sent it: by its clock, an hour slow.
            let sentAt = try #require(Int64(cells[9]))
            #expect(abs(sentAt - (sent.timestamp_ms / 1000 - 3600)) <= 60, "\(sent.messageId): sent_at \(sentAt)")
            if let page = sent.page { #expect(cells[5] == page) }
            if sent.page != nil { #expect(cells[6] == "mobile" && cells[7] == "0", "\(row)") }
        }

        for process in [gateway, loader] { process.signal(SIGTERM) }
        #expect(try await gateway.waitForExit() == 0)
        #expect(try await loader.waitForExit() == 0)
        await analyst.shutdown()
        withExtendedLifetime(cluster) {}
    }
}
