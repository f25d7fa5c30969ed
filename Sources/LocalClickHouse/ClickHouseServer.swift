import Foundation
import SluiceCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A real ClickHouse server as a child process: Debian's `clickhouse-server` (18.16) with a
/// generated configuration, listening on 127.0.0.1 only, with a `default` user without a
/// password (plus any users given to ``start(users:tls:)``). No system service, file or port is
/// involved. The server answers `/ping` 60–150 ms after it is spawned; SIGTERM takes it
/// 0.5–1 s to exit.
///
/// Two kinds: ``start(users:tls:)`` for tests (free ports, a fresh temporary directory that
/// ``stop()`` removes) and ``start(keepingDataIn:httpPort:)`` for `sluice dev` (a fixed HTTP
/// port, data kept across runs).
///
/// A process that dies without stopping its server leaves it running (Linux's parent-death
/// signal cannot be set through `posix_spawn`). A kept-data server writes its pid to
/// `clickhouse-server.pid` in its directory, and the next start there stops the leftover one.
public final class ClickHouseServer: @unchecked Sendable {
    /// The HTTP interface, e.g. `http://127.0.0.1:40123`.
    public var httpURL: String { "http://127.0.0.1:\(self.httpPort)" }
    public let httpPort: Int
    /// The native protocol port (`clickhouse-client --port`).
    public let tcpPort: Int
    public let interserverPort: Int
    /// The HTTPS port when started with `tls: true`.
    public let httpsPort: Int?
    /// `https://127.0.0.1:PORT` when started with `tls: true`.
    public var httpsURL: String? { self.httpsPort.map { "https://127.0.0.1:\($0)" } }
    /// The server's self-signed certificate (PEM, for 127.0.0.1 and localhost) when started
    /// with `tls: true`: the CA file a client must trust.
    public var certificateFile: String? { self.httpsPort.map { _ in self.directory + "/server.crt" } }
    /// The server's directory: `config.xml`, `users.xml`, `data/`, `log/`.
    public let directory: String
    /// Whether ``stop()`` removes ``directory``.
    private let temporary: Bool
    /// The CA whose client certificates the HTTPS port requires; nil: none required.
    private var clientCA: String?
    /// Added to the server's nice value (`nice -n`), set before it starts: on a host it shares
    /// with a gateway, its inserts and merges then wait while acknowledgements are due.
    private var niceness: Int32 = 0
    /// The server's `display_name`, which it sends in every response: a `/ping` answered by
    /// another server that took the port meanwhile does not count.
    private let displayName = "sluice-" + String(UInt64.random(in: 0...UInt64.max), radix: 36)
    private var pidFile: String { self.directory + "/clickhouse-server.pid" }

    /// The server binary; `CLICKHOUSE_SERVER` overrides it.
    public static var binary: String {
        ProcessInfo.processInfo.environment["CLICKHOUSE_SERVER"] ?? "/usr/sbin/clickhouse-server"
    }

    private let lock = NSLock()
    private var child: ChildProcess?
    private var stopped = false
    /// Set while ``kill()`` or ``restart()`` ends the process on purpose.
    private var stopping = false

    private init(directory: String, ports: [Int], temporary: Bool = true) {
        self.directory = directory
        self.temporary = temporary
        self.httpPort = ports[0]
        self.tcpPort = ports[1]
        self.interserverPort = ports[2]
        self.httpsPort = ports.count > 3 ? ports[3] : nil
    }

    deinit { self.stop() }

