import AsyncHTTPClient
import ClickHouse
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import Synchronization
import TestSupport

/// A steady load of events with unique ids, posted as NDJSON batches to whichever gateway is
/// current (``target``), remembering which ids were sent and which got a 2xx.
final class SteadyLoad: Sendable {
    /// The gateway's base URL; nil while it is down (the workers wait).
    let target = Mutex<String?>(nil)
    let attempted = Mutex<Set<String>>([])
    let acknowledged = Mutex<Set<String>>([])
    let failedRequests = Mutex<Int>(0)
    private let stopped = Mutex(false)

    var acknowledgedCount: Int { self.acknowledged.withLock { $0.count } }

    func stop() { self.stopped.withLock { $0 = true } }

    /// `workers` concurrent posters, each sending `batch` events then pausing `pause`, until
    /// ``stop()``.
    func run(client: HTTPClient, workers: Int = 4, batch: Int = 25, pause: Duration = .milliseconds(20)) async {
        await withTaskGroup(of: Void.self) { group in
            for worker in 0..<workers {
                group.addTask { await self.post(client: client, worker: worker, batch: batch, pause: pause) }
            }
        }
    }

    private func post(client: HTTPClient, worker: Int, batch: Int, pause: Duration) async {
        while !self.stopped.withLock({ $0 }) {
            guard let url = self.target.withLock({ $0 }) else {
                try? await Task.sleep(for: .milliseconds(50))
                continue
            }
            let ids = (0..<batch).map { _ in UUID().uuidString.lowercased() }
            let body = ids.map {
                #"{"action":"e2e","user_id":"w\#(worker)","page":"https://shop.example/","event_id":"\#($0)"}"#
            }.joined(separator: "\n")
            self.attempted.withLock { $0.formUnion(ids) }
            var request = HTTPClientRequest(url: url + "/v1/events/batch")
            request.method = .POST
            request.headers.add(name: "Content-Type", value: "application/x-ndjson")
            request.body = .bytes(ByteBuffer(string: body))
            do {
                let response = try await client.execute(request, timeout: .seconds(5))
                _ = try await response.body.collect(upTo: 1 << 20)
                if response.status == .accepted {
                    self.acknowledged.withLock { $0.formUnion(ids) }
                } else {
                    self.failedRequests.withLock { $0 += 1 }
                }
            } catch {
                self.failedRequests.withLock { $0 += 1 }
            }
            try? await Task.sleep(for: pause)
        }
    }
}

/// Queries a ClickHouse server the way an analyst would, over HTTP.
struct Analyst {
    let client: ClickHouseClient

    init(url: String) {
        var logger = Logger(label: "test.clickhouse")
        logger.logLevel = .critical
        self.client = ClickHouseClient(ClickHouseConfiguration(url: url, timeout: .seconds(10)), logger: logger)
    }

    func rows(_ sql: String) async throws -> [String] {
        try await self.client.query(sql + " FORMAT TabSeparated").split(separator: "\n").map(String.init)
    }

    func number(_ sql: String) async throws -> Int {
        guard let first = try await self.rows(sql).first, let value = Int(first) else {
            throw SluiceProcessError(description: "\(sql) did not return a number")
        }
        return value
    }

    /// The distinct event ids in `table`; empty while the table does not exist.
    func eventIDs(_ table: String = "sluice.events") async -> Set<String> {
        (try? await Set(self.rows("SELECT DISTINCT event_id FROM \(table)"))) ?? []
    }

    func shutdown() async { try? await self.client.shutdown() }
}

/// Every process whose command line mentions `text` (to find what a test left running).
func processes(mentioning text: String) -> [Int32] {
    guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
    return entries.compactMap { entry in
        guard let pid = Int32(entry), pid != getpid(),
            let commandLine = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline")
        else { return nil }
        return String(decoding: commandLine, as: UTF8.self).contains(text) ? pid : nil
    }
}
