import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NIOSSL
import Synchronization

/// Events sent to a gateway the way a client sends them: one JSON event to `/v1/events`, or an
/// NDJSON batch to `/v1/events/batch`, with the credential the test holds.
public struct EventPoster: Sendable {
    /// The gateway's base URL (`http://127.0.0.1:PORT`).
    public var url: String
    /// The `Authorization` header of every request (`Bearer slk_…`), or none.
    public var authorization: String?
    public let client: HTTPClient

    public init(url: String, authorization: String? = nil, client: HTTPClient = .shared) {
        self.url = url
        self.authorization = authorization
        self.client = client
    }

    /// What the gateway answered.
    public struct Answer: Sendable {
        public var status: HTTPResponseStatus
        public var headers: HTTPHeaders
        public var body: String
    }

    /// Posts `event` (a JSON object) to `/v1/events`.
    public func post(_ event: String, timeout: Duration = .seconds(10)) async throws -> Answer {
        try await self.send("/v1/events", contentType: "application/json", body: event, timeout: timeout)
    }

    /// Posts `events` (JSON objects) as one NDJSON batch to `/v1/events/batch`.
    public func postBatch(_ events: [String], timeout: Duration = .seconds(10)) async throws -> Answer {
        try await self.send(
            "/v1/events/batch",
            contentType: "application/x-ndjson",
            body: events.joined(separator: "\n"),
            timeout: timeout
        )
    }

    /// Posts `count` events with fresh ids (``event(id:action:userID:)``) as one batch; the ids
    /// and the answer.
    public func postFresh(
        _ count: Int,
        action: String = "click",
        userID: String = "u1",
        timeout: Duration = .seconds(10)
    ) async throws -> (ids: [String], answer: Answer) {
        let ids = (0..<count).map { _ in Self.freshID() }
        let answer = try await self.postBatch(
            ids.map { Self.event(id: $0, action: action, userID: userID) },
            timeout: timeout
        )
        return (ids, answer)
    }

    private func send(
        _ path: String,
        contentType: String,
        body: String,
        timeout: Duration
    ) async throws -> Answer {
        var request = HTTPClientRequest(url: self.url + path)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: contentType)
        if let authorization = self.authorization { request.headers.add(name: "Authorization", value: authorization) }
        request.body = .bytes(ByteBuffer(string: body))
        let response = try await self.client.execute(request, timeout: .init(timeout))
        let text = String(buffer: try await response.body.collect(upTo: 1 << 20))
        return Answer(status: response.status, headers: response.headers, body: text)
    }

    /// An event as a shop's page sends it, with `id` as its `event_id` (so that the test can
    /// find it in the WAL, Kafka or ClickHouse).
    public static func event(id: String, action: String = "click", userID: String = "u1") -> String {
        #"{"action":"\#(action)","user_id":"\#(userID)","page":"https://shop.example/","event_id":"\#(id)"}"#
    }

    /// A new, unique event id.
    public static func freshID() -> String { UUID().uuidString.lowercased() }

    /// An HTTP client that trusts the CA in `caFile` (and only it), for a gateway with a test
    /// certificate. The caller shuts it down.
    public static func client(trusting caFile: String) -> HTTPClient {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .file(caFile)
        return KeptClients.keep(
            HTTPClient(
                eventLoopGroupProvider: .singleton,
                configuration: HTTPClient.Configuration(tlsConfiguration: tls)
            )
        )
    }
}

/// A steady load of events with unique ids, posted as NDJSON batches by concurrent workers to
/// whichever gateway is current (``target``), until ``stop()``. It remembers every id sent,
/// every id acknowledged (202) and every answer's timing: what crash and shutdown tests check
/// the WAL, Kafka or ClickHouse against.
public final class SteadyLoad: Sendable {
    /// One request that got an answer: when it was sent, when the answer came, its status.
    public struct Exchange: Sendable {
        public var sent: ContinuousClock.Instant
        public var answered: ContinuousClock.Instant
        public var status: UInt
    }

    private struct State {
        var target: String?
        var authorization: String?
        var attempted: Set<String> = []
        var acknowledged: Set<String> = []
        var failedRequests = 0
        var exchanges: [Exchange] = []
        var stopped = false
    }

    private let state: Mutex<State>
    private let client: HTTPClient
    private let action: String

    /// A load on `target` (none yet: the workers wait for one), sending `authorization`.
    public init(
        client: HTTPClient = .shared,
        target: String? = nil,
        authorization: String? = nil,
        action: String = "load"
    ) {
        self.client = client
        self.action = action
        self.state = Mutex(State(target: target, authorization: authorization))
    }

    /// The gateway's base URL; nil while it is down (the workers wait).
    public var target: String? {
        get { self.state.withLock { $0.target } }
        set { self.state.withLock { $0.target = newValue } }
    }

    /// The `Authorization` header every request carries.
    public var authorization: String? {
        get { self.state.withLock { $0.authorization } }
        set { self.state.withLock { $0.authorization = newValue } }
    }

    /// Every event id sent, whatever the answer.
    public var attempted: Set<String> { self.state.withLock { $0.attempted } }
    /// Every event id in a batch answered 202.
    public var acknowledged: Set<String> { self.state.withLock { $0.acknowledged } }
    public var acknowledgedCount: Int { self.state.withLock { $0.acknowledged.count } }
    /// Requests answered with another status, or not answered at all.
    public var failedRequests: Int { self.state.withLock { $0.failedRequests } }
    /// Every answered request, in the order the answers came.
    public var exchanges: [Exchange] { self.state.withLock { $0.exchanges } }

    /// Ends ``run(workers:batch:pause:)`` once each worker's request in flight is answered.
    public func stop() { self.state.withLock { $0.stopped = true } }

    /// `workers` concurrent posters, each sending batches of `batch` events (a size drawn per
    /// request) back to back, `pause` apart, until ``stop()``.
    public func run(workers: Int = 4, batch: ClosedRange<Int> = 25...25, pause: Duration = .zero) async {
        await withTaskGroup(of: Void.self) { group in
            for worker in 0..<workers {
                group.addTask { await self.post(worker: worker, batch: batch, pause: pause) }
            }
        }
    }

    private func post(worker: Int, batch: ClosedRange<Int>, pause: Duration) async {
        while true {
            let (stopped, target, authorization) = self.state.withLock { ($0.stopped, $0.target, $0.authorization) }
            if stopped { return }
            guard let target else {
                try? await Task.sleep(for: .milliseconds(50))
                continue
            }
            let poster = EventPoster(url: target, authorization: authorization, client: self.client)
            let ids = (0..<Int.random(in: batch)).map { _ in EventPoster.freshID() }
            self.state.withLock { $0.attempted.formUnion(ids) }
            let sent = ContinuousClock.now
            do {
                let answer = try await poster.postBatch(
                    ids.map { EventPoster.event(id: $0, action: self.action, userID: "w\(worker)") },
                    timeout: .seconds(5)
                )
                let exchange = Exchange(sent: sent, answered: .now, status: answer.status.code)
                self.state.withLock {
                    $0.exchanges.append(exchange)
                    if answer.status == .accepted { $0.acknowledged.formUnion(ids) } else { $0.failedRequests += 1 }
                }
            } catch {
                self.state.withLock { $0.failedRequests += 1 }
                // A gateway that is down refuses at once: no busy loop meanwhile.
                try? await Task.sleep(for: max(pause, .milliseconds(5)))
                continue
            }
            if pause > .zero { try? await Task.sleep(for: pause) }
        }
    }
}