    /// Starts a server and waits until `GET /ping` answers `Ok.` (at most 60 s). `users` adds
    /// users by name with plaintext passwords, reachable from 127.0.0.1. `tls` adds an HTTPS
    /// port with a fresh self-signed certificate (made with the `openssl` command);
    /// `clientCA` (a PEM file) makes that port require a client certificate issued by it
    /// (`verificationMode strict`). On a port taken between choosing and binding it, starts
    /// again on other ports; any other failure throws an error with the tail of the server's log.
    /// `niceness` lowers the server's scheduling priority (0: the caller's).
    public static func start(
        users: [String: String] = [:],
        tls: Bool = false,
        clientCA: String? = nil,
        niceness: Int32 = 0
    ) async throws -> ClickHouseServer {
        var lastError: (any Error)?
        for _ in 0..<5 {
            let directory = try makeTemporaryDirectory()
            let server = ClickHouseServer(directory: directory, ports: try freeLoopbackPorts(tls ? 4 : 3))
            server.clientCA = clientCA
            server.niceness = niceness
            do {
                if tls { try await offPool { try makeCertificate(in: directory) } }
                try server.writeConfiguration(users: users)
                try await server.launch()
                return server
            } catch let error as ClickHouseServerError where error.portClash {
                lastError = error
                server.stop()
            } catch {
                server.stop()
                throw error
            }
        }
        throw lastError!
    }

    /// Starts a server whose data stays in `directory` (created if missing) across runs, with
    /// HTTP on `httpPort` and the native protocol on `tcpPort` (default: a free port); waits for
    /// `/ping`. A server left running in `directory` by a process that died is stopped first.
    /// A taken port is an error that says so. `niceness` lowers the server's scheduling
    /// priority (0: the caller's).
    public static func start(
        keepingDataIn directory: String,
        httpPort: Int,
        tcpPort: Int? = nil,
        niceness: Int32 = 0
    ) async throws -> ClickHouseServer {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let absolute = URL(fileURLWithPath: directory).standardizedFileURL.path
        let server = ClickHouseServer(
            directory: absolute,
            ports: try tcpPort.map { [httpPort, $0] + (try freeLoopbackPorts(1)) } ?? [httpPort] + freeLoopbackPorts(2),
            temporary: false
        )
        server.niceness = niceness
        await offPool { server.stopLeftover() }
        try server.writeConfiguration(users: [:])
        do {
            try await server.launch()
        } catch let error as ClickHouseServerError where error.portClash {
            throw ClickHouseServerError(
                message: "port \(httpPort) or \(server.tcpPort) is already in use",
                logTail: ""
            )
        }
        return server
    }

    /// Kills the server with SIGKILL, as a crash would, and waits for it to exit (a few ms; the
    /// calling thread blocks meanwhile). The data directory stays for ``restart()``.
    public func kill() {
        guard let child = self.running() else { return }
        self.lock.withLock { self.stopping = true }
        defer { self.lock.withLock { self.stopping = false } }
        child.signal(SIGKILL)
        _ = child.waitForExit(timeout: 10)
    }

    /// Starts the server again on the same ports with the same data directory, stopping it first
    /// (SIGTERM) if it still runs; waits for `/ping` like ``start(users:tls:)``.
    public func restart() async throws {
        await offPool {
            self.lock.withLock { self.stopping = true }
            defer { self.lock.withLock { self.stopping = false } }
            self.terminate()
        }
        var attempt = 0
        while true {
            do {
                try await self.launch()
                return
            } catch let error as ClickHouseServerError where error.portClash && attempt < 20 {
                // Our own old sockets, or another test that picked the port meanwhile: the
                // ports are fixed now, so wait for them.
                attempt += 1
                try await Task.sleep(for: .milliseconds(250))
            }
        }
    }

    /// Stops the server (SIGTERM; SIGKILL after 10 s), waits for it to exit and removes its
    /// directory. The calling thread blocks meanwhile, usually for 0.5–1 s. Idempotent; runs
    /// from `deinit` too.
    public func stop() {
        let alreadyStopped = self.lock.withLock {
            defer { self.stopped = true }
            return self.stopped
        }
        guard !alreadyStopped else { return }
        self.terminate()
        if self.temporary {
            try? FileManager.default.removeItem(atPath: self.directory)
        } else {
            try? FileManager.default.removeItem(atPath: self.pidFile)
        }
    }

