import AsyncHTTPClient
import Foundation
import LocalClickHouse
import NIOCore
import NIOHTTP1
import Yams

/// The test's copy of the shipped Prometheus configuration (ops/prometheus/prometheus.yml) and
/// rules (ops/prometheus/sluice-rules.yaml), pointed at a test's own processes.
///
/// Only what a test must change is changed, so the shipped files are what is tested:
/// - the targets of the `sluice-gateway` and `sluice-loader` jobs and the Alertmanager address
///   become the test's; the gateway job gets `scheme: https` and the test CA, as the comment in
///   prometheus.yml describes for gateways behind TLS;
/// - the `sluice-gateway-readyz` job is left out: it needs the blackbox exporter, which is not
///   installed here (SluiceGatewayNotReady is covered by the promtool unit tests instead);
/// - every scrape and evaluation interval becomes ``scrapeInterval``;
/// - time is compressed: every `for:`, range selector (`[10m]`) and `offset` in the rules is
///   divided by ``compression`` (with 60, a minute becomes a second). Thresholds and the
///   expressions themselves are not touched. This is the only way the tests shorten `for:`
///   (docs/operations.md, "Testing the rules against a live pipeline").
public struct PrometheusLab: Sendable {
    public var gatewayTargets: [String]
    public var loaderTargets: [String]
    public var alertmanager: String
    /// The CA that signed the gateways' certificate (they are scraped over HTTPS), or nil for HTTP.
    public var gatewayCAFile: String?
    public var scrapeInterval = "1s"
    public var compression = 60

    public init(gatewayTargets: [String], loaderTargets: [String], alertmanager: String, gatewayCAFile: String?) {
        self.gatewayTargets = gatewayTargets
        self.loaderTargets = loaderTargets
        self.alertmanager = alertmanager
        self.gatewayCAFile = gatewayCAFile
    }

    /// Writes `prometheus.yml` and the compressed rules (under the file name the configuration
    /// refers to) into `directory`; returns the configuration's path.
    public func write(config shippedConfig: String, rules shippedRules: String, into directory: String) throws -> String
    {
        guard var config = Self.plain(try Yams.load(yaml: shippedConfig)) as? [String: Any] else {
            throw LocalPrometheusError(message: "the shipped Prometheus configuration is not a YAML mapping")
        }
        var global = config["global"] as? [String: Any] ?? [:]
        global["scrape_interval"] = self.scrapeInterval
        global["scrape_timeout"] = self.scrapeInterval
        global["evaluation_interval"] = self.scrapeInterval
        config["global"] = global
        config["alerting"] = ["alertmanagers": [["static_configs": [["targets": [self.alertmanager]]]]]]
        let ruleFiles = config["rule_files"] as? [String] ?? []
        guard ruleFiles.count == 1 else {
            throw LocalPrometheusError(
                message: "expected one rule file in the shipped configuration, found \(ruleFiles)"
            )
        }
        var jobs: [[String: Any]] = []
        for var job in config["scrape_configs"] as? [[String: Any]] ?? [] {
            let name = job["job_name"] as? String ?? ""
            switch name {
            case "sluice-gateway":
                job["static_configs"] = [["targets": self.gatewayTargets]]
                if let ca = self.gatewayCAFile {
                    job["scheme"] = "https"
                    job["tls_config"] = ["ca_file": ca]
                }
            case "sluice-loader":
                job["static_configs"] = [["targets": self.loaderTargets]]
            case "sluice-gateway-readyz":
                continue
            default:
                throw LocalPrometheusError(
                    message: "the shipped configuration has a job this test does not know: \(name)"
                )
            }
            job["scrape_interval"] = self.scrapeInterval
            job["scrape_timeout"] = self.scrapeInterval
            jobs.append(job)
        }
        guard Set(jobs.compactMap { $0["job_name"] as? String }) == ["sluice-gateway", "sluice-loader"] else {
            throw LocalPrometheusError(
                message: "the shipped configuration lacks the sluice-gateway or sluice-loader job"
            )
        }
        config["scrape_configs"] = jobs
        // JSON is YAML: Prometheus reads it as it is (slashes unescaped: YAML has no `\/`).
        let data = try JSONSerialization.data(
            withJSONObject: config,
            options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        )
        let path = directory + "/prometheus.yml"
        try data.write(to: URL(fileURLWithPath: path))
        try Self.compress(rules: shippedRules, by: self.compression)
            .write(toFile: directory + "/" + ruleFiles[0], atomically: true, encoding: .utf8)
        return path
    }

