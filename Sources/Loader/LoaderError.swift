/// The one error type of the Loader module.
///
/// Three kinds of callers read it. The loader itself: a message that cannot become a row
/// (``Code-swift.struct/notJSON`` … ``Code-swift.struct/outOfRange``) goes to the dead-letter
/// topic with ``description`` as its `dlq_reason`. Whoever starts a loader: a configuration or
/// route that cannot work (``Code-swift.struct/invalidConfiguration``,
/// ``Code-swift.struct/invalidRoute``) is refused before anything connects. On-call tools:
/// ``OffsetTools`` refuses to move a group that is in use (``Code-swift.struct/groupIsActive``)
/// or to a place that does not exist (``Code-swift.struct/invalidTarget``).
///
/// ``description`` is the message alone (and the cause, if any): it is what users read, in
/// logs, in `sluice` output and in dead-letter headers.
public struct LoaderError: Error, Sendable, CustomStringConvertible {
    /// What went wrong, as a stable machine-readable value.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Value: String, Hashable, Sendable {
            case notJSON, notAnObject, missingField, wrongKind, outOfRange
            case invalidConfiguration, invalidRoute
            case groupIsActive, invalidTarget
            case erasureFailed
        }
        private let value: Value
        private init(_ value: Value) { self.value = value }

        /// A message that is not JSON at all (syntax, UTF-8, escapes, control characters, nesting).
        public static let notJSON = Code(.notJSON)
        /// A message that is JSON, but not an object.
        public static let notAnObject = Code(.notAnObject)
        /// A required field is absent or null.
        public static let missingField = Code(.missingField)
        /// A field's JSON kind does not fit its column (an object for a string column…).
        public static let wrongKind = Code(.wrongKind)
        /// A field's value does not fit its column (a number too large, a time out of range…).
        public static let outOfRange = Code(.outOfRange)
        /// The loader's settings cannot work (limits too small, two routes on one topic).
        public static let invalidConfiguration = Code(.invalidConfiguration)
        /// A route cannot work (a table name that is not `database.table`, a missing column…).
        public static let invalidRoute = Code(.invalidRoute)
        /// A consumer group has active members, so its offsets must not be moved.
        public static let groupIsActive = Code(.groupIsActive)
        /// An offset reset names a partition or an offset the topic does not have.
        public static let invalidTarget = Code(.invalidTarget)
        /// `sluice erase` could not finish: ClickHouse refused or did not answer (running it
        /// again is safe).
        public static let erasureFailed = Code(.erasureFailed)

        public var description: String { self.value.rawValue }
    }

    public var code: Code
    /// What is wrong, for a person: the `dlq_reason` header, the log line, the CLI's output.
    public var message: String
    /// The top-level field of the message concerned, for the row codes; nil otherwise.
    public var field: String?
    /// The error that caused this one, if any.
    public var cause: (any Error & Sendable)?
    public var file: String
    public var line: Int

    public init(
        _ code: Code,
        field: String? = nil,
        message: String,
        cause: (any Error & Sendable)? = nil,
        file: String = #fileID,
        line: Int = #line
    ) {
        self.code = code
        self.field = field
        self.message = message
        self.cause = cause
        self.file = file
        self.line = line
    }

    public var description: String {
        guard let cause = self.cause else { return self.message }
        return "\(self.message); cause: \(cause)"
    }
}
