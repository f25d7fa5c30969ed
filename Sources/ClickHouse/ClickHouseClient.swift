import AsyncHTTPClient
import CompressNIO
import Logging
import NIOCore
import NIOHTTP1
import NIOSSL
import SluiceCore
import Synchronization

/// A client of one ClickHouse server (or load balancer) over the HTTP interface.
///
/// Every call is one HTTP request with its own deadline (``ClickHouseConfiguration/timeout``);
/// connections are pooled and reused. The client does not retry: it tells retriable failures
/// from permanent ones (``ClickHouseError/isRetriable``) and leaves the policy to the caller.
///
/// Call ``shutdown()`` before the last reference goes away; debug builds trap otherwise.
public final class ClickHouseClient: Sendable {
    /// The configuration the client was made with.
    public let configuration: ClickHouseConfiguration
    private let http: HTTPClient
    private let logger: Logger
    /// The configured URL without a trailing slash.
    private let baseURL: String
    /// Set after the first successful ``serverVersion()``.
    private let cachedVersion = Mutex<ClickHouseVersion?>(nil)
    /// Why no request can be sent (an unreadable client certificate or key), if so.
    private let setupError: ClickHouseError?

    /// How long an idle pooled connection is kept. ClickHouse closes idle connections after
    /// `keep_alive_timeout` (3 s in Debian's sample configuration); closing ours first keeps
    /// requests from racing the server's close.
    private static let idleConnectionTimeout = TimeAmount.seconds(2)
    /// The most of an error response that is read; ClickHouse's exception texts are short.
    private static let errorBodyLimit = 64 * 1024
    /// The most of a DDL or insert response that is read; both answer with an empty body.
    private static let statementBodyLimit = 1 << 20

