import ClickHouse
import Foundation
import Kafka
import LocalClickHouse
import Logging
import ServiceLifecycle
import TestSupport
import Testing

@testable import Loader

/// The loader → ClickHouse path with its security settings: a server certificate the loader
/// does not trust, and a password read from a file.
@Suite(.serialized, .timeLimit(.minutes(4))) struct LoaderClickHouseSecurityTests {
    /// A certificate the configured CA does not vouch for fails every insert; that is retried,
    /// nothing is committed, and once the loader trusts the right CA every event is loaded
    /// exactly once.
    @Test func aWrongCAIsRetriedWithoutACommitAndTheRightOneLoadsEachEventOnce() async throws {
        let cluster = try KafkaMockCluster(brokers: 1)
        try cluster.createTopic("events", partitions: 2)
        try cluster.createTopic("events.dlq", partitions: 1)
        let server = try await ClickHouseServer.start(tls: true)
        defer { server.stop() }
        let trust = try TemporaryDirectory()
        let firstCA = trust.path + "/first.crt"
        try FileManager.default.copyItem(atPath: try #require(server.certificateFile), toPath: firstCA)

        var configuration = LoaderConfiguration(
            kafkaProperties: [
                "bootstrap.servers": cluster.bootstrapServers, "log_level": "0", "session.timeout.ms": "6000",
                "heartbeat.interval.ms": "500",
            ],
            clickHouse: ClickHouseConfiguration(url: try #require(server.httpsURL), caFile: firstCA)
        )
        configuration.batchAge = .milliseconds(100)
        configuration.retryInitial = .milliseconds(100)
        configuration.retryMax = .milliseconds(400)
        let delivered = SharedCount()
        let producer = try KafkaProducer(
            properties: ["bootstrap.servers": cluster.bootstrapServers, "log_level": "0"],
            onDelivery: { delivered.add($0.filter { $0.error == nil }.count) }
        )
        defer { producer.close() }
        func send(_ range: Range<Int>) async throws {
            let before = delivered.value
            for n in range {
                try producer.send(topic: "events", key: Array("k\(n % 5)".utf8), value: eventJSON(n), id: UInt64(n))
            }
            try await waitUntil(timeout: .seconds(30)) { delivered.value == before + range.count }
        }
        let analyst = ClickHouseClient(ClickHouseConfiguration(url: server.httpURL), logger: quietLogger)
        func count(_ sql: String) async throws -> Int {
            Int(try await analyst.query(sql + " FORMAT TabSeparated").trimmingCharacters(in: .whitespacesAndNewlines))
                ?? -1
        }
        func committed() async throws -> Int64 {
            let probe = try KafkaConsumer(properties: [
                "bootstrap.servers": cluster.bootstrapServers, "group.id": configuration.groupID, "log_level": "0",
            ])
            let offsets = try await probe.committed([TopicPartition("events", 0), TopicPartition("events", 1)])
            await probe.close()
            return offsets.values.reduce(0) { $0 + ($1 ?? 0) }
        }
        func run(_ configuration: LoaderConfiguration, logs: CapturedLogs) -> (ServiceGroup, Task<Void, any Error>) {
            let group = ServiceGroup(
                services: [Loader(configuration: configuration, logger: logs.logger)],
                logger: quietLogger
            )
            return (group, Task { try await group.run() })
        }

        let firstLogs = CapturedLogs()
        let (first, firstTask) = run(configuration, logs: firstLogs)
        try await send(0..<300)
        try await waitUntil(timeout: .seconds(60), pollEvery: .milliseconds(100)) { try await committed() == 300 }

        // The server's certificate changes to one of another issuer: the loader's CA is wrong now.
        try await offPool { server.kill() }
        for file in ["server.crt", "server.key"] {
            try FileManager.default.removeItem(atPath: server.directory + "/" + file)
        }
        let reissue = try await ChildProcess.run(
            "openssl",
            [
                "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout",
                server.directory + "/server.key", "-out", server.directory + "/server.crt",
            ],
            errorsToOutput: true
        )
        try #require(reissue.status == 0, "\(reissue.standardOutput)")
        let serverPorts = server.reservePorts()  // Nobody else's while it restarts.
        defer { withExtendedLifetime(serverPorts) {} }
        try await server.restart()
        try await send(300..<600)
        try await waitUntil(timeout: .seconds(60), pollEvery: .milliseconds(100)) {
            firstLogs.entries.filter { $0.message == "loader.insert_failed" }.count >= 3
        }
        let failure = try #require(firstLogs.entries.last { $0.message == "loader.insert_failed" })
        #expect(failure.metadata["error"]?.description.contains("CERTIFICATE_VERIFY_FAILED") == true, "\(failure)")
        #expect(try await committed() == 300)
        #expect(try await count("SELECT count() FROM sluice.events") == 300)
        await first.triggerGracefulShutdown()
        try await firstTask.value
        #expect(try await committed() == 300, "nothing committed past what was inserted")

        // Fixed: the loader trusts the new certificate's issuer.
        configuration.clickHouse.caFile = server.certificateFile
        let secondLogs = CapturedLogs()
        let (second, secondTask) = run(configuration, logs: secondLogs)
        try await waitUntil(timeout: .seconds(60), pollEvery: .milliseconds(100)) { try await committed() == 600 }
        await second.triggerGracefulShutdown()
        try await secondTask.value
        // Exactly once: no row was written by a failed insert, none twice.
        #expect(try await count("SELECT count() FROM sluice.events") == 600)
        #expect(try await count("SELECT uniqExact(event_id) FROM sluice.events") == 600)
        try await analyst.shutdown()
    }

    /// `clickhouse.password_file` end to end: `sluice loader` reads the password from the file
    /// and ClickHouse lets it in; a wrong one in the file is refused, and nothing is loaded.
    @Test func theLoaderAuthenticatesWithAPasswordFromAFile() async throws {
        let cluster = try KafkaMockCluster(brokers: 1)
        try cluster.createTopic("events", partitions: 1)
        try cluster.createTopic("events.dlq", partitions: 1)
        let server = try await ClickHouseServer.start(users: ["sluice": "from-a-file-NEVER-PRINTED"])
        defer { server.stop() }
        let directory = try TemporaryDirectory()
        func passwordFile(_ name: String, _ password: String) throws -> String {
            let path = directory.path + "/" + name
            try Data((password + "\n").utf8).write(to: URL(fileURLWithPath: path))
            try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: path)
            return path
        }
        let delivered = SharedCount()
        let producer = try KafkaProducer(
            properties: ["bootstrap.servers": cluster.bootstrapServers, "log_level": "0"],
            onDelivery: { delivered.add($0.filter { $0.error == nil }.count) }
        )
        for n in 0..<100 { try producer.send(topic: "events", key: nil, value: eventJSON(n), id: UInt64(n)) }
        try await waitUntil(timeout: .seconds(30)) { delivered.value == 100 }
        producer.close()
        let analyst = ClickHouseClient(ClickHouseConfiguration(url: server.httpURL), logger: quietLogger)
        func loaded() async -> Int {
            Int(
                (try? await analyst.query("SELECT count() FROM sluice.events FORMAT TabSeparated"))?
                    .trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
            ) ?? 0
        }
        func loader(_ file: String) throws -> SluiceProcess {
            try SluiceProcess(
                ["loader", "--kafka-bootstrap", cluster.bootstrapServers, "--clickhouse-url", server.httpURL],
                environment: [
                    "SLUICE_CLICKHOUSE_USER": "sluice", "SLUICE_CLICKHOUSE_PASSWORD_FILE": file,
                    "SLUICE_LOADER_RETRY_MAX": "500ms", "SLUICE_LOADER_BATCH_AGE": "100ms",
                ]
            )
        }

        let wrong = try loader(try passwordFile("wrong", "not-the-password"))
        try await waitUntil(timeout: .seconds(30), pollEvery: .milliseconds(100)) {
            wrong.standardOutput.contains("loader.clickhouse_unavailable")
                || wrong.standardError.contains("loader.clickhouse_unavailable")
        }
        let output = wrong.standardOutput + wrong.standardError
        #expect(
            output.contains("sluice") && (output.contains("password") || output.contains("Authentication")),
            "\(output.suffix(2000))"
        )
        _ = try await wrong.stop(SIGTERM)
        #expect(await loaded() == 0)

        let right = try loader(try passwordFile("right", "from-a-file-NEVER-PRINTED"))
        try await waitUntil(timeout: .seconds(60), pollEvery: .milliseconds(200)) { await loaded() == 100 }
        let status = try await right.stop(SIGTERM)
        #expect(status == 0, "\(right.standardError.suffix(2000))")
        #expect(!(right.standardOutput + right.standardError + output).contains("from-a-file-NEVER-PRINTED"))
        try await analyst.shutdown()
    }
}
