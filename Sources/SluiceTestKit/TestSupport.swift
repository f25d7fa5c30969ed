import Foundation
import SluiceCore

/// A fresh directory under the system temp dir, removed when the test ends.
public final class TemporaryDirectory: Sendable {
    public let path: String

    public init() throws {
        let template = FileManager.default.temporaryDirectory.path + "/sluice-test-XXXXXX"
        var bytes = Array(template.utf8CString)
        guard let result = mkdtemp(&bytes) else {
            throw CocoaError(.fileWriteUnknown, userInfo: [NSLocalizedDescriptionKey: "mkdtemp failed: errno \(errno)"])
        }
        self.path = String(cString: result)
    }

    deinit { try? FileManager.default.removeItem(atPath: self.path) }
}

/// The `sluice` binary built beside the tests (`make test` runs `swift build` first), or
/// `SLUICE_BIN`.
public func sluiceBinary(file: StaticString = #filePath) throws -> String {
    try builtBinary("sluice", environment: "SLUICE_BIN", file: file)
}

/// The `sluice-bench` executable (benchmarks and the crash tests' child), beside `sluice`.
public func sluiceBenchBinary(file: StaticString = #filePath) throws -> String {
    try builtBinary("sluice-bench", environment: "SLUICE_BENCH_BIN", file: file)
}

private func builtBinary(_ name: String, environment: String, file: StaticString) throws -> String {
    if let path = ProcessInfo.processInfo.environment[environment] { return path }
    var root = URL(fileURLWithPath: "\(file)")
    while root.path != "/" && !FileManager.default.fileExists(atPath: root.appendingPathComponent("Package.swift").path)
    {
        root.deleteLastPathComponent()
    }
    for candidate in [".build/debug/\(name)", ".build/release/\(name)"] {
        let path = root.appendingPathComponent(candidate).path
        if FileManager.default.isExecutableFile(atPath: path) { return path }
    }
    throw CocoaError(
        .fileNoSuchFile,
        userInfo: [
            NSLocalizedDescriptionKey: "the \(name) binary is not built; run `swift build` first or set \(environment)"
        ]
    )
}

/// The repository root (where Package.swift is).
public func repositoryRoot(file: StaticString = #filePath) -> URL {
    var root = URL(fileURLWithPath: "\(file)")
    while root.path != "/" && !FileManager.default.fileExists(atPath: root.appendingPathComponent("Package.swift").path)
    {
        root.deleteLastPathComponent()
    }
    return root
}

/// Runs blocking work (waiting for a child process, reading its pipes) on a thread outside
/// the cooperative pool, which has only as many threads as cores: blocking it stalls every
/// other test running in parallel. The tests' name for the package's own runner.
public func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await SluiceCore.offPool(body)
}

/// A condition a test waited for did not come true in time.
public struct WaitTimedOut: Error, CustomStringConvertible {
    public var timeout: Duration
    public var description: String { "condition not met within \(self.timeout)" }
}

/// Polls `condition` until it holds; throws ``WaitTimedOut`` (failing the test) after `timeout`.
public func waitUntil(
    timeout: Duration = .seconds(30),
    pollEvery interval: Duration = .milliseconds(10),
    _ condition: () async throws -> Bool
) async throws {
    let deadline = ContinuousClock.now + timeout
    while try await !condition() {
        guard ContinuousClock.now < deadline else { throw WaitTimedOut(timeout: timeout) }
        try await Task.sleep(for: interval)
    }
}
