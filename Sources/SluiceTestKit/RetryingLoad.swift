import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import Synchronization

/// A load of NDJSON batches from clients that do what a careful SDK does: a batch answered
/// with a 5xx, or not answered at all (connection refused or reset, timeout), is sent again —
/// the same events with the same `event_id`s and timestamps — until a 2xx comes. So an event
/// is either acknowledged or still being retried; none is given up on. What a scale-out test
/// checks ClickHouse against.
///
/// A 4xx is not retried (the request is wrong; retrying would not help) and is counted in
/// ``rejectedRequests``.
public final class RetryingLoad: Sendable {
    private struct State {
        var acknowledged: Set<String> = []
        var attempted: Set<String> = []
        var retries = 0
        var rejectedRequests = 0
        var answers: [UInt: Int] = [:]
        var connectionErrors = 0
        var stopped: ContinuousClock.Instant?
        var abandonedBatches = 0
    }

    private let state = Mutex(State())
    private let client: HTTPClient
    private let url: String
    private let authorization: String?
    private let action: String

    /// A load on `url` (the balancer) with `authorization` on every request.
    public init(client: HTTPClient, url: String, authorization: String?, action: String = "scale-out") {
        self.client = client
        self.url = url
        self.authorization = authorization
        self.action = action
    }

    /// Every event id answered with a 2xx.
    public var acknowledged: Set<String> { self.state.withLock { $0.acknowledged } }
    public var acknowledgedCount: Int { self.state.withLock { $0.acknowledged.count } }
    /// Every event id sent at least once.
    public var attempted: Set<String> { self.state.withLock { $0.attempted } }
    /// Requests sent again after a 5xx or a connection error.
    public var retries: Int { self.state.withLock { $0.retries } }
    /// Requests answered with a 4xx.
    public var rejectedRequests: Int { self.state.withLock { $0.rejectedRequests } }
    /// How many answers came with each status.
    public var answers: [UInt: Int] { self.state.withLock { $0.answers } }
    /// Requests that got no answer (refused, reset, timed out).
    public var connectionErrors: Int { self.state.withLock { $0.connectionErrors } }

    /// Batches still unacknowledged a minute after ``stop()`` (nothing answered any more: the
    /// test failed); a passing test has none.
    public var abandonedBatches: Int { self.state.withLock { $0.abandonedBatches } }

    /// Ends ``run(workers:batch:)`` once every worker's batch in hand is acknowledged (or
    /// rejected), or a minute from now.
    public func stop() { self.state.withLock { $0.stopped = $0.stopped ?? .now } }

    /// `workers` concurrent clients sending batches of `batch` events back to back until
    /// ``stop()``.
    public func run(workers: Int, batch: Int) async {
        await withTaskGroup(of: Void.self) { group in
            for worker in 0..<workers {
                group.addTask { await self.post(worker: worker, batch: batch) }
            }
        }
    }

    private func post(worker: Int, batch: Int) async {
        while self.state.withLock({ $0.stopped == nil }) {
            let ids = (0..<batch).map { _ in EventPoster.freshID() }
            let timestamp = ISO8601DateFormatter().string(from: Date())
            let body = ids.map {
                #"{"action":"\#(self.action)","user_id":"w\#(worker)","page":"https://shop.example/","#
                    + #""event_id":"\#($0)","timestamp":"\#(timestamp)"}"#
            }.joined(separator: "\n")
            self.state.withLock { $0.attempted.formUnion(ids) }
            var backoff = Duration.milliseconds(20)
            while true {
                let abandoned = self.state.withLock { state -> Bool in
                    guard let stopped = state.stopped, ContinuousClock.now - stopped > .seconds(60) else {
                        return false
                    }
                    state.abandonedBatches += 1
                    return true
                }
                if abandoned { break }
                var request = HTTPClientRequest(url: self.url + "/v1/events/batch")
                request.method = .POST
                request.headers.add(name: "Content-Type", value: "application/x-ndjson")
                if let authorization = self.authorization {
                    request.headers.add(name: "Authorization", value: authorization)
                }
                request.body = .bytes(ByteBuffer(string: body))
                do {
                    let response = try await self.client.execute(request, timeout: .seconds(10))
                    _ = try await response.body.collect(upTo: 1 << 20)
                    let code = response.status.code
                    let done = self.state.withLock { state -> Bool in
                        state.answers[code, default: 0] += 1
                        switch code {
                        case 200..<300:
                            state.acknowledged.formUnion(ids)
                            return true
                        case 400..<500:
                            state.rejectedRequests += 1
                            return true
                        default:
                            state.retries += 1
                            return false
                        }
                    }
                    if done { break }
                } catch {
                    self.state.withLock {
                        $0.connectionErrors += 1
                        $0.retries += 1
                    }
                }
                try? await Task.sleep(for: backoff)
                backoff = min(backoff * 2, .milliseconds(500))
            }
        }
    }
}
