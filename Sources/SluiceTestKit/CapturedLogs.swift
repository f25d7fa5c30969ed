import Logging
import Synchronization

/// Keeps what a component logs, so that a test can count and read its lines.
public final class CapturedLogs: Sendable {
    public struct Entry: Sendable {
        public var level: Logger.Level
        public var message: String
        public var metadata: Logger.Metadata
    }

    private let storage = Mutex<[Entry]>([])

    public init() {}

    public var entries: [Entry] { self.storage.withLock { $0 } }

    /// How many lines carry `message`.
    public func count(_ message: String) -> Int { self.entries.filter { $0.message == message }.count }

    /// A logger at `debug` whose every line lands here.
    public var logger: Logger {
        var logger = Logger(label: "sluice.test") { _ in Handler(logs: self) }
        logger.logLevel = .debug
        return logger
    }

    private struct Handler: LogHandler {
        let logs: CapturedLogs
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .debug

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { self.metadata[key] }
            set { self.metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            let entry = Entry(level: event.level, message: event.message.description, metadata: event.metadata ?? [:])
            self.logs.storage.withLock { $0.append(entry) }
        }
    }
}
