import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The `sluice` binary as a child process, its output collected: for tests that run a role
/// the way an operator does (and kill it the way a crash would).
public final class SluiceProcess: Sendable {
    private let process: Process
    /// Bytes a pipe delivered so far.
    private final class Collected: Sendable {
        let bytes = Mutex<[UInt8]>([])
        /// The pipe reached end of file: every byte the child wrote is in `bytes`.
        let closed = Atomic<Bool>(false)
        var text: String { String(decoding: self.bytes.withLock { $0 }, as: UTF8.self) }
    }

    private let output = Collected()
    private let errors = Collected()

    /// Starts `sluice arguments…` (or `executable arguments…`) with `environment` added to this
    /// process's environment (minus its `SLUICE_` variables, so the caller decides every setting).
    public init(_ arguments: [String], environment: [String: String] = [:], executable: String? = nil) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try executable ?? sluiceBinary())
        process.arguments = arguments
        var merged = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("SLUICE_") }
        merged.merge(environment) { $1 }
        process.environment = merged
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        for (pipe, sink) in [(out, self.output), (err, self.errors)] {
            pipe.fileHandleForReading.readabilityHandler = { handle in
                let data = handle.availableData
                if data.isEmpty {
                    handle.readabilityHandler = nil
                    sink.closed.store(true, ordering: .releasing)
                } else {
                    sink.bytes.withLock { $0 += data }
                }
            }
        }
        self.process = process
        try process.run()
    }

    deinit {
        if self.process.isRunning { kill(self.process.processIdentifier, SIGKILL) }
    }

    public var standardOutput: String { self.output.text }
    public var standardError: String { self.errors.text }
    public var isRunning: Bool { self.process.isRunning }
    public var processIdentifier: Int32 { self.process.processIdentifier }

    /// Which of the child's output streams to read.
    public enum Stream: Sendable { case standardOutput, standardError }

    /// The first line of standard output (or `stream`) containing `marker`, once it is there.
    public func line(
        containing marker: String,
        in stream: Stream = .standardOutput,
        timeout: Duration = .seconds(30)
    ) async throws -> String {
        let deadline = ContinuousClock.now + timeout
        while true {
            let text = stream == .standardOutput ? self.standardOutput : self.standardError
            if let line = text.split(separator: "\n").first(where: { $0.contains(marker) }) {
                return String(line)
            }
            guard self.process.isRunning, ContinuousClock.now < deadline else {
                throw SluiceProcessError(
                    description:
                        "no line with '\(marker)' (\(self.process.isRunning ? "timed out" : "exited"))\nstdout: \(self.standardOutput.suffix(2000))\nstderr: \(self.standardError.suffix(2000))"
                )
            }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    /// The port of the log line `message` (`"server.port":N`), e.g. `gateway.listening`.
    public func listeningPort(
        _ message: String = "gateway.listening",
        timeout: Duration = .seconds(30)
    ) async throws
        -> Int
    {
        let line = try await self.line(containing: "\"\(message)\"", timeout: timeout)
        guard let range = line.range(of: "\"server.port\":"),
            let port = Int(line[range.upperBound...].prefix { $0.isNumber })
        else { throw SluiceProcessError(description: "no server.port in \(line)") }
        return port
    }

    public func signal(_ signal: Int32) { kill(self.process.processIdentifier, signal) }

    /// The exit status once the process exited and its output was read to the end (the pipes'
    /// last bytes can arrive after the exit); throws after `timeout`.
    public func waitForExit(timeout: Duration = .seconds(30)) async throws -> Int32 {
        let deadline = ContinuousClock.now + timeout
        while self.process.isRunning {
            guard ContinuousClock.now < deadline else {
                throw SluiceProcessError(description: "sluice \(self.process.arguments ?? []) did not exit")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        // A grandchild that inherited the pipes (sluice dev's ClickHouse) can keep them open:
        // then what arrived within a few seconds is all there is.
        let drained = min(deadline, ContinuousClock.now + .seconds(5))
        while !(self.output.closed.load(ordering: .acquiring) && self.errors.closed.load(ordering: .acquiring)),
            ContinuousClock.now < drained
        {
            try await Task.sleep(for: .milliseconds(10))
        }
        return self.process.terminationStatus
    }
}

public struct SluiceProcessError: Error, CustomStringConvertible {
    public var description: String

    public init(description: String) { self.description = description }
}
