import Foundation
import Logging
import Testing

@_spi(Testing) @testable import WAL

/// A fresh directory under the system temp dir, removed when the test ends.
final class TemporaryDirectory: Sendable {
    let path: String

    init() throws {
        let template = FileManager.default.temporaryDirectory.path + "/sluice-test-XXXXXX"
        var bytes = Array(template.utf8CString)
        guard let result = mkdtemp(&bytes) else { throw WALError(.io, "mkdtemp failed", errno: errno) }
        self.path = String(cString: result)
    }

    deinit { try? FileManager.default.removeItem(atPath: self.path) }
}

/// Settings small enough that tests fill and roll segments quickly.
func testConfiguration(_ directory: String, fileSystem: any WALFileSystem = SystemFileSystem()) -> WALConfiguration {
    var configuration = WALConfiguration(directory: directory)
    configuration.segmentBytes = 64 << 10
    configuration.maxRecordBytes = 16 << 10
    configuration.budget = DiskBudget(maxBytes: 1 << 40, minFreeBytes: 0)
    configuration.fileSystem = fileSystem
    configuration.maintenanceInterval = .milliseconds(20)
    return configuration
}

let quietLogger: Logger = {
    var logger = Logger(label: "sluice.test")
    logger.logLevel = .critical
    return logger
}()

func event(_ text: String) -> [UInt8] { Array(text.utf8) }

/// Every event in the WAL directory, by LSN, read with the operator's inspector.
func allEvents(in directory: String) throws -> [LSN: [UInt8]] {
    var events: [LSN: [UInt8]] = [:]
    try WALInspector(directory: directory).records(from: .zero) { item in
        if case .record(let record, _, _) = item {
            for (index, event) in record.events.enumerated() { events[record.lsn + UInt64(index)] = event }
        }
        return true
    }
    return events
}

/// The `sluice` binary built beside the tests (`swift build` runs before `swift test` in `make test`).
func sluiceBinary() throws -> String {
    if let path = ProcessInfo.processInfo.environment["SLUICE_BIN"] { return path }
    var root = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { root.deleteLastPathComponent() }
    for candidate in [".build/debug/sluice", ".build/release/sluice"] {
        let path = root.appendingPathComponent(candidate).path
        if FileManager.default.isExecutableFile(atPath: path) { return path }
    }
    throw WALError(.notFound, "the sluice binary is not built; run `swift build` first or set SLUICE_BIN")
}

struct CommandResult {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Runs blocking work (waiting for a child process, reading its pipes) on a thread outside
/// the cooperative pool, which has only as many threads as cores: blocking it stalls every
/// other test running in parallel.
func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        DispatchQueue.global().async { continuation.resume(with: Result { try body() }) }
    }
}

/// Runs the `sluice` binary to completion.
func runSluice(_ arguments: [String]) async throws -> CommandResult {
    try await offPool { try runSluiceBlocking(arguments) }
}

private func runSluiceBlocking(_ arguments: [String]) throws -> CommandResult {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: try sluiceBinary())
    process.arguments = arguments
    let out = Pipe()
    let err = Pipe()
    process.standardOutput = out
    process.standardError = err
    try process.run()
    let stdout = out.fileHandleForReading.readDataToEndOfFile()
    let stderr = err.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return CommandResult(
        status: process.terminationStatus,
        stdout: String(decoding: stdout, as: UTF8.self),
        stderr: String(decoding: stderr, as: UTF8.self)
    )
}
