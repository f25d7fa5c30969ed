import Foundation
import SluiceCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A child process that runs alongside the test (`sluice gateway`, `sluice dev-kafka`, an
/// `openssl s_client` session, a `sluice-bench torture` writer), its output collected as it
/// arrives: for tests that start a part the way an operator does, wait for the line that says
/// it is ready, and stop it with a signal (or kill it the way a crash would).
///
/// The environment is this process's minus its `SLUICE_` variables, so that the caller decides
/// every setting; `environment` is added on top. Standard input is `/dev/null` unless the
/// caller asks for a pipe (``Input/pipe``). The child is killed when this object goes away.
///
/// For a command that runs to completion (`openssl req`, `sluice wal dump`, `python3 …`), see
/// ``run(_:_:environment:currentDirectory:input:errorsToOutput:timeout:)``.
public final class ChildProcess: Sendable {
    private let process: Process
    /// What the test prints in a failure: the command line.
    public let commandLine: String

    /// Bytes a pipe delivered so far.
    private final class Collected: Sendable {
        let bytes = Mutex<[UInt8]>([])
        /// The pipe reached end of file: every byte the child wrote is in `bytes`.
        let closed = Atomic<Bool>(false)
        var text: String { String(decoding: self.bytes.withLock { $0 }, as: UTF8.self) }
    }

    private let output = Collected()
    private let errors = Collected()
    /// The write end of the child's standard input, with ``Input/pipe``.
    private let input: FileHandle?

    /// Where the child's standard input comes from.
    public enum Input: Sendable {
        /// `/dev/null`: the child sees end of input at once.
        case empty
        /// A pipe the test writes with ``write(_:)`` and closes with ``closeInput()``.
        case pipe
    }

    /// Starts `executable arguments…`. `executable` is a path, or a name looked up in `PATH`.
    public init(
        executable: String,
        _ arguments: [String],
        environment: [String: String] = [:],
        currentDirectory: String? = nil,
        input: Input = .empty
    ) throws {
        let path = try Self.resolve(executable)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        process.environment = Self.environment(adding: environment)
        if let currentDirectory { process.currentDirectoryURL = URL(fileURLWithPath: currentDirectory) }
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        switch input {
        case .empty:
            process.standardInput = FileHandle.nullDevice
            self.input = nil
        case .pipe:
            let pipe = Pipe()
            process.standardInput = pipe
            self.input = pipe.fileHandleForWriting
        }
        self.process = process
        self.commandLine = ([path] + arguments).joined(separator: " ")
        try SpawnGate.spawning { try process.run() }
        for (pipe, sink) in [(out, self.output), (err, self.errors)] {
            Self.drain(pipe.fileHandleForReading, into: sink)
        }
    }

    /// Reads `handle` to its end on a thread of its own, with blocking reads.
    ///
    /// Not `readabilityHandler`: on Linux, tearing its dispatch read source down while other
    /// sources come and go is a use-after-free in libdispatch's epoll bookkeeping
    /// (swift-corelibs-libdispatch#949) that crashed this test process in
    /// `_dispatch_event_loop_drain` when many children ran at once. A blocking read registers
    /// nothing with libdispatch; the thread ends at end of file (when the child and any
    /// grandchild holding the pipe are gone).
    private static func drain(_ handle: FileHandle, into sink: Collected) {
        let thread = Thread {
            let descriptor = handle.fileDescriptor
            var buffer = [UInt8](repeating: 0, count: 64 << 10)
            while true {
                let count = buffer.withUnsafeMutableBytes { Glibc.read(descriptor, $0.baseAddress, $0.count) }
                if count > 0 {
                    sink.bytes.withLock { $0 += buffer[0..<count] }
                } else if count < 0 && errno == EINTR {
                    continue
                } else {
                    break
                }
            }
            try? handle.close()
            sink.closed.store(true, ordering: .releasing)
        }
        thread.name = "child-output"
        thread.start()
    }

    deinit {
        if self.process.isRunning { kill(self.process.processIdentifier, SIGKILL) }
        try? self.input?.close()
    }

    public var standardOutput: String { self.output.text }
    public var standardError: String { self.errors.text }
    public var isRunning: Bool { self.process.isRunning }
    public var processIdentifier: Int32 { self.process.processIdentifier }

    /// Which of the child's output streams to read.
    public enum Stream: Sendable { case standardOutput, standardError }

    /// Writes `text` to the child's standard input (started with ``Input/pipe``).
    public func write(_ text: String) throws {
        guard let input = self.input else {
            throw ChildProcessError(description: "\(self.commandLine): started without an input pipe")
        }
        try input.write(contentsOf: Data(text.utf8))
    }

    /// Closes the child's standard input: it sees the end of its input.
    public func closeInput() { try? self.input?.close() }

    /// The first complete line of standard output (or `stream`) containing `marker`, once it is
    /// there; throws when the child exits or `timeout` passes without one.
    public func line(
        containing marker: String,
        in stream: Stream = .standardOutput,
        timeout: Duration = .seconds(30)
    ) async throws -> String {
        try await self.line(in: stream, timeout: timeout, described: "a line with '\(marker)'") {
            $0.contains(marker)
        }
    }

    /// The first complete line of `stream`, once it is there (e.g. the address `sluice dev-kafka`
    /// prints).
    public func firstLine(in stream: Stream = .standardOutput, timeout: Duration = .seconds(30)) async throws -> String
    {
        try await self.line(in: stream, timeout: timeout, described: "a first line") { _ in true }
    }

    /// The first complete line of `stream` for which `matches` holds. A line counts once its
    /// newline arrived (a pipe can deliver half a line), or once the stream is closed.
    public func line(
        in stream: Stream = .standardOutput,
        timeout: Duration = .seconds(30),
        described description: String = "the line",
        where matches: (Substring) -> Bool
    ) async throws -> String {
        let sink = stream == .standardOutput ? self.output : self.errors
        let deadline = ContinuousClock.now + timeout
        var exited: ContinuousClock.Instant?
        while true {
            // Read `closed` first: the bytes read after it are then all there are.
            let closed = sink.closed.load(ordering: .acquiring)
            let bytes = sink.bytes.withLock { $0 }
            let end = closed ? bytes.count : (bytes.lastIndex(of: UInt8(ascii: "\n")).map { $0 + 1 } ?? 0)
            let complete = String(decoding: bytes[..<end], as: UTF8.self)
            if let line = complete.split(whereSeparator: \.isNewline).first(where: matches) { return String(line) }
            let now = ContinuousClock.now
            if !self.process.isRunning { exited = exited ?? now }
            // After the exit, the pipe's last bytes get a moment to arrive (unless a grandchild
            // holds it open).
            let reason: String? =
                if closed { "its output ended" } else if let exited, now - exited > .seconds(2) {
                    "it exited"
                } else if now >= deadline { "timed out after \(timeout)" } else { nil }
            if let reason {
                throw ChildProcessError(
                    description: """
                        \(self.commandLine): \(description) did not come (\(reason))
                        stdout: \(self.standardOutput.suffix(2000))
                        stderr: \(self.standardError.suffix(2000))
                        """
                )
            }
            try await Task.sleep(for: .milliseconds(10))
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
        else { throw ChildProcessError(description: "no server.port in \(line)") }
        return port
    }

    public func signal(_ signal: Int32) { kill(self.process.processIdentifier, signal) }

    /// The exit status once the process exited and its output was read to the end (the pipes'
    /// last bytes can arrive after the exit); throws after `timeout`. A child killed by a signal
    /// has that signal's number as its status (as `Process` reports it).
    public func waitForExit(timeout: Duration = .seconds(30)) async throws -> Int32 {
        let deadline = ContinuousClock.now + timeout
        while self.process.isRunning {
            guard ContinuousClock.now < deadline else {
                throw ChildProcessError(description: "\(self.commandLine) did not exit within \(timeout)")
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

    /// Sends `signal` and waits for the exit: ``signal(_:)`` then ``waitForExit(timeout:)``.
    public func stop(_ signal: Int32 = SIGTERM, timeout: Duration = .seconds(30)) async throws -> Int32 {
        self.signal(signal)
        return try await self.waitForExit(timeout: timeout)
    }

    // MARK: Shared with the one-shot runner

    /// This process's environment without its `SLUICE_` variables, plus `environment`.
    static func environment(adding environment: [String: String]) -> [String: String] {
        var merged = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("SLUICE_") }
        merged.merge(environment) { $1 }
        return merged
    }

    /// `executable` itself when it is a path; else the first match in `PATH`.
    static func resolve(_ executable: String) throws -> String {
        if executable.contains("/") { return executable }
        guard let path = Self.find(executable) else {
            throw ChildProcessError(description: "\(executable) is not installed (not found in PATH)")
        }
        return path
    }

    /// Where `name` is in `PATH`, if it is installed: for `.enabled(if:)` conditions.
    public static func find(_ name: String) -> String? {
        for directory in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
            let path = "\(directory)/\(name)"
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        return nil
    }
}

/// The `sluice` binary as a child process: what most process tests start.
public typealias SluiceProcess = ChildProcess

extension ChildProcess {
    /// Starts `sluice arguments…` (or `executable arguments…`, e.g. `sluice-bench`).
    public convenience init(
        _ arguments: [String],
        environment: [String: String] = [:],
        executable: String? = nil
    ) throws {
        try self.init(executable: try executable ?? sluiceBinary(), arguments, environment: environment)
    }
}

public struct ChildProcessError: Error, CustomStringConvertible {
    public var description: String

    public init(description: String) { self.description = description }
}

public typealias SluiceProcessError = ChildProcessError
