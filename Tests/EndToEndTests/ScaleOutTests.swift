import AsyncHTTPClient
import Foundation
import LocalClickHouse
import NIOHTTP1
import TestSupport
import Testing

/// Several gateways, each on a host of its own (a network namespace with its own address),
/// behind HAProxy with the shipped `ops/haproxy/sluice.cfg`, with the real loader, ClickHouse
/// and librdkafka's mock cluster: what docs/scale-out.md promises, shown on this machine.
@Suite(
    .enabled(if: TestNetwork.isAvailable, "needs root, iproute2's ip and haproxy"),
    .timeLimit(.minutes(10))
)
struct ScaleOutTests {
    /// Clients that retry on 5xx and connection errors send through the balancer while one of
    /// three gateways is SIGKILLed and, later, restarted on its WAL. The balancer takes it out
    /// (its /readyz stops answering) and back; the other two carry the load meanwhile. Every
    /// event that got a 2xx is in ClickHouse exactly once after deduplication, and nothing the
    /// clients did not send is there.
    @Test func everyAcknowledgedEventIsInClickHouseOnceWhileAGatewayIsKilledAndRestarted() async throws {
        let pipeline = try await ScaleOutPipeline.start(gateways: 3)
        defer { pipeline.load.stop() }
        let fleet = pipeline.fleet
        try await pipeline.progress(by: 1_500)

        try await fleet.killGateway(0)
        try await fleet.balancer.waitForState("DOWN", of: [GatewayFleet.serverName(0)])
        // While it is down, the two others take every request.
        try await pipeline.progress(by: 1_500)

        try await fleet.startGateway(0)
        try await fleet.waitUntilBalancerSees(up: [0])
        let servedBeforeRestart = try await pipeline.successes(of: 0)
        try await pipeline.progress(by: 1_500)
        // The restarted gateway is back in rotation.
        try await waitUntil(timeout: .seconds(30), pollEvery: .milliseconds(100)) {
            try await pipeline.successes(of: 0) > servedBeforeRestart
        }

        // Whether the kill cost a request a retry depends on what was in flight on it (the
        // balancer itself sends refused connections elsewhere); the counts are printed.
        try await pipeline.finish()
    }

    /// One of two gateways loses its Kafka link (the veth is taken down; its front link stays
    /// up). It stays ready and keeps taking events into its WAL — from the balancer and from a
    /// client that talks to it directly — while the other gateway's events keep reaching
    /// ClickHouse; once the link is back it forwards its backlog, and every acknowledged event
    /// is in ClickHouse exactly once.
    @Test func aGatewayCutOffFromKafkaKeepsAcceptingAndCatchesUpWhileTheOtherCarriesOn() async throws {
        let pipeline = try await ScaleOutPipeline.start(gateways: 2)
        defer { pipeline.load.stop() }
        let fleet = pipeline.fleet
        try await pipeline.progress(by: 1_000)

        let host = fleet.network.hosts[0]
        try await host.setKafkaLink(up: false)
        try await fleet.relay.waitForState("DOWN", of: fleet.kafkaLinkServers(0))
        let cutAt = ContinuousClock.now

        // Straight to the cut gateway: it still acknowledges, into its WAL.
        let direct = EventPoster(
            url: fleet.directURL(0),
            authorization: "Bearer \(fleet.key)",
            client: pipeline.client
        )
        var stranded: Set<String> = []
        for _ in 0..<5 {
            let (ids, answer) = try await direct.postFresh(20, action: "scale-out")
            #expect(answer.status == .accepted, "\(answer.body)")
            stranded.formUnion(ids)
        }
        // The other gateway's events keep arriving, through the balancer, from the same load.
        let otherBefore = try await pipeline.rows(of: 1)
        try await waitUntil(timeout: .seconds(60), pollEvery: .milliseconds(250)) {
            try await pipeline.rows(of: 1) >= otherBefore + 500
        }
        let servedWhileCut = try await pipeline.successes(of: 0)
        try await pipeline.progress(by: 500)
        #expect(try await pipeline.successes(of: 0) > servedWhileCut, "the balancer still sends to the cut gateway")
        #expect(try await fleet.balancer.serverStates()[GatewayFleet.serverName(0)] == "UP")
        // Nothing of the cut gateway's crossed the dead link.
        #expect(await pipeline.analyst.eventIDs().isDisjoint(with: stranded))
        #expect(ContinuousClock.now - cutAt >= .seconds(2))

        try await host.setKafkaLink(up: true)
        try await fleet.relay.waitUntilUp(fleet.kafkaLinkServers(0))
        try await waitUntil(timeout: .seconds(120), pollEvery: .milliseconds(500)) {
            stranded.isSubset(of: await pipeline.analyst.eventIDs())
        }
        try await pipeline.finish(alsoAcknowledged: stranded)
    }
}

