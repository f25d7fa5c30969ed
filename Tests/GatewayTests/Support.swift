import EventModel
import Foundation
import Gateway
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import Prometheus
import Telemetry
@_exported import TestSupport
import Testing
@_spi(Testing) import WAL

let registry = Telemetry.bootstrap(logLevel: .critical)

let quietLogger: Logger = {
    var logger = Logger(label: "sluice.test")
    logger.logLevel = .critical
    return logger
}()

/// A gateway over a real WAL in a temporary directory.
struct TestGateway {
    let directory: TemporaryDirectory
    let wal: WAL
    let configuration: GatewayConfiguration
    var authentication = GatewayAuthentication.open
    var receipts: GatewayReceipts?

    static func make(
        authentication: GatewayAuthentication = .open,
        configure: (inout GatewayConfiguration) -> Void = { _ in },
        wal configureWAL: (inout WALConfiguration) -> Void = { _ in }
    ) async throws -> TestGateway {
        _ = registry  // metrics must be bootstrapped before the WAL creates its own
        let directory = try TemporaryDirectory()
        var walConfiguration = WALConfiguration(directory: directory.path + "/wal")
        walConfiguration.segmentBytes = 1 << 20
        walConfiguration.budget = DiskBudget(maxBytes: 1 << 40, minFreeBytes: 0)
        var configuration = GatewayConfiguration()
        configuration.gatewayID = "gw-test"
        // Tests share 2 cores with each other: a 150 ms acknowledgement deadline would turn
        // scheduling delays into 503s. Tests of the deadline set their own.
        configuration.appendTimeout = .seconds(10)
        configure(&configuration)
        walConfiguration.ackTimeout = configuration.appendTimeout
        configureWAL(&walConfiguration)
        let wal = try await WAL.openAndStart(walConfiguration, logger: quietLogger)
        return TestGateway(directory: directory, wal: wal, configuration: configuration, authentication: authentication)
    }

    var router: Router<IngestRequestContext> {
        buildGatewayRouter(
            configuration: self.configuration,
            wal: self.wal,
            registry: registry,
            authentication: self.authentication,
            receipts: self.receipts,
            logger: quietLogger
        )
    }

    /// Runs `body` against the router (no sockets), then closes the WAL.
    func test(_ body: @Sendable (any TestClientProtocol) async throws -> Void) async throws {
        let app = Application(router: self.router, logger: quietLogger)
        try await app.test(.router, body)
        await self.wal.close()
    }

    /// The events in the WAL, parsed, in LSN order.
    func storedEvents() throws -> [JSONValue] {
        var events: [JSONValue] = []
        try WALInspector(directory: self.directory.path + "/wal").records(from: .zero) { item in
            if case .record(let record, _, _) = item {
                for event in record.events { events.append(try JSONParser.parse(event)) }
            }
            return true
        }
        return events
    }
}

extension TestResponse {
    var text: String { String(buffer: self.body) }

    func json() throws -> JSONValue { try JSONParser.parse(Array(self.body.readableBytesView)) }
}

func headers(_ pairs: [HTTPField.Name: String]) -> HTTPFields {
    var fields = HTTPFields()
    for (name, value) in pairs { fields[name] = value }
    return fields
}

func buffer(_ text: String) -> ByteBuffer { ByteBuffer(string: text) }
