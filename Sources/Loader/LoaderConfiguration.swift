import ClickHouse
import Encryption
import Ledger

/// Settings of the Kafka → ClickHouse loader.
public struct LoaderConfiguration: Sendable {
    /// librdkafka properties; `bootstrap.servers` at least.
    public var kafkaProperties: [String: String]
    public var clickHouse: ClickHouseConfiguration
    /// Default: `sluice-loader`.
    public var groupID = "sluice-loader"
    /// Topics → tables. Default: `events` → `sluice.events`.
    public var routes: [LoaderRoute] = [.events]
    /// Erased users: where their record lives and the key of their hashed ids.
    public var erasure = ErasureConfiguration()
    /// A batch is inserted when it reaches this many rows… Default: 20,000.
    public var batchRows = 20_000
    /// … or this many bytes of rows… Default: 16 MiB.
    public var batchBytes = 16 << 20
    /// … or when its oldest message waited this long. Default: 1 s.
    public var batchAge: Duration = .seconds(1)
    /// The data format of the inserts. Default: ``InsertFormat/rowBinary``, which costs the
    /// loader and ClickHouse the least CPU; a route whose existing table has other column
    /// types than the route's falls back to ``InsertFormat/jsonEachRow`` (logged at start).
    public var format: InsertFormat = Self.defaultFormat
    public static let defaultFormat = InsertFormat.rowBinary
    /// Back-off between failed inserts: doubling from `retryInitial` up to `retryMax`, with jitter.
    public var retryInitial: Duration = .milliseconds(200)
    public var retryMax: Duration = .seconds(30)
    /// Called after each confirmed insert with the ingest-to-insert delay of each row that
    /// carries `received_at` (milliseconds): for benchmarks; the histogram metric has the same.
    public var insertObserver: (@Sendable ([Int64]) -> Void)?
    /// Where the conservation ledger's `loaded` records go after each commit (docs/ledger.md);
    /// nil: none are made.
    public var ledger: (any LedgerSink)?
    /// `kafka.encryption.*`: the keys that open the payload envelopes the forwarder sealed
    /// (``PayloadDecryption``). Unsealed messages load without any.
    package var encryption = EncryptionConfiguration()

    public init(kafkaProperties: [String: String], clickHouse: ClickHouseConfiguration) {
        self.kafkaProperties = kafkaProperties
        self.clickHouse = clickHouse
    }

    /// Checks that the settings can work: every route (``LoaderRoute/validate()``), one route
    /// per topic, batches of at least one row and 1 KiB, readable `kafka.encryption` keys.
    ///
    /// - Throws: ``LoaderError`` with code ``LoaderError/Code/invalidRoute`` or
    ///   ``LoaderError/Code/invalidConfiguration`` and what is wrong.
    public func validate() throws(LoaderError) {
        for route in self.routes { try route.validate() }
        let topics = self.routes.map(\.topic)
        if Set(topics).count != topics.count {
            throw LoaderError(.invalidConfiguration, message: "two routes read the same topic")
        }
        if self.batchRows < 1 {
            throw LoaderError(.invalidConfiguration, message: "loader.batch_rows must be at least 1")
        }
        if self.batchBytes < 1024 {
            throw LoaderError(.invalidConfiguration, message: "loader.batch_bytes must be at least 1024")
        }
        _ = try self.encryptionKeyring()
    }
}
