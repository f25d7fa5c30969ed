import Foundation
import LocalClickHouse

/// Debian's PostgreSQL 15 server in a temporary directory, on a free loopback port, with its
/// unix socket in that directory: for the PostgreSQL key store's tests. Started and stopped by
/// the test; removed with the directory.
///
/// PostgreSQL refuses to run as root, so under uid 0 every command runs as the `postgres` OS
/// user (`runuser -u postgres --`) and the directory is handed to that user.
public final class LocalPostgres: Sendable {
    public static let binaries = "/usr/lib/postgresql/15/bin"

    public let directory: TemporaryDirectory
    public let port: Int

    /// `postgres://postgres@127.0.0.1:<port>/postgres?sslmode=disable` (trust authentication).
    public var url: String { "postgres://postgres@127.0.0.1:\(self.port)/postgres?sslmode=disable" }

    private var dataDirectory: String { self.directory.path + "/data" }
    private var socketDirectory: String { self.directory.path + "/socket" }

    /// Whether the server binaries are installed (`scripts/setup` installs them).
    public static var isInstalled: Bool {
        FileManager.default.isExecutableFile(atPath: Self.binaries + "/initdb")
    }

    /// Creates a cluster and starts it; returns once it accepts connections.
    public static func start() async throws -> LocalPostgres {
        let server = try LocalPostgres()
        try await server.initialize()
        try await server.restart()
        return server
    }

    private init() throws {
        self.directory = try TemporaryDirectory()
        // Outside the ephemeral range: see freeLoopbackPorts.
        self.port = try freeLoopbackPorts(1)[0]
    }

    deinit {
        if FileManager.default.fileExists(atPath: self.dataDirectory + "/postmaster.pid") {
            _ = try? Self.runAsServerUser(
                Self.binaries + "/pg_ctl",
                ["stop", "-D", self.dataDirectory, "-m", "immediate", "-w", "-t", "10"]
            )
        }
    }

    private func initialize() async throws {
        try FileManager.default.createDirectory(atPath: self.socketDirectory, withIntermediateDirectories: true)
        if getuid() == 0 {
            for path in [self.directory.path, self.socketDirectory] {
                guard chown(path, Self.serverUser.uid, Self.serverUser.gid) == 0 else {
                    throw LocalPostgresError(description: "cannot chown \(path) to postgres: errno \(errno)")
                }
            }
        }
        let dataDirectory = self.dataDirectory
        let result = try await offPool {
            try Self.runAsServerUser(
                Self.binaries + "/initdb",
                ["-D", dataDirectory, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions"]
            )
        }
        guard result.status == 0 else {
            throw LocalPostgresError(description: "initdb failed (\(result.status)): \(result.output)")
        }
    }

    /// Starts the server (again, after ``stop()``) on the same port and data; returns once `pg_isready` says it
    /// accepts connections.
    public func restart() async throws {
        let options =
            "-p \(self.port) -k \(self.socketDirectory) -c listen_addresses=127.0.0.1 -c fsync=off"
            + " -c full_page_writes=off -c synchronous_commit=off"
        let dataDirectory = self.dataDirectory
        let log = self.directory.path + "/server.log"
        let started = try await offPool {
            try Self.runAsServerUser(
                Self.binaries + "/pg_ctl",
                ["start", "-D", dataDirectory, "-o", options, "-l", log, "-w", "-t", "60"]
            )
        }
        guard started.status == 0 else {
            let serverLog = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            throw LocalPostgresError(description: "pg_ctl start failed: \(started.output)\n\(serverLog.suffix(2000))")
        }
        let port = self.port
        let deadline = ContinuousClock.now + .seconds(30)
        while true {
            let ready = try await offPool {
                try Self.runAsServerUser(
                    Self.binaries + "/pg_isready",
                    ["-h", "127.0.0.1", "-p", "\(port)", "-t", "2"]
                )
            }
            if ready.status == 0 { return }
            guard ContinuousClock.now < deadline else {
                throw LocalPostgresError(description: "PostgreSQL did not become ready: \(ready.output)")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
    }

    /// Stops the server (fast shutdown: open connections are closed) and waits until it is down.
    public func stop() async throws {
        let dataDirectory = self.dataDirectory
        let result = try await offPool {
            try Self.runAsServerUser(
                Self.binaries + "/pg_ctl",
                ["stop", "-D", dataDirectory, "-m", "fast", "-w", "-t", "30"]
            )
        }
        guard result.status == 0 else { throw LocalPostgresError(description: "pg_ctl stop failed: \(result.output)") }
    }

    /// Runs SQL through `psql` and returns its output (unaligned, tuples only).
    public func psql(_ sql: String) async throws -> String {
        let port = self.port
        let result = try await offPool {
            try Self.runAsServerUser(
                Self.binaries + "/psql",
                [
                    "-h", "127.0.0.1", "-p", "\(port)", "-U", "postgres", "-d", "postgres", "-At", "-v",
                    "ON_ERROR_STOP=1", "-c", sql,
                ]
            )
        }
        guard result.status == 0 else { throw LocalPostgresError(description: "psql failed: \(result.output)") }
        return result.output
    }

    private static let serverUser: (uid: uid_t, gid: gid_t) = {
        guard let entry = getpwnam("postgres") else { return (0, 0) }
        return (entry.pointee.pw_uid, entry.pointee.pw_gid)
    }()

    /// Runs a server binary to completion, as `postgres` when this process is root; returns its
    /// exit status and its combined output. (``ChildProcess/runBlocking(_:_:environment:currentDirectory:input:errorsToOutput:timeout:)``
    /// writes the output to files, so `pg_ctl start` leaving the server behind with them open
    /// does not keep the caller waiting.)
    private static func runAsServerUser(
        _ executable: String,
        _ arguments: [String]
    ) throws -> (
        status: Int32, output: String
    ) {
        let command =
            getuid() == 0
            ? ["/usr/sbin/runuser", "-u", "postgres", "--", executable] + arguments : [executable] + arguments
        let result = try ChildProcess.runBlocking(
            command[0],
            Array(command.dropFirst()),
            environment: ["LC_ALL": "C"],
            errorsToOutput: true
        )
        return (result.status, result.standardOutput)
    }
}

public struct LocalPostgresError: Error, CustomStringConvertible {
    public var description: String
}