    /// `rules` with every `for:` duration, range selector and `offset` divided by `factor`.
    public static func compress(rules: String, by factor: Int) throws -> String {
        let pattern = try NSRegularExpression(
            pattern: #"(for:\s*|\[|offset\s+)((?:\d+(?:ms|s|m|h|d|w|y))+)(?=[\]\s)]|$)"#,
            options: [.anchorsMatchLines]
        )
        var result = ""
        var last = rules.startIndex
        for match in pattern.matches(in: rules, range: NSRange(rules.startIndex..., in: rules)) {
            guard let whole = Range(match.range, in: rules), let prefix = Range(match.range(at: 1), in: rules),
                let duration = Range(match.range(at: 2), in: rules),
                let milliseconds = Self.milliseconds(rules[duration])
            else { continue }
            result += rules[last..<whole.lowerBound] + rules[prefix]
            result += "\(max(1, milliseconds / factor))ms"
            last = whole.upperBound
        }
        return result + rules[last...]
    }

    /// A Prometheus duration (`1h30m`, `500ms`) in milliseconds.
    static func milliseconds(_ text: Substring) -> Int? {
        let units: [String: Int] = [
            "ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000, "y": 31_536_000_000,
        ]
        var total = 0
        var number = 0
        var unit = ""
        for character in text + "0" {
            if character.isNumber {
                if !unit.isEmpty {
                    guard let scale = units[unit] else { return nil }
                    total += number * scale
                    number = 0
                    unit = ""
                }
                number = number * 10 + (character.wholeNumberValue ?? 0)
            } else {
                unit.append(character)
            }
        }
        return total
    }

    /// Yams' mappings as `[String: Any]`, so that JSONSerialization takes them.
    static func plain(_ value: Any?) -> Any? {
        switch value {
        case let mapping as [AnyHashable: Any]:
            var result: [String: Any] = [:]
            for (key, element) in mapping { result["\(key)"] = Self.plain(element) }
            return result
        case let mapping as [String: Any]:
            return mapping.mapValues { Self.plain($0) as Any }
        case let sequence as [Any]:
            return sequence.map { Self.plain($0) as Any }
        default:
            return value
        }
    }
}

/// Debian's `prometheus` (or `prometheus-alertmanager`) as a child process on a free loopback
/// port, with its storage in a directory of the test; killed when this goes away.
public final class PrometheusServer: Sendable {
    public let process: ChildProcess
    public let url: String

    /// Whether Debian's prometheus and prometheus-alertmanager are installed (scripts/setup).
    public static var isInstalled: Bool {
        ChildProcess.find("prometheus") != nil && ChildProcess.find("prometheus-alertmanager") != nil
    }

    private init(process: ChildProcess, url: String) {
        self.process = process
        self.url = url
    }

    /// `prometheus --config.file=config`, storage under `directory`; returns once `/-/ready`.
    public static func prometheus(config: String, directory: String) async throws -> PrometheusServer {
        try await self.start(name: "prometheus") { port in
            [
                "--config.file=\(config)", "--storage.tsdb.path=\(directory)/tsdb",
                "--web.listen-address=127.0.0.1:\(port)", "--log.level=warn",
            ]
        }
    }

    /// `prometheus-alertmanager` with one route to a receiver that sends nothing (the test
    /// reads the alerts through the API), grouping nothing so alerts show at once, gossip off
    /// (so that parallel tests do not meet on its default cluster port).
    public static func alertmanager(directory: String) async throws -> PrometheusServer {
        let config = directory + "/alertmanager.yml"
        try """
        route:
          receiver: test
          group_by: [alertname, instance, severity]
          group_wait: 0s
          group_interval: 1s
          repeat_interval: 1h
        receivers:
          - name: test
        """.write(toFile: config, atomically: true, encoding: .utf8)
        return try await self.start(name: "prometheus-alertmanager") { port in
            [
                "--config.file=\(config)", "--storage.path=\(directory)/alertmanager",
                "--web.listen-address=127.0.0.1:\(port)", "--cluster.listen-address=", "--log.level=warn",
            ]
        }
    }