    /// Waits until the server process exits without ``stop()``, ``kill()`` or ``restart()``
    /// having asked it to, and answers how it ended ("was killed by signal 9"); answers nil when
    /// the task is cancelled, the server was stopped, or no server process runs. A supervisor
    /// (`sluice dev`) restarts it with ``restart()``.
    public func unexpectedExit() async -> String? {
        guard let child = self.running() else { return nil }
        await child.exited()
        let expected = self.lock.withLock { self.stopped || self.child !== child || self.stopping }
        guard !Task.isCancelled, !expected else { return nil }
        return child.exitDescription
    }

    /// The `clickhouse-client` command line that reaches this server.
    public var clientCommand: String { "clickhouse-client --host 127.0.0.1 --port \(self.tcpPort)" }

    /// The last `lines` lines of the server's log and of its standard output and error.
    public func logTail(lines: Int = 30) -> String {
        var text = ""
        for name in ["log/clickhouse-server.err.log", "log/clickhouse-server.log", "log/stdout.log"] {
            let path = self.directory + "/" + name
            guard let data = FileManager.default.contents(atPath: path), !data.isEmpty else { continue }
            let tail = String(decoding: data, as: UTF8.self).split(separator: "\n").suffix(lines)
            text += "--- \(name)\n" + tail.joined(separator: "\n") + "\n"
        }
        return text
    }

    // MARK: - Process

    private func running() -> ChildProcess? {
        self.lock.withLock {
            guard let child = self.child, child.isRunning else { return nil }
            return child
        }
    }

    /// SIGTERM, wait up to 10 s, then SIGKILL and wait.
    private func terminate() {
        guard let child = self.running() else { return }
        child.signal(SIGTERM)
        if !child.waitForExit(timeout: 10) {
            child.signal(SIGKILL)
            _ = child.waitForExit(timeout: 10)
        }
    }

    /// Spawns the server and waits for `/ping`.
    private func launch() async throws {
        // `nice` executes the server in its own process: the pid stays the server's.
        let server = [Self.binary, "--config-file=\(self.directory)/config.xml"]
        let command = self.niceness > 0 ? ["/usr/bin/nice", "-n", String(self.niceness)] + server : server
        let child = try ChildProcess(
            executable: command[0],
            arguments: Array(command.dropFirst()),
            output: self.directory + "/log/stdout.log"
        )
        self.lock.withLock { self.child = child }
        if !self.temporary { try? "\(child.pid)\n".write(toFile: self.pidFile, atomically: true, encoding: .utf8) }

        let port = self.httpPort
        let name = self.displayName
        let started = await offPool { () -> Bool in
            let deadline = Date().addingTimeInterval(60)
            while Date() < deadline {
                if pingBlocking(port: port, displayName: name) { return true }
                if !child.isRunning { return false }
                usleep(10_000)
            }
            return false
        }
        guard !started else { return }

        if child.isRunning {
            self.kill()
            throw ClickHouseServerError(
                message: "clickhouse-server did not answer /ping on port \(port) within 60 s",
                logTail: self.logTail()
            )
        }
        throw ClickHouseServerError(
            message: "clickhouse-server \(child.exitDescription) while starting",
            logTail: self.logTail(),
            portClash: self.logTail(lines: 200).contains("Address already in use")
        )
    }

    /// Stops a server that an earlier process started in this directory and left running:
    /// the pid in the pid file, if that process still runs this directory's configuration.
    private func stopLeftover() {
        guard let text = try? String(contentsOfFile: self.pidFile, encoding: .utf8),
            let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 0,
            let commandLine = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline"),
            String(decoding: commandLine, as: UTF8.self).contains("--config-file=\(self.directory)/config.xml")
        else { return }
        _ = Glibc.kill(pid, SIGTERM)
        for attempt in 0..<200 {
            guard Glibc.kill(pid, 0) == 0 else { return }
            if attempt == 150 { _ = Glibc.kill(pid, SIGKILL) }
            usleep(50_000)
        }
    }

    // MARK: - Configuration

