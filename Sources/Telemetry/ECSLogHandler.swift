import EventModel
import Logging

#if canImport(Glibc)
import Glibc
#endif

/// A swift-log handler writing one JSON object per line in Elastic Common Schema field names
/// (`@timestamp`, `log.level`, `message`, `log.logger`, plus the metadata as given), for ELK.
///
/// Each line is written with a single `write(2)`, so lines from concurrent tasks do not
/// interleave.
public struct ECSLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level
    public var metadataProvider: Logger.MetadataProvider?
    private let label: String
    private let fileDescriptor: Int32
    private let serviceName: String

    public init(label: String, level: Logger.Level = .info, serviceName: String = "sluice", fileDescriptor: Int32 = 1) {
        self.label = label
        self.logLevel = level
        self.serviceName = serviceName
        self.fileDescriptor = fileDescriptor
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { self.metadata[key] }
        set { self.metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var writer = JSONWriter(capacity: 384)
        writer.raw("{")
        writer.member("@timestamp", Timestamp.format(millis: Timestamp.nowMillis()), first: true)
        writer.member("log.level", Self.level(event.level))
        writer.member("message", "\(event.message)")
        writer.member("ecs.version", Self.ecsVersion)
        writer.member("log.logger", self.label)
        writer.member("service.name", self.serviceName)
        // The common case — no handler or provider metadata — writes the event's own without
        // copying it into a merged dictionary first.
        let provided = self.metadataProvider?.get()
        var merged: Logger.Metadata
        if self.metadata.isEmpty && provided?.isEmpty != false {
            merged = event.metadata ?? [:]
        } else {
            merged = self.metadata
            if let provided { merged.merge(provided) { $1 } }
            if let extra = event.metadata { merged.merge(extra) { $1 } }
        }
        for (key, value) in merged {
            let (name, isText) = Self.field(key)
            writer.raw(",")
            writer.string(name)
            writer.raw(":")
            if isText, case .string(let text) = value {
                writer.string(text)
            } else {
                Self.write(value, into: &writer)
            }
        }
        if event.level >= .error { writer.member("log.origin.file.name", "\(event.file):\(event.line)") }
        writer.raw("}\n")
        let bytes = writer.bytes
        _ = bytes.withUnsafeBytes { Glibc.write(self.fileDescriptor, $0.baseAddress, $0.count) }
    }

    /// The ECS version whose field names and types the lines follow (ecs-logging requires
    /// `ecs.version` on every line; Elasticsearch's ECS templates key on it).
    static let ecsVersion = "8.11.0"

    /// The ECS field sets (top-level names): a metadata key under one of them must be an ECS
    /// field, or Elasticsearch maps it against the ECS template (a scalar `error` where ECS has
    /// the object `error.*` makes the whole line unindexable).
    static let ecsNamespaces: Set<Substring> = [
        "agent", "client", "cloud", "container", "data_stream", "destination", "dns", "ecs", "error", "event",
        "file", "group", "host", "http", "log", "network", "observer", "orchestrator", "process", "related",
        "server", "service", "source", "span", "tls", "trace", "transaction", "url", "user", "user_agent",
    ]

    /// The ECS fields Sluice writes (ECS 8.11, `generated/csv/fields.csv`), with whether their
    /// type is a string (keyword, text, wildcard, ip, date): their values stay JSON strings even
    /// when they look like numbers (an `X-Request-Id: 4711` is a keyword, not a long).
    static let ecsFields: [String: Bool] = [
        "client.ip": true, "error.message": true, "error.type": true, "event.dataset": true,
        "event.duration": false, "event.reason": true, "file.path": true, "http.request.body.bytes": false,
        "http.request.id": true, "http.request.method": true, "http.response.body.bytes": false,
        "http.response.status_code": false, "log.origin.file.name": true, "process.exit_code": false,
        "server.address": true, "server.port": false, "tls.server.not_after": true,
        "tls.server.x509.serial_number": true, "url.full": true, "url.path": true, "url.query": true,
        "user.id": true, "user.name": true, "user_agent.original": true,
    ]

    /// The name a metadata key is written under: `error` (a description, logged that way
    /// throughout) becomes ECS's `error.message`; a key in an ECS field set that ECS does not
    /// define (`tls.listener`) moves to Sluice's own namespace, `sluice.tls.listener`, as ECS
    /// advises for custom fields. Everything else is written as given.
    static func fieldName(_ key: String) -> String { Self.field(key).name }

    /// ``fieldName(_:)``, and whether the field's ECS type is a string: one hash of the key
    /// for the ECS fields, no allocation for any key.
    static func field(_ key: String) -> (name: String, isText: Bool) {
        if let isText = Self.ecsFields[key] { return (key, isText) }
        if key == "error" { return ("error.message", true) }
        let namespace = key.utf8.firstIndex(of: UInt8(ascii: ".")).map { key[..<$0] } ?? Substring(key)
        guard Self.ecsNamespaces.contains(namespace) else { return (key, false) }
        return ("sluice." + key, false)
    }

    static func level(_ level: Logger.Level) -> String {
        switch level {
        case .trace: "trace"
        case .debug: "debug"
        case .info: "info"
        case .notice: "notice"
        case .warning: "warn"
        case .error: "error"
        case .critical: "critical"
        }
    }

    static func write(_ value: Logger.Metadata.Value, into writer: inout JSONWriter) {
        switch value {
        case .string(let text):
            // Numbers logged as strings stay numbers in the JSON, so Elasticsearch maps them as such.
            if !text.isEmpty, text.utf8.count < 19, text.utf8.allSatisfy({ (0x30...0x39).contains($0) }),
                text.utf8.first != 0x30 || text.utf8.count == 1
            {
                writer.raw(text)
            } else {
                writer.string(text)
            }
        case .stringConvertible(let convertible):
            writer.string(convertible.description)
        case .array(let values):
            writer.raw("[")
            for (index, element) in values.enumerated() {
                if index > 0 { writer.raw(",") }
                Self.write(element, into: &writer)
            }
            writer.raw("]")
        case .dictionary(let dictionary):
            writer.raw("{")
            for (index, key) in dictionary.keys.sorted().enumerated() {
                if index > 0 { writer.raw(",") }
                writer.string(key)
                writer.raw(":")
                Self.write(dictionary[key]!, into: &writer)
            }
            writer.raw("}")
        }
    }
}
