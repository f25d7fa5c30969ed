import AsyncHTTPClient
import Foundation
import Kafka
import NIOCore
import TestSupport
import Testing

/// The ECS contract (``ECSContract``, Tests/Fixtures/ecs-subset.json) on the real processes'
/// logs: every line of the gateway (access and application lines, its forwarder's), of a
/// loader that cannot reach ClickHouse, and of the WAL tools.
@Suite(.timeLimit(.minutes(3))) struct ECSLogTests {
    /// Requests sent from chosen loopback addresses: 127.0.0.2 is the trusted proxy, 127.0.0.3
    /// a client. The access log's `client.ip` believes `X-Forwarded-For` only from the proxy,
    /// its `event.duration` is the time the server measured (the request-duration histogram
    /// grows by exactly that much) and no longer than the client waited, numbers stay numbers
    /// and identifiers strings, and neither the API key, a rejected key nor the ClickHouse
    /// password appears anywhere.
    @Test func everyLogLineOfEveryRoleIsECSAndTellsTheTruth() async throws {
        let cluster = try KafkaMockCluster(brokers: 1)
        try cluster.createTopic("events", partitions: 1)
        let state = try TemporaryDirectory()
        let keys = try await ChildProcess.runSluice([
            "keys", "create", "ecs", "--kind", "secret", "--file", state.path + "/keys.json",
        ])
        let key = try #require(
            keys.standardOutput.split(whereSeparator: \.isWhitespace).first { $0.hasPrefix("slk_") }.map(String.init),
            "\(keys.standardOutput)\(keys.standardError)"
        )
        let gateway = try SluiceProcess(
            [
                "gateway", "--listen", "127.0.0.1:0", "--wal-dir", state.path + "/wal",
                "--kafka-bootstrap", cluster.bootstrapServers,
            ],
            environment: [
                "SLUICE_AUTH_API_KEYS_FILE": state.path + "/keys.json",
                "SLUICE_GATEWAY_TRUSTED_PROXIES": "127.0.0.2",
                "SLUICE_LOGGING_LEVEL": "info",
                "SLUICE_KAFKA_PROPERTIES_LOG__LEVEL": "3",
            ]
        )
        let port = try await gateway.listeningPort()
        let rawKey = String(key)
        let wrongKey = "slk_" + String(repeating: "x", count: 40)
        let event = #"{"action":"click","user_id":"u1"}"#

        func send(
            from source: String,
            forwardedFor: String?,
            requestID: String,
            authorization: String,
            path: String = "/v1/events"
        ) async throws -> RawExchange {
            var headers = ["Authorization: \(authorization)", "X-Request-Id: \(requestID)", "User-Agent: ecs-test/1.0"]
            if let forwardedFor { headers.append("X-Forwarded-For: \(forwardedFor)") }
            return try await RawExchange.send(
                from: source,
                port: port,
                request: "POST \(path) HTTP/1.1",
                headers: headers + ["Content-Type: application/json"],
                body: event
            )
        }
        func durationSum() async throws -> Double {
            let response = try await HTTPClient.shared.execute(
                HTTPClientRequest(url: "http://127.0.0.1:\(port)/metrics"),
                timeout: .seconds(30)
            )
            let exposition = String(buffer: try await response.body.collect(upTo: 16 << 20))
            let line = exposition.split(separator: "\n").first {
                $0.hasPrefix("sluice_http_request_duration_seconds_sum{") && $0.contains(#"route="/v1/events""#)
            }
            return line.flatMap { Double($0.split(separator: " ").last ?? "") } ?? 0
        }

        // Each request alone, so that the histogram's growth is that request's time.
        var timings: [String: (server: Double, client: Duration)] = [:]
        let cases: [(id: String, source: String, forwardedFor: String?, expected: String)] = [
            ("4711", "127.0.0.2", "203.0.113.7", "203.0.113.7"),
            ("req-untrusted", "127.0.0.3", "198.51.100.9", "127.0.0.3"),
            ("req-chain", "127.0.0.2", "198.51.100.1, 203.0.113.8, 127.0.0.2", "203.0.113.8"),
            ("req-none", "127.0.0.2", nil, "127.0.0.2"),
        ]
        for exchange in cases {
            let before = try await durationSum()
            let answer = try await send(
                from: exchange.source,
                forwardedFor: exchange.forwardedFor,
                requestID: exchange.id,
                authorization: "Bearer \(rawKey)"
            )
            #expect(answer.status == 202, "\(answer.head)")
            let after = try await durationSum()
            timings[exchange.id] = (after - before, answer.elapsed)
        }
        let refused = try await send(
            from: "127.0.0.3",
            forwardedFor: nil,
            requestID: "req-wrong-key",
            authorization: "Bearer \(wrongKey)"
        )
        #expect(refused.status == 401)
        let pixel = try await send(
            from: "127.0.0.3",
            forwardedFor: nil,
            requestID: "req-query",
            authorization: "Bearer \(rawKey)",
            path: "/v1/events?writeKey=\(wrongKey)&page=home"
        )

        // A loader whose ClickHouse does not answer logs its retries, never its password.
        let password = "pw-" + EventPoster.freshID()
        let loader = try SluiceProcess(
            ["loader", "--kafka-bootstrap", cluster.bootstrapServers, "--clickhouse-url", "http://127.0.0.1:1"],
            environment: [
                "SLUICE_CLICKHOUSE_PASSWORD": password, "SLUICE_LOGGING_LEVEL": "info",
                "SLUICE_KAFKA_PROPERTIES_LOG__LEVEL": "3", "SLUICE_LOADER_RETRY_MAX": "200ms",
            ]
        )
        _ = try await loader.line(containing: "loader.clickhouse_unavailable", timeout: .seconds(30))
        loader.signal(SIGTERM)
        gateway.signal(SIGTERM)
        #expect(try await gateway.waitForExit() == 0)
        _ = try await loader.waitForExit()
        var tools: [(String, ChildProcess.Completion)] = []
        for command in [["wal", "stat", state.path + "/wal"], ["wal", "verify", state.path + "/wal"]] {
            tools.append((command.joined(separator: " "), try await ChildProcess.runSluice(command)))
        }

        let contract = try ECSContract.load()
        let secrets = [rawKey, wrongKey, password]
        let access = contract.check(
            "gateway",
            output: gateway.standardOutput,
            errors: gateway.standardError,
            secrets: secrets
        )
        #expect(access.problems.isEmpty, "\(access.problems.prefix(20).joined(separator: "\n"))")
        let loaderReport = contract.check(
            "loader",
            output: loader.standardOutput,
            errors: loader.standardError,
            secrets: secrets
        )
        #expect(loaderReport.problems.isEmpty, "\(loaderReport.problems.prefix(20).joined(separator: "\n"))")
        #expect(loaderReport.lines.contains { $0["message"] as? String == "loader.clickhouse_unavailable" })
        for (command, run) in tools {
            #expect(run.status == 0, "\(command): \(run.standardError)")
            // Their standard output is the answer; whatever they log goes to standard error.
            let report = contract.check(command, output: run.standardError, secrets: secrets)
            #expect(report.problems.isEmpty, "\(report.problems.joined(separator: "\n"))")
        }

        let requests = access.lines.filter { $0["message"] as? String == "request" }
        func line(_ id: String) -> [String: Any]? { requests.first { $0["http.request.id"] as? String == id } }
        for exchange in cases {
            let entry = try #require(line(exchange.id), "no access-log line for \(exchange.id)")
            #expect(entry["client.ip"] as? String == exchange.expected, "\(exchange.id): \(entry)")
            #expect(entry["http.response.status_code"] as? Int == 202)
            #expect(entry["url.path"] as? String == "/v1/events")
            let nanos = try #require(entry["event.duration"] as? Int, "\(entry)")
            let timing = try #require(timings[exchange.id])
            let serverNanos = timing.server * 1e9
            // The histogram's sum is printed with limited precision: within 1 µs or 0.1 %.
            #expect(
                abs(Double(nanos) - serverNanos) <= max(1_000, serverNanos / 1_000),
                "\(exchange.id): event.duration \(nanos) ns, the histogram grew by \(serverNanos) ns"
            )
            #expect(nanos > 0 && Duration.nanoseconds(nanos) <= timing.client, "\(exchange.id): \(nanos) ns")
        }
        // An all-digit request id stays a string (ECS keyword), the status a number.
        #expect(line("4711")?["http.request.id"] as? String == "4711")
        let wrong = try #require(line("req-wrong-key"))
        #expect(wrong["http.response.status_code"] as? Int == 401)
        if let query = line("req-query")?["url.query"] as? String {
            #expect(query.contains("writeKey=REDACTED"), "\(query); answer \(pixel.status)")
        }
        // Figure: the access log's bytes per request (docs/performance.md).
        let accessBytes = requests.map { (try? JSONSerialization.data(withJSONObject: $0).count) ?? 0 }
        let lineBytes = gateway.standardOutput.split(separator: "\n").filter { $0.contains(#""message":"request""#) }
            .map { $0.utf8.count + 1 }
        let perRequest = Double(lineBytes.reduce(0, +)) / Double(max(1, lineBytes.count))
        print(
            """
            ecs: gateway \(access.lines.count) lines (\(requests.count) access lines, \(String(format: "%.0f", perRequest)) \
            bytes each on average, \(accessBytes.max() ?? 0) at most), loader \(loaderReport.lines.count) lines; \
            at 1,000 requests/s: \(String(format: "%.1f", perRequest * 1000 * 86400 / 1e9)) GB/day, at 40×: \
            \(String(format: "%.0f", perRequest * 40_000 * 86400 / 1e9)) GB/day
            """
        )
        withExtendedLifetime(cluster) {}
    }
}

/// One HTTP/1.1 exchange over a plain socket bound to a chosen local address (so that the
/// gateway sees that peer), `Connection: close`, read to the end.
struct RawExchange {
    var status: Int
    var head: String
    var body: String
    var elapsed: Duration

    static func send(
        from source: String,
        port: Int,
        request: String,
        headers: [String],
        body: String?
    ) async throws
        -> RawExchange
    {
        var text = request + "\r\nHost: 127.0.0.1:\(port)\r\nConnection: close\r\n"
        for header in headers { text += header + "\r\n" }
        if let body { text += "Content-Length: \(body.utf8.count)\r\n" }
        text += "\r\n" + (body ?? "")
        let bytes = Array(text.utf8)
        return try await offPool {
            let socket = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard socket >= 0 else { throw FrontDoorError(message: "socket: errno \(errno)") }
            defer { close(socket) }
            var timeout = timeval(tv_sec: 30, tv_usec: 0)
            setsockopt(socket, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            func address(_ host: String, _ port: Int) -> sockaddr_in {
                var address = sockaddr_in()
                address.sin_family = sa_family_t(AF_INET)
                address.sin_port = in_port_t(UInt16(port).bigEndian)
                inet_pton(AF_INET, host, &address.sin_addr)
                return address
            }
            var local = address(source, 0)
            var remote = address("127.0.0.1", port)
            let size = socklen_t(MemoryLayout<sockaddr_in>.size)
            guard
                withUnsafePointer(
                    to: &local,
                    { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(socket, $0, size) } }
                ) == 0
            else { throw FrontDoorError(message: "bind \(source): errno \(errno)") }
            let started = ContinuousClock.now
            guard
                withUnsafePointer(
                    to: &remote,
                    { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(socket, $0, size) } }
                ) == 0
            else { throw FrontDoorError(message: "connect: errno \(errno)") }
            var sent = 0
            while sent < bytes.count {
                let count = bytes[sent...].withUnsafeBytes { Glibc.write(socket, $0.baseAddress, $0.count) }
                guard count > 0 else { throw FrontDoorError(message: "write: errno \(errno)") }
                sent += count
            }
            var answer: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let count = buffer.withUnsafeMutableBytes { Glibc.read(socket, $0.baseAddress, $0.count) }
                if count > 0 {
                    answer += buffer[0..<count]
                } else if count < 0 && errno == EINTR {
                    continue
                } else {
                    break
                }
            }
            let elapsed = ContinuousClock.now - started
            let response = String(decoding: answer, as: UTF8.self)
            let parts = response.components(separatedBy: "\r\n\r\n")
            let head = parts.first ?? ""
            let status = Int(head.split(separator: " ").dropFirst().first ?? "") ?? 0
            return RawExchange(
                status: status,
                head: head,
                body: parts.dropFirst().joined(separator: "\r\n\r\n"),
                elapsed: elapsed
            )
        }
    }
}