    /// The `https_port` and `openSSL` elements of `config.xml`, or nothing.
    private var tlsConfiguration: String {
        guard let port = self.httpsPort else { return "" }
        let verification =
            self.clientCA.map {
                "<verificationMode>strict</verificationMode>\n                <caConfig>\($0)</caConfig>"
            } ?? "<verificationMode>none</verificationMode>"
        return """

                <https_port>\(port)</https_port>
                <openSSL>
                    <server>
                        <certificateFile>\(self.directory)/server.crt</certificateFile>
                        <privateKeyFile>\(self.directory)/server.key</privateKeyFile>
                        \(verification)
                        <loadDefaultCAFile>false</loadDefaultCAFile>
                        <disableProtocols>sslv2,sslv3</disableProtocols>
                    </server>
                </openSSL>
            """
    }

    private func writeConfiguration(users: [String: String]) throws {
        let directory = self.directory
        for sub in ["data", "tmp", "user_files", "format_schemas", "log"] {
            try FileManager.default.createDirectory(atPath: "\(directory)/\(sub)", withIntermediateDirectories: true)
        }
        // Small caches: the defaults reserve gigabytes. UTC keeps Date and DateTime tests
        // independent of the machine's zone.
        let config = """
            <?xml version="1.0"?>
            <yandex>
                <logger>
                    <level>information</level>
                    <log>\(directory)/log/clickhouse-server.log</log>
                    <errorlog>\(directory)/log/clickhouse-server.err.log</errorlog>
                    <size>10M</size>
                    <count>1</count>
                </logger>
                <display_name>\(self.displayName)</display_name>
                <listen_host>127.0.0.1</listen_host>\(self.tlsConfiguration)
                <http_port>\(self.httpPort)</http_port>
                <tcp_port>\(self.tcpPort)</tcp_port>
                <interserver_http_port>\(self.interserverPort)</interserver_http_port>
                <interserver_http_host>127.0.0.1</interserver_http_host>
                <path>\(directory)/data/</path>
                <tmp_path>\(directory)/tmp/</tmp_path>
                <user_files_path>\(directory)/user_files/</user_files_path>
                <format_schema_path>\(directory)/format_schemas/</format_schema_path>
                <users_config>\(directory)/users.xml</users_config>
                <default_profile>default</default_profile>
                <default_database>default</default_database>
                <timezone>UTC</timezone>
                <mark_cache_size>67108864</mark_cache_size>
                <uncompressed_cache_size>67108864</uncompressed_cache_size>
                <max_concurrent_queries>100</max_concurrent_queries>
                <keep_alive_timeout>10</keep_alive_timeout>
                <mlock_executable>false</mlock_executable>
            </yandex>

            """
        var userEntries = """
                    <default>
                        <password></password>
                        <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
                        <profile>default</profile>
                        <quota>default</quota>
                    </default>

            """
        for (name, password) in users.sorted(by: { $0.key < $1.key }) {
            userEntries += """
                        <\(name)>
                            <password>\(xmlEscaped(password))</password>
                            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
                            <profile>default</profile>
                            <quota>default</quota>
                        </\(name)>

                """
        }
        let usersXML = """
            <?xml version="1.0"?>
            <yandex>
                <profiles><default></default></profiles>
                <users>
            \(userEntries)    </users>
                <quotas><default></default></quotas>
            </yandex>

            """
        try config.write(toFile: "\(directory)/config.xml", atomically: true, encoding: .utf8)
        try usersXML.write(toFile: "\(directory)/users.xml", atomically: true, encoding: .utf8)
    }
}

/// The ClickHouse server did not come up.
public struct ClickHouseServerError: Error, CustomStringConvertible {
    public var message: String
    public var logTail: String
    /// The server could not bind one of its ports.
    public var portClash = false

    public var description: String { self.logTail.isEmpty ? self.message : "\(self.message)\n\(self.logTail)" }
}

