import EventModel
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Ledger
import NIOCore
import Testing

@testable import Gateway

/// Receipts and ack levels at the HTTP layer, over a real WAL; the book is fed the ledger
/// records a forwarder and a loader would make (the end-to-end test has the real ones).
@Suite struct ReceiptTests {
    static let event = #"{"action":"click","user_id":"u1","object":"buy"}"#

    static func gateway(maxWait: Duration = .seconds(5)) async throws -> (TestGateway, ReceiptBook) {
        var gateway = try await TestGateway.make()
        let book = ReceiptBook(retentionMillis: 3_600_000, clock: { 0 })
        gateway.receipts = GatewayReceipts(
            book: book,
            gatewayID: "gw-test",
            key: Array(repeating: 7, count: 32),
            maxWait: maxWait
        )
        return (gateway, book)
    }

    static func forwarded(_ lsns: Range<UInt64>) -> LedgerRecord {
        .forwarded(
            .init(
                gateway: "gw-test",
                from: lsns.lowerBound,
                to: lsns.upperBound,
                placements: [
                    .init(
                        topic: "events",
                        partition: 0,
                        pairs: PairList(lsns.map { .init(lsn: $0, offset: Int64($0)) })
                    )
                ],
                atMillis: 0
            )
        )
    }

    static func json(_ response: TestResponse) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(response.text.utf8)) as? [String: Any])
    }

    @Test func everyAnswerCarriesAReceiptOfItsLSNs() async throws {
        let (gateway, _) = try await Self.gateway()
        try await gateway.test { client in
            for (index, count) in [1, 3].enumerated() {
                let body = Array(repeating: Self.event, count: count).joined(separator: "\n")
                let response = try await client.execute(
                    uri: "/v1/events/batch",
                    method: .post,
                    headers: [.contentType: "application/x-ndjson"],
                    body: ByteBuffer(string: body)
                )
                #expect(response.status == .accepted)
                let answer = try Self.json(response)
                let receipt = try #require(answer["receipt"] as? String)
                #expect(response.headers[AckRequest.receiptHeader] == receipt)
                #expect(answer["ack"] as? [String: String] == ["requested": "durable", "reached": "durable"])
                let id = try #require(ReceiptID.parse(receipt, principal: "anonymous", key: gateway.receipts!.key))
                #expect(id == ReceiptID(gateway: "gw-test", first: index == 0 ? 0 : 1, count: count))
            }
        }
    }

    @Test func aRequestWaitsForItsLevelAndAnswers202WithWhatItReachedAtTheDeadline() async throws {
        let (gateway, book) = try await Self.gateway()
        try await gateway.test { client in
            // The forwarder reports the event in Kafka a moment after the append.
            let reporter = Task {
                try await waitUntil(timeout: .seconds(10)) {
                    book.places(gateway: "gw-test", lsns: 0..<1) == [.durable]
                        && (try? gateway.storedEvents().count) == 1
                }
                book.record(Self.forwarded(0..<1))
            }
            let replicated = try await client.execute(
                uri: "/v1/events?ack=replicated",
                method: .post,
                headers: [.contentType: "application/json"],
                body: ByteBuffer(string: Self.event)
            )
            try await reporter.value
            #expect(replicated.status == .accepted)
            #expect(
                try Self.json(replicated)["ack"] as? [String: String] == [
                    "requested": "replicated", "reached": "replicated",
                ]
            )

            // Nothing loads it: after its 200 ms the answer says how far it got, still a 202.
            let started = ContinuousClock.now
            let queryable = try await client.execute(
                uri: "/v1/events",
                method: .post,
                headers: [
                    .contentType: "application/json", AckRequest.header: "queryable", AckRequest.timeoutHeader: "200ms",
                ],
                body: ByteBuffer(string: Self.event)
            )
            #expect(ContinuousClock.now - started >= .milliseconds(200))
            #expect(queryable.status == .accepted)
            #expect(
                try Self.json(queryable)["ack"] as? [String: String] == [
                    "requested": "queryable", "reached": "durable",
                ]
            )
        }
        #expect(try gateway.storedEvents().count == 2)
    }

    @Test func aWrongAckIsRefusedBeforeAnythingIsStored() async throws {
        let (gateway, _) = try await Self.gateway()
        try await gateway.test { client in
            for query in ["ack=fast", "ack=queryable&ack_timeout=soon"] {
                let response = try await client.execute(
                    uri: "/v1/events?\(query)",
                    method: .post,
                    headers: [.contentType: "application/json"],
                    body: ByteBuffer(string: Self.event)
                )
                #expect(response.status == .badRequest)
                #expect(
                    response.text.contains(
                        query.hasSuffix("soon") ? "ack_timeout 'soon' is not a duration" : "ack 'fast' is not a level"
                    )
                )
            }
        }
        #expect(try gateway.storedEvents().isEmpty)

        // A gateway without the ledger cannot promise more than durable.
        let plain = try await TestGateway.make()
        try await plain.test { client in
            let refused = try await client.execute(
                uri: "/v1/events?ack=replicated",
                method: .post,
                headers: [.contentType: "application/json"],
                body: ByteBuffer(string: Self.event)
            )
            #expect(refused.status == .badRequest)
            #expect(refused.text.contains("ack_unavailable"))
            let durable = try await client.execute(
                uri: "/v1/events?ack=durable",
                method: .post,
                headers: [.contentType: "application/json"],
                body: ByteBuffer(string: Self.event)
            )
            #expect(durable.status == .accepted)
            #expect(!durable.text.contains("receipt"))
        }
        #expect(try plain.storedEvents().count == 1)
    }

    @Test func aReceiptSaysWhereEachEventIsAndOnlyToItsSender() async throws {
        let (gateway, book) = try await Self.gateway()
        try await gateway.test { client in
            let posted = try await client.execute(
                uri: "/v1/events/batch",
                method: .post,
                headers: [.contentType: "application/x-ndjson"],
                body: ByteBuffer(string: [Self.event, Self.event].joined(separator: "\n"))
            )
            let receipt = try #require(try Self.json(posted)["receipt"] as? String)
            book.record(Self.forwarded(0..<2))
            book.apply([
                .loaded(
                    .init(
                        group: "g",
                        topic: "events",
                        partition: 0,
                        from: 0,
                        to: 1,
                        table: "sluice.events",
                        deadLetterTopic: "events.dlq",
                        rows: [.init(gateway: "gw-test", pairs: PairList([.init(lsn: 0, offset: 0)]))],
                        atMillis: 0
                    )
                )
            ])
            let status = try await client.execute(uri: "/v1/receipts/\(receipt)", method: .get)
            #expect(status.status == .ok)
            let answer = try Self.json(status)
            #expect(answer["reached"] as? String == "replicated")
            let events = try #require(answer["events"] as? [[String: Any]])
            #expect(events.map { $0["state"] as? String } == ["queryable", "replicated"])
            #expect(events.first?["table"] as? String == "sluice.events")
            #expect(events.last?["offset"] as? Int == 1)

            // Changed by one character, or read by another principal: no such receipt.
            var tampered = receipt
            tampered.replaceSubrange(
                tampered.index(tampered.startIndex, offsetBy: 8)...tampered.index(tampered.startIndex, offsetBy: 8),
                with: "9"
            )
            for bad in [tampered, "r1.x", "nothing"] {
                #expect(try await client.execute(uri: "/v1/receipts/\(bad)", method: .get).status == .notFound)
            }
        }
        let key = gateway.receipts!.key
        let id = ReceiptID(gateway: "gw-test", first: 0, count: 2)
        #expect(ReceiptID.parse(id.text(principal: "key:a", key: key), principal: "key:a", key: key) == id)
        #expect(ReceiptID.parse(id.text(principal: "key:a", key: key), principal: "key:b", key: key) == nil)
    }
}