/// What both tests run: the mock Kafka cluster (`sluice dev-kafka`), ClickHouse, a
/// ``GatewayFleet``, `sluice loader`, and a ``RetryingLoad`` through the balancer.
private struct ScaleOutPipeline {
    let kafka: DevKafka
    let clickHouse: ClickHouseServer
    let fleet: GatewayFleet
    let loader: SluiceProcess
    let client: HTTPClient
    let load: RetryingLoad
    let posting: Task<Void, Never>
    let analyst: Analyst

    static func start(gateways: Int) async throws -> ScaleOutPipeline {
        let kafka = try await DevKafka.start(brokers: 3, topics: ["events:6"])
        let clickHouse = try await ClickHouseServer.start()
        let fleet: GatewayFleet
        do {
            fleet = try await GatewayFleet.start(gateways: gateways, bootstrapServers: kafka.bootstrapServers)
        } catch {
            clickHouse.stop()
            throw error
        }
        let loader = try SluiceProcess(
            ["loader", "--kafka-bootstrap", kafka.bootstrapServers, "--clickhouse-url", clickHouse.httpURL],
            environment: [
                "SLUICE_KAFKA_PROPERTIES_LOG__LEVEL": "2", "SLUICE_LOGGING_LEVEL": "warning",
                "SLUICE_LOADER_BATCH_AGE": "250ms",
            ]
        )
        let client = fleet.client()
        let load = RetryingLoad(client: client, url: fleet.url, authorization: "Bearer \(fleet.key)")
        let posting = Task { await load.run(workers: 4, batch: 20) }
        return ScaleOutPipeline(
            kafka: kafka,
            clickHouse: clickHouse,
            fleet: fleet,
            loader: loader,
            client: client,
            load: load,
            posting: posting,
            analyst: Analyst(url: clickHouse.httpURL)
        )
    }

    /// Waits until `count` more events are acknowledged.
    func progress(by count: Int) async throws {
        let target = self.load.acknowledgedCount + count
        try await waitUntil(timeout: .seconds(120), pollEvery: .milliseconds(50)) {
            self.load.acknowledgedCount >= target
        }
    }

    /// Requests gateway `index` answered with a 2xx through the balancer, by HAProxy's count.
    func successes(of index: Int) async throws -> Int {
        let row = try await self.fleet.balancer.serverStatistics()[GatewayFleet.serverName(index)]
        return Int(row?["hrsp_2xx"] ?? "") ?? 0
    }

    /// Rows in ClickHouse written by gateway `index`.
    func rows(of index: Int) async throws -> Int {
        (try? await self.analyst.number(
            "SELECT count() FROM sluice.events WHERE gateway_id = '\(GatewayFleet.gatewayID(index))'"
        )) ?? 0
    }

    /// Stops the load, waits for every acknowledged event (and `extra`) in ClickHouse, checks
    /// that each is there exactly once and nothing else is, and stops every process.
    func finish(alsoAcknowledged extra: Set<String> = []) async throws {
        self.load.stop()
        await self.posting.value
        defer { self.clickHouse.stop() }
        let acknowledged = self.load.acknowledged.union(extra)
        let attempted = self.load.attempted.union(extra)
        var loaded: Set<String> = []
        do {
            try await waitUntil(timeout: .seconds(180), pollEvery: .seconds(1)) {
                loaded = await self.analyst.eventIDs()
                return acknowledged.isSubset(of: loaded)
            }
        } catch {
            Issue.record(
                "not every acknowledged event arrived: \(error)\nloader: \(self.loader.standardOutput.suffix(3000))"
            )
        }
        let rowsAfterDeduplication = try await self.analyst.number("SELECT count() FROM sluice.events FINAL")
        let distinct = try await self.analyst.number("SELECT uniqExact(event_id) FROM sluice.events")
        let perGateway = try await self.analyst.rows(
            "SELECT gateway_id, uniqExact(event_id) FROM sluice.events GROUP BY gateway_id ORDER BY gateway_id"
        )
        print(
            """
            scale-out: \(attempted.count) events sent, \(acknowledged.count) acknowledged, \
            \(self.load.retries) retries (\(self.load.connectionErrors) without an answer), answers \
            \(self.load.answers.sorted { $0.key < $1.key }); ClickHouse: \(rowsAfterDeduplication) rows after \
            deduplication, \(distinct) distinct ids, per gateway \(perGateway)
            """
        )
        #expect(acknowledged.subtracting(loaded).isEmpty, "acknowledged but missing")
        #expect(loaded.subtracting(attempted).isEmpty, "in ClickHouse but never sent")
        #expect(rowsAfterDeduplication == distinct, "an event is in ClickHouse more than once")
        #expect(self.load.rejectedRequests == 0)
        #expect(self.load.abandonedBatches == 0)
        #expect(perGateway.count == self.fleet.network.hosts.count, "every gateway took a share")

        try await self.client.shutdown()
        await self.analyst.shutdown()
        #expect(try await self.fleet.stopGateways().allSatisfy { $0 == 0 })
        self.loader.signal(SIGTERM)
        #expect(try await self.loader.waitForExit() == 0)
        _ = try await self.kafka.stop()
    }
}