/// A self-signed P-256 certificate for 127.0.0.1 and localhost, valid for two days:
/// `server.crt` and `server.key` in `directory`.
private func makeCertificate(in directory: String) throws {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
    process.arguments = [
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
        "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        "-keyout", "\(directory)/server.key", "-out", "\(directory)/server.crt",
    ]
    let output = Pipe()
    process.standardOutput = output
    process.standardError = output
    try SpawnGate.spawning { try process.run() }
    let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    process.waitUntilExit()
    guard process.terminationStatus == 0 else {
        throw ClickHouseServerError(message: "openssl could not make a certificate", logTail: text)
    }
}

private func makeTemporaryDirectory() throws -> String {
    let template = FileManager.default.temporaryDirectory.path + "/sluice-clickhouse-XXXXXX"
    var bytes = Array(template.utf8CString)
    guard let result = mkdtemp(&bytes) else {
        throw ClickHouseServerError(message: "mkdtemp failed: errno \(errno)", logTail: "")
    }
    return String(cString: result)
}

/// Ports free on 127.0.0.1 now, all different, for a server the caller starts next.
///
/// They come from **below the kernel's ephemeral range** (`ip_local_port_range`, 32768–60999 by
/// default), never from it: a port handed out here is bound explicitly a moment later, and a
/// number from the ephemeral range can meanwhile be taken by anything that binds port 0 — or
/// can be the port of a mock Kafka broker a test has taken down for a moment, which librdkafka
/// then cannot bind again and aborts the process. Each candidate is bound once to check that it
/// is free; numbers already handed out by this process are not handed out again.
public func freeLoopbackPorts(_ count: Int) throws -> [Int] {
    let ephemeralLow =
        (try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8))
        .flatMap { $0.split(whereSeparator: \.isWhitespace).first.flatMap { Int($0) } } ?? 32768
    let range = 10000..<max(10001, min(ephemeralLow, 65536))
    var ports: [Int] = []
    var tried = 0
    while ports.count < count {
        guard tried < range.count else {
            throw ClickHouseServerError(message: "no free port in \(range) on 127.0.0.1", logTail: "")
        }
        tried += 1
        let port = handedOut.withLock { next in
            defer { next += 1 }
            return range.lowerBound + next % range.count
        }
        if isFreeLoopbackPort(port) { ports.append(port) }
    }
    return ports
}

/// The next candidate of ``freeLoopbackPorts(_:)``: starts at a place that differs between
/// processes (so that two test runs do not walk the same numbers) and moves on.
private let handedOut = Mutex<Int>(Int(getpid()) &* 7919 % 20000)

/// Whether `port` can be bound on 127.0.0.1 now.
private func isFreeLoopbackPort(_ port: Int) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = UInt16(port).bigEndian
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
        }
    }
}

/// Whether the server named `displayName` is up on `port`: `GET /ping` answers `Ok.`, and a
/// query is answered with that name (the `/ping` answer of 18.16 carries no name).
private func pingBlocking(port: Int, displayName: String) -> Bool {
    guard let ping = httpGetBlocking(port: port, path: "/ping"), ping.hasSuffix("\r\n\r\nOk.\n") else { return false }
    guard let query = httpGetBlocking(port: port, path: "/?query=SELECT%201") else { return false }
    return query.contains("\r\nX-ClickHouse-Server-Display-Name: \(displayName)\r\n")
}

/// The response to `GET path` over a plain socket (HTTP/1.0, so the server closes after
/// answering) when its status is 200. Blocks for at most about a second.
private func httpGetBlocking(port: Int, path: String) -> String? {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var timeout = timeval(tv_sec: 1, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = UInt16(port).bigEndian
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
        }
    }
    guard connected else { return nil }
    let request = Array("GET \(path) HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".utf8)
    guard send(fd, request, request.count, Int32(MSG_NOSIGNAL)) == request.count else { return nil }
    var response: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 1024)
    while response.count < 64 * 1024 {
        let count = recv(fd, &buffer, buffer.count, 0)
        if count <= 0 { break }
        response += buffer[..<count]
    }
    let text = String(decoding: response, as: UTF8.self)
    return text.hasPrefix("HTTP/1.") && text.split(separator: "\r\n").first?.contains(" 200 ") == true ? text : nil
}