    private static func start(name: String, arguments: (Int) -> [String]) async throws -> PrometheusServer {
        var failures: [String] = []
        // The port is free when chosen but can be taken before the server binds it: try again.
        for _ in 0..<3 {
            let port = try freeLoopbackPorts(1)[0]
            let process = try ChildProcess(executable: name, arguments(port))
            let server = PrometheusServer(process: process, url: "http://127.0.0.1:\(port)")
            do {
                try await waitUntil(timeout: .seconds(30), pollEvery: .milliseconds(100)) {
                    if !process.isRunning { throw LocalPrometheusError(message: "\(name) exited") }
                    return (try? await server.get("/-/ready").status) == .ok
                }
                return server
            } catch {
                process.signal(SIGKILL)
                failures.append("\(error): \(process.standardError.suffix(1500))")
            }
        }
        throw LocalPrometheusError(message: "\(name) did not start: \(failures.joined(separator: "\n"))")
    }

    /// GET `path`: the status and the body.
    public func get(_ path: String) async throws -> (status: HTTPResponseStatus, body: String) {
        let response = try await HTTPClient.shared.execute(
            HTTPClientRequest(url: self.url + path),
            timeout: .seconds(10)
        )
        let body = try await response.body.collect(upTo: 16 << 20)
        return (response.status, String(buffer: body))
    }

    /// GET `path` of Prometheus' API (`{"status":"success","data":…}`): `data`.
    public func data(_ path: String) async throws -> Any {
        let (status, body) = try await self.get(path)
        guard status == .ok, let object = try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any],
            object["status"] as? String == "success", let data = object["data"]
        else { throw LocalPrometheusError(message: "GET \(path): \(status) \(body.prefix(500))") }
        return data
    }

    /// The result of an instant query: each series' labels and value.
    public func query(_ expression: String) async throws -> [(labels: [String: String], value: Double)] {
        let encoded = expression.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? expression
        let data = try await self.data("/api/v1/query?query=\(encoded)") as? [String: Any]
        return (data?["result"] as? [[String: Any]] ?? []).map { series in
            let value = (series["value"] as? [Any])?.last as? String
            return (series["metric"] as? [String: String] ?? [:], value.flatMap(Double.init) ?? .nan)
        }
    }

    /// Every metric name Prometheus holds a series of.
    public func metricNames() async throws -> Set<String> {
        Set(try await self.data("/api/v1/label/__name__/values") as? [String] ?? [])
    }

    /// Prometheus' alerts (`/api/v1/alerts`): name, state (`pending` or `firing`) and labels.
    public func alerts() async throws -> [(name: String, state: String, labels: [String: String])] {
        let data = try await self.data("/api/v1/alerts") as? [String: Any]
        return (data?["alerts"] as? [[String: Any]] ?? []).map { alert in
            let labels = alert["labels"] as? [String: String] ?? [:]
            return (labels["alertname"] ?? "", alert["state"] as? String ?? "", labels)
        }
    }

    /// Alertmanager's active alerts (`/api/v2/alerts`): name and labels. Resolved alerts are
    /// not listed.
    public func alertmanagerAlerts() async throws -> [(name: String, labels: [String: String])] {
        let (status, body) = try await self.get("/api/v2/alerts?active=true")
        guard status == .ok, let alerts = try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [[String: Any]]
        else { throw LocalPrometheusError(message: "GET /api/v2/alerts: \(status) \(body.prefix(500))") }
        return alerts.map { alert in
            let labels = alert["labels"] as? [String: String] ?? [:]
            return (labels["alertname"] ?? "", labels)
        }
    }
}

public struct LocalPrometheusError: Error, CustomStringConvertible {
    public var message: String
    public var description: String { self.message }
}