    /// A client that owns a connection pool on NIO's shared event loop group. Nothing connects
    /// until the first request; a client certificate or key that cannot be loaded fails every
    /// request with ``ClickHouseError/Kind/invalidRequest``.
    public init(_ configuration: ClickHouseConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        var base = configuration.url
        while base.hasSuffix("/") { base.removeLast() }
        self.baseURL = base

        var tls = TLSConfiguration.makeClientConfiguration()
        tls.certificateVerification = .fullVerification
        tls.minimumTLSVersion = .tlsv12
        if let caFile = configuration.caFile { tls.trustRoots = .file(caFile) }
        var setupError: ClickHouseError?
        if let file = configuration.clientCertificateFile {
            do {
                tls.certificateChain = try NIOSSLCertificate.fromPEMFile(file).map { .certificate($0) }
            } catch {
                setupError = ClickHouseError(
                    .invalidRequest,
                    message: "cannot load the client certificate \(file)",
                    cause: error
                )
            }
        }
        if let file = configuration.clientKeyFile {
            do {
                tls.privateKey = .privateKey(try NIOSSLPrivateKey(file: file, format: .pem))
            } catch {
                setupError = ClickHouseError(
                    .invalidRequest,
                    message: "cannot load the client key \(file)",
                    cause: error
                )
            }
        }
        self.setupError = setupError

        var http = HTTPClient.Configuration(
            tlsConfiguration: tls,
            redirectConfiguration: .disallow,
            timeout: .init(connect: min(configuration.timeout, .seconds(10)).timeAmount),
            connectionPool: .init(idleTimeout: Self.idleConnectionTimeout),
            decompression: .disabled
        )
        http.httpVersion = .http1Only
        // The client does not retry (see the type's documentation), and that includes
        // connecting: with AsyncHTTPClient's retries a refused connection would fail the request
        // only after the whole connect timeout, and `ping()` would take as long to say no.
        http.connectionPool.retryConnectionEstablishment = false
        self.http = HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: http)
    }

    /// Runs a statement that returns rows and answers the response body as text, in the format
    /// the statement asks for (`SELECT ... FORMAT TabSeparated`; the server's default is
    /// `TabSeparated`).
    ///
    /// The statement travels in the request body; `settings` (and the configured database) go
    /// as URL parameters. The server buffers the whole result before answering
    /// (`wait_end_of_query=1`, unless `settings` say otherwise), so an exception thrown half-way
    /// through a large result is a proper error, not an HTTP 200 with the exception appended.
    public func query(_ sql: String, settings: [String: String] = [:]) async throws(ClickHouseError) -> String {
        let response = try await self.send(
            statement: sql,
            parameters: self.parameters(query: nil, settings: ["wait_end_of_query": "1"].merging(settings) { $1 }),
            body: ByteBuffer(string: sql),
            responseLimit: self.configuration.maxResponseBytes
        )
        return String(buffer: response)
    }

    /// Runs a statement whose output does not matter (DDL, `OPTIMIZE`, `INSERT ... SELECT`).
    public func execute(_ sql: String, settings: [String: String] = [:]) async throws(ClickHouseError) {
        _ = try await self.send(
            statement: sql,
            parameters: self.parameters(query: nil, settings: ["wait_end_of_query": "1"].merging(settings) { $1 }),
            body: ByteBuffer(string: sql),
            responseLimit: Self.statementBodyLimit
        )
    }

    /// Inserts a block of rows: `sqlPrefix` is the statement up to the data
    /// (`INSERT INTO db.t FORMAT JSONEachRow`), sent as the `query` URL parameter; `body` is
    /// the data, gzip-compressed when larger than ``ClickHouseConfiguration/compressRequestsAbove``.
    ///
    /// ClickHouse parses up to `max_insert_block_size` rows (1,048,576 by default) before it
    /// writes them, so a smaller insert that is rejected writes none of its rows; larger bodies
    /// are written block by block. When the call fails with a retriable error the rows may or
    /// may not have been written: retry the same rows, and let the table deduplicate
    /// (`ReplacingMergeTree`, or insert deduplication on replicated tables).
    public func insert(
        _ sqlPrefix: String,
        body: [UInt8],
        settings: [String: String] = [:]
    ) async throws(ClickHouseError) {
        try await self.insert(sqlPrefix, body: ByteBuffer(bytes: body), settings: settings)
    }

    /// The same insert for data already in a `ByteBuffer`.
    public func insert(
        _ sqlPrefix: String,
        body: ByteBuffer,
        settings: [String: String] = [:]
    ) async throws(ClickHouseError) {
        _ = try await self.send(
            statement: sqlPrefix,
            parameters: self.parameters(query: sqlPrefix, settings: settings),
            body: body,
            responseLimit: Self.statementBodyLimit
        )
    }

    /// The server's version (`SELECT version()`), asked once and then remembered.
    public func serverVersion() async throws(ClickHouseError) -> ClickHouseVersion {
        if let version = self.cachedVersion.withLock({ $0 }) { return version }
        let text = try await self.query("SELECT version()")
        guard let version = ClickHouseVersion(parsing: text) else {
            throw ClickHouseError(.invalidResponse, message: "cannot parse the server version \"\(text.prefix(100))\"")
        }
        self.cachedVersion.withLock { $0 = version }
        return version
    }

    /// Whether the server answers `GET /ping` with `Ok.`. Needs no credentials.
    public func ping() async -> Bool {
        var request = HTTPClientRequest(url: self.baseURL + "/ping")
        request.method = .GET
        do {
            let response = try await self.http.execute(request, timeout: self.configuration.timeout.timeAmount)
            let body = try await response.body.collect(upTo: 1024)
            return response.status == .ok && String(buffer: body).hasPrefix("Ok.")
        } catch {
            return false
        }
    }

    /// Closes the pooled connections. Requests still running fail; the client cannot be used
    /// afterwards.
    public func shutdown() async throws {
        try await self.http.shutdown()
    }

    // MARK: - Requests

    /// The URL parameters of a request: the insert statement, the default database, then the
    /// settings in key order (a stable URL is easier to read in logs).
    func parameters(query: String?, settings: [String: String]) -> [(String, String)] {
        var parameters: [(String, String)] = []
        if let query { parameters.append(("query", query)) }
        if let database = self.configuration.database, settings["database"] == nil {
            parameters.append(("database", database))
        }
        for key in settings.keys.sorted() where key != "query" { parameters.append((key, settings[key]!)) }
        return parameters
    }

    /// Sends one POST and answers the body of a 200 response; anything else becomes a
    /// ``ClickHouseError``.
    private func send(
        statement: String,
        parameters: [(String, String)],
        body: ByteBuffer,
        responseLimit: Int
    ) async throws(ClickHouseError) -> ByteBuffer {
        if let setupError = self.setupError { throw setupError }
        let lowercased = self.baseURL.lowercased()
        guard lowercased.hasPrefix("http://") || lowercased.hasPrefix("https://") else {
            throw ClickHouseError(.invalidRequest, message: "the ClickHouse URL must start with http:// or https://")
        }
        if let authority = lowercased.split(separator: "/", maxSplits: 3).dropFirst().first, authority.contains("@") {
            throw ClickHouseError(
                .invalidRequest,
                message: "the ClickHouse URL must not carry credentials; configure user and password instead"
            )
        }

        var request = HTTPClientRequest(url: Self.url(base: self.baseURL, path: "/", parameters: parameters))
        request.method = .POST
        if let user = self.configuration.user ?? self.configuration.password.map({ _ in "default" }) {
            request.headers.add(name: "X-ClickHouse-User", value: user)
        }
        if let password = self.configuration.password {
            request.headers.add(name: "X-ClickHouse-Key", value: password)
        }
        var payload = body
        if let threshold = self.configuration.compressRequestsAbove, body.readableBytes > threshold {
            do {
                var input = body
                payload = try input.compress(with: .gzip(configuration: .init(compressionLevel: .fastestCompression)))
            } catch {
                throw ClickHouseError(
                    .invalidRequest,
                    message: "gzip compression of the request body failed",
                    cause: error
                )
            }
            request.headers.add(name: "Content-Encoding", value: "gzip")
        }
        request.body = .bytes(payload)

        let started = ContinuousClock.now
        let status: Int
        let headers: HTTPHeaders
        var received = ByteBuffer()
        var truncated = false
        do {
            let response = try await self.http.execute(request, timeout: self.configuration.timeout.timeAmount)
            status = Int(response.status.code)
            headers = response.headers
            let limit = status == 200 ? responseLimit : Self.errorBodyLimit
            for try await chunk in response.body {
                if received.readableBytes + chunk.readableBytes > limit {
                    truncated = true
                    break
                }
                received.writeImmutableBuffer(chunk)
            }
        } catch {
            let failure = self.transportError(error, elapsed: ContinuousClock.now - started)
            self.log(
                statement,
                bytes: body.readableBytes,
                sent: payload.readableBytes,
                started: started,
                error: failure
            )
            throw failure
        }

        let headerCode = headers.first(name: "X-ClickHouse-Exception-Code").flatMap { Int($0) }
        if status == 200 && headerCode == nil {
            if truncated {
                let failure = ClickHouseError(
                    .invalidResponse,
                    httpStatus: status,
                    message: "the response is larger than \(responseLimit) bytes"
                )
                self.log(
                    statement,
                    bytes: body.readableBytes,
                    sent: payload.readableBytes,
                    started: started,
                    error: failure
                )
                throw failure
            }
            self.log(statement, bytes: body.readableBytes, sent: payload.readableBytes, started: started, error: nil)
            return received
        }
        let parsed = ClickHouseError.parseException(String(buffer: received))
        let code = headerCode ?? parsed.code
        let message = parsed.message.isEmpty ? "HTTP \(status) without a message" : parsed.message
        let failure = ClickHouseError(
            code == nil ? .httpStatus : .server,
            code: code,
            httpStatus: status,
            message: self.redacted(message)
        )
        self.log(statement, bytes: body.readableBytes, sent: payload.readableBytes, started: started, error: failure)
        throw failure
    }

    /// Maps a failure of the HTTP client (no usable response) to a ``ClickHouseError``.
    private func transportError(_ error: any Error, elapsed: Duration) -> ClickHouseError {
        if let error = error as? HTTPClientError {
            switch error {
            case .deadlineExceeded, .readTimeout, .writeTimeout, .connectTimeout, .tlsHandshakeTimeout,
                .getConnectionFromPoolTimeout:
                return ClickHouseError(
                    .timedOut,
                    message: "no response from ClickHouse within \(self.configuration.timeout) (after \(elapsed))",
                    cause: error
                )
            case .invalidURL, .emptyHost, .emptyScheme, .alreadyShutdown:
                return ClickHouseError(.invalidRequest, message: self.redacted("cannot send the request: \(error)"))
            default:
                break
            }
        }
        return ClickHouseError(
            .transport,
            message: self.redacted("cannot reach ClickHouse at \(self.baseURL): \(error)"),
            cause: error
        )
    }

    /// `text` without the configured password, in case a server or a library ever echoes it.
    private func redacted(_ text: String) -> String {
        guard let password = self.configuration.password, !password.isEmpty else { return text }
        return text.replacing(password, with: "<redacted>")
    }

    private func log(
        _ statement: String,
        bytes: Int,
        sent: Int,
        started: ContinuousClock.Instant,
        error: ClickHouseError?
    ) {
        guard self.logger.logLevel <= .debug else { return }
        let elapsed = ContinuousClock.now - started
        var metadata: Logger.Metadata = [
            "clickhouse.statement": "\(statement.prefix(120))",
            "clickhouse.request_bytes": "\(bytes)",
            "clickhouse.sent_bytes": "\(sent)",
            "event.duration":
                "\(elapsed.nanoseconds)",
        ]
        if let error {
            metadata["error"] = "\(error)"
            self.logger.debug("clickhouse.request_failed", metadata: metadata)
        } else {
            self.logger.debug("clickhouse.request", metadata: metadata)
        }
    }

    // MARK: - URLs

    /// `base + path + "?" + parameters`, each name and value percent-encoded.
    static func url(base: String, path: String, parameters: [(String, String)]) -> String {
        var url = base + path
        for (index, (name, value)) in parameters.enumerated() {
            url += index == 0 ? "?" : "&"
            url += Self.percentEncoded(name) + "=" + Self.percentEncoded(value)
        }
        return url
    }

    /// Percent-encodes everything but RFC 3986's unreserved characters, byte by byte of UTF-8.
    static func percentEncoded(_ text: String) -> String {
        let hex = Array("0123456789ABCDEF".utf8)
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count)
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"),
                UInt8(ascii: "~"):
                bytes.append(byte)
            default:
                bytes += [UInt8(ascii: "%"), hex[Int(byte >> 4)], hex[Int(byte & 0x0F)]]
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

extension Duration {
    /// The duration as NIO's `TimeAmount`, saturating at about 292 years.
    fileprivate var timeAmount: TimeAmount { .nanoseconds(self.nanoseconds) }
}