/// A child process started with `posix_spawn` and reaped by a thread of its own.
///
/// Not Foundation's `Process`: on Linux it learns that a child exited when a socket the child
/// inherited is closed, and then blocks its one monitoring thread in `waitpid` for that child.
/// clickhouse-server closes every inherited descriptor as it starts, so the monitor would sit
/// in `waitpid` until the server exits, and no other `Process` in the test run (a second
/// server, the `sluice` binary) would be seen to exit meanwhile. The child also gets an empty
/// signal mask: threads of Dispatch and Swift concurrency block almost every signal, and a
/// child inherits that mask, so a server spawned from one would never see SIGTERM.
private final class ChildProcess: @unchecked Sendable {
    let pid: pid_t
    private let condition = NSCondition()
    /// The `waitpid` status once the child exited.
    private var status: Int32?
    /// Tasks in ``exited()``, resumed when the child exits or the task is cancelled.
    private var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
    private var nextWaiter: UInt64 = 0

    init(executable: String, arguments: [String], output: String) throws {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var unblocked = sigset_t()
        sigemptyset(&unblocked)
        posix_spawnattr_setsigmask(&attributes, &unblocked)
        var defaults = sigset_t()
        sigfillset(&defaults)
        sigdelset(&defaults, SIGKILL)
        sigdelset(&defaults, SIGSTOP)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        // A process group of its own: a Ctrl-C meant for the test run does not reach it first.
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(
            &attributes,
            Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP)
        )

        let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for argument in argv { free(argument) } }
        var pid = pid_t()
        let result = SpawnGate.spawning { posix_spawn(&pid, executable, &actions, &attributes, argv, environ) }
        guard result == 0 else {
            throw ClickHouseServerError(
                message: "cannot start \(executable): \(String(cString: strerror(result)))",
                logTail: ""
            )
        }
        self.pid = pid
        let child = pid
        let reaper = Thread { [self] in
            var status: Int32 = 0
            while waitpid(child, &status, 0) == -1 && errno == EINTR {}
            let waiters = self.condition.withLock {
                self.status = status
                self.condition.broadcast()
                defer { self.waiters = [:] }
                return self.waiters.values
            }
            for waiter in waiters { waiter.resume() }
        }
        reaper.name = "clickhouse-server reaper"
        reaper.start()
    }

    var isRunning: Bool { self.condition.withLock { self.status == nil } }

    /// Returns once the child has exited, or when the calling task is cancelled.
    func exited() async {
        let id = self.condition.withLock {
            defer { self.nextWaiter += 1 }
            return self.nextWaiter
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = self.condition.withLock {
                    guard self.status == nil, !Task.isCancelled else { return true }
                    self.waiters[id] = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            let waiter = self.condition.withLock { self.waiters.removeValue(forKey: id) }
            waiter?.resume()
        }
    }

    /// Sends `signal` unless the child has been reaped (its pid may belong to another process).
    func signal(_ signal: Int32) {
        self.condition.withLock {
            if self.status == nil { _ = kill(self.pid, signal) }
        }
    }

    /// Whether the child exited within `timeout` seconds.
    func waitForExit(timeout: TimeInterval) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        return self.condition.withLock {
            while self.status == nil {
                if !self.condition.wait(until: deadline) { break }
            }
            return self.status != nil
        }
    }

    /// "exited with status 70" or "was killed by signal 9".
    var exitDescription: String {
        guard let status = self.condition.withLock({ self.status }) else { return "is running" }
        let signal = status & 0x7F
        return signal == 0 ? "exited with status \((status >> 8) & 0xFF)" : "was killed by signal \(signal)"
    }
}

private func xmlEscaped(_ text: String) -> String {
    text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
        .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
}
