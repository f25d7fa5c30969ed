import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTLS
import Logging
import NIOCore
import NIOSSL
import Synchronization
import TestSupport

/// An identity provider's HTTPS endpoints for the tests: serves whatever document a test sets
/// for a path (a JWKS, RFC 8414 metadata), with a status, a `Cache-Control` and an optional
/// delay, and COUNTS the requests for each path, so tests can prove how many fetches happened.
final class JWKSTestServer: Sendable {
    struct Route: Sendable {
        var body: String
        var status: Int = 200
        var cacheControl: String?
        var delay: Duration?
    }

    private struct State {
        var routes: [String: Route] = [:]
        var hits: [String: Int] = [:]
    }

    private let state = Mutex(State())
    private let running = Mutex<Task<Void, any Error>?>(nil)
    /// The port on 127.0.0.1.
    var port: Int { self.boundPort.load(ordering: .acquiring) }
    private let boundPort = Atomic<Int>(0)
    /// A PEM file holding the CA that signed the server's certificate.
    let caFile: String

    /// `https://localhost:<port>`.
    var origin: String { "https://localhost:\(self.port)" }

    private init(caFile: String) {
        self.caFile = caFile
    }

    /// Starts a server with a fresh test CA written into `directory`.
    static func start(in directory: TemporaryDirectory) async throws -> JWKSTestServer {
        let pki = try TestPKI()
        let caFile = directory.path + "/jwks-ca.pem"
        try pki.caPEM.write(toFile: caFile, atomically: true, encoding: .utf8)
        let server = JWKSTestServer(caFile: caFile)

        let router = Router()
        router.get("**") { request, _ -> Response in
            let path = request.uri.path
            let route = server.state.withLock { state -> Route? in
                state.hits[path, default: 0] += 1
                return state.routes[path]
            }
            guard let route else { return Response(status: .notFound) }
            if let delay = route.delay { try await Task.sleep(for: delay) }
            var headers: HTTPFields = [.contentType: "application/json"]
            if let cacheControl = route.cacheControl { headers[.cacheControl] = cacheControl }
            return Response(
                status: HTTPResponse.Status(code: route.status),
                headers: headers,
                body: ResponseBody(byteBuffer: ByteBuffer(string: route.body))
            )
        }
        let tls = TLSConfiguration.makeServerConfiguration(
            certificateChain: [
                .certificate(try NIOSSLCertificate(bytes: Array(pki.serverCertificatePEM.utf8), format: .pem))
            ],
            privateKey: .privateKey(try NIOSSLPrivateKey(bytes: Array(pki.serverKeyPEM.utf8), format: .pem))
        )
        let (ports, portContinuation) = AsyncStream.makeStream(of: Int.self)
        let app = Application(
            router: router,
            server: try .tls(.http1(), tlsConfiguration: tls),
            configuration: ApplicationConfiguration(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { channel in
                portContinuation.yield(channel.localAddress?.port ?? 0)
                portContinuation.finish()
            },
            logger: Logger(label: "jwks-test-server", factory: { _ in SwiftLogNoOpLogHandler() })
        )
        let task = Task { try await app.runService(gracefulShutdownSignals: []) }
        server.running.withLock { $0 = task }
        var iterator = ports.makeAsyncIterator()
        guard let port = await iterator.next(), port > 0 else {
            task.cancel()
            throw CocoaError(.fileReadUnknown, userInfo: [NSLocalizedDescriptionKey: "the test server did not start"])
        }
        server.boundPort.store(port, ordering: .releasing)
        return server
    }

    /// Serves `route` at `path` from now on.
    func set(_ path: String, _ route: Route) {
        self.state.withLock { $0.routes[path] = route }
    }

    /// Serves `body` with status 200 at `path`.
    func set(_ path: String, body: String, cacheControl: String? = nil) {
        self.set(path, Route(body: body, cacheControl: cacheControl))
    }

    /// Answers `status` (with an empty JSON body) at `path`.
    func fail(_ path: String, status: Int = 500) {
        self.set(path, Route(body: "{}", status: status))
    }

    /// Requests received for `path`.
    func hits(_ path: String) -> Int {
        self.state.withLock { $0.hits[path, default: 0] }
    }

    func stop() async {
        let task = self.running.withLock { $0 }
        task?.cancel()
        _ = try? await task?.value
    }
}
