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
import Testing
@_spi(Testing) import WAL

/// A fresh directory under the system temp dir, removed when the test ends.
final class TemporaryDirectory: Sendable {
    let path: String

    init() throws {
        let template = FileManager.default.temporaryDirectory.path + "/sluice-gw-test-XXXXXX"
        var bytes = Array(template.utf8CString)
        guard let result = mkdtemp(&bytes) else { throw WALError(.io, "mkdtemp failed", errno: errno) }
        self.path = String(cString: result)
    }

    deinit { try? FileManager.default.removeItem(atPath: self.path) }
}

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

    static func make(
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
        configure(&configuration)
        walConfiguration.ackTimeout = configuration.appendTimeout
        configureWAL(&walConfiguration)
        let wal = try await WAL.open(walConfiguration, logger: quietLogger)
        return TestGateway(directory: directory, wal: wal, configuration: configuration)
    }

    var router: Router<IngestRequestContext> {
        buildGatewayRouter(configuration: self.configuration, wal: self.wal, registry: registry, logger: quietLogger)
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

/// The `sluice` binary built beside the tests (`make test` builds it first).
func sluiceBinary() throws -> String {
    if let path = ProcessInfo.processInfo.environment["SLUICE_BIN"] { return path }
    var root = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { root.deleteLastPathComponent() }
    let path = root.appendingPathComponent(".build/debug/sluice").path
    guard FileManager.default.isExecutableFile(atPath: path) else {
        throw WALError(.notFound, "the sluice binary is not built; run `swift build` first or set SLUICE_BIN")
    }
    return path
}

/// Runs blocking work outside the cooperative pool (see the WAL tests' twin).
func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        DispatchQueue.global().async { continuation.resume(with: Result { try body() }) }
    }
}
