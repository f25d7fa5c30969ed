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
        writer.member("log.logger", self.label)
        writer.member("service.name", self.serviceName)
        var merged = self.metadata
        if let provided = self.metadataProvider?.get() { merged.merge(provided) { $1 } }
        if let extra = event.metadata { merged.merge(extra) { $1 } }
        for (key, value) in merged {
            writer.raw(",")
            writer.string(key)
            writer.raw(":")
            Self.write(value, into: &writer)
        }
        if event.level >= .error { writer.member("log.origin.file.name", "\(event.file):\(event.line)") }
        writer.raw("}\n")
        let bytes = writer.bytes
        _ = bytes.withUnsafeBytes { Glibc.write(self.fileDescriptor, $0.baseAddress, $0.count) }
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
