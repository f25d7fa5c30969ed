import Foundation
import TestSupport

/// The contract every Sluice log line keeps so that Filebeat → Logstash → Elasticsearch
/// (ops/elk) index it as ECS: the fixture Tests/Fixtures/ecs-subset.json (ECS field names and
/// types) applied to a process's whole output.
///
/// A line breaks the contract when it is not one JSON object, lacks a required field, gives an
/// ECS field a value of another type, uses a name in an ECS field set that ECS does not define
/// (Elasticsearch would map it against the ECS template: a scalar `error` where ECS has the
/// object `error.*` makes the line unindexable), or contains a secret. Across lines, a name
/// may not be a value in one line and an object in another (`clickhouse` and
/// `clickhouse.version`): the second line would be rejected by the index's mapping.
struct ECSContract {
    let version: String
    let required: [String]
    let levels: Set<String>
    let fieldSets: Set<String>
    let fields: [String: String]

    static func load() throws -> ECSContract {
        let path = repositoryRoot().appendingPathComponent("Tests/Fixtures/ecs-subset.json")
        let fixture = try JSONSerialization.jsonObject(with: Data(contentsOf: path)) as? [String: Any] ?? [:]
        return ECSContract(
            version: fixture["ecs_version"] as? String ?? "",
            required: fixture["required"] as? [String] ?? [],
            levels: Set(fixture["log_levels"] as? [String] ?? []),
            fieldSets: Set(fixture["field_sets"] as? [String] ?? []),
            fields: fixture["fields"] as? [String: String] ?? [:]
        )
    }

    /// One process's output, checked.
    struct Report {
        var lines: [[String: Any]] = []
        var problems: [String] = []
        var bytes = 0
    }

    /// Checks every non-empty line of `output` (a process's standard output: its log), and that
    /// none of `secrets` appears anywhere in it or in `errors` (its standard error).
    func check(_ role: String, output: String, errors: String = "", secrets: [String]) -> Report {
        var report = Report()
        var leaves: Set<String> = []
        for line in output.split(separator: "\n") where !line.isEmpty {
            report.bytes += line.utf8.count + 1
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
                report.problems.append("\(role): not a JSON object: \(line.prefix(300))")
                continue
            }
            let flat = Self.flatten(object)
            report.lines.append(flat)
            leaves.formUnion(flat.keys)
            for problem in self.problems(flat) { report.problems.append("\(role): \(problem) in \(line.prefix(400))") }
        }
        for name in leaves.sorted() where leaves.contains(where: { $0.hasPrefix(name + ".") }) {
            report.problems.append("\(role): \(name) is a value in one line and an object in another")
        }
        for secret in secrets where !secret.isEmpty {
            if output.contains(secret) || errors.contains(secret) {
                report.problems.append("\(role): a secret (\(secret.prefix(6))…) appears in the output")
            }
        }
        return report
    }

    /// What is wrong with one line (its fields flattened to dotted names).
    func problems(_ line: [String: Any]) -> [String] {
        var problems: [String] = []
        for name in self.required where line[name] == nil { problems.append("no \(name)") }
        if let level = line["log.level"] as? String, !self.levels.contains(level) {
            problems.append("log.level \(level) is not one of \(self.levels.sorted())")
        }
        if let version = line["ecs.version"] as? String, version != self.version {
            problems.append("ecs.version \(version), expected \(self.version)")
        }
        for (name, value) in line {
            if let type = self.fields[name] {
                if !Self.matches(value, type) { problems.append("\(name) = \(value) is not of ECS type \(type)") }
            } else if let set = name.split(separator: ".").first, self.fieldSets.contains(String(set)) {
                problems.append("\(name) is in the ECS field set \(set) but is not an ECS field")
            }
        }
        return problems
    }

    /// Nested objects as dotted names (`{"http":{"version":"1.1"}}` → `http.version`).
    static func flatten(_ object: [String: Any], prefix: String = "") -> [String: Any] {
        var flat: [String: Any] = [:]
        for (key, value) in object {
            let name = prefix.isEmpty ? key : prefix + "." + key
            if let nested = value as? [String: Any] {
                flat.merge(Self.flatten(nested, prefix: name)) { $1 }
            } else {
                flat[name] = value
            }
        }
        return flat
    }

    /// Whether a JSON value fits an ECS type as Elasticsearch maps it.
    static func matches(_ value: Any, _ type: String) -> Bool {
        switch type {
        case "keyword", "wildcard", "match_only_text", "text":
            return value is String
        case "long":
            guard !(value is String), let number = value as? NSNumber else { return false }
            return number.doubleValue.rounded() == number.doubleValue && "\(number)" != "true" && "\(number)" != "false"
        case "ip":
            guard let text = value as? String else { return false }
            var buffer = [UInt8](repeating: 0, count: 16)
            return inet_pton(AF_INET, text, &buffer) == 1 || inet_pton(AF_INET6, text, &buffer) == 1
        case "date":
            guard let text = value as? String else { return false }
            return text.range(
                of: #"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$"#,
                options: .regularExpression
            ) != nil
        case "boolean":
            return value is Bool
        default:
            return false
        }
    }
}
