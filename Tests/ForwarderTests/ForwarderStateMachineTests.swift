import Kafka
import Synchronization
import Testing
import WAL

@testable import Forwarder

/// A clock that moves only when a test says so; sleepers wake when it passes their deadline.
final class TestClock: Clock, Sendable {
    struct Instant: InstantProtocol {
        var offset: Swift.Duration

        func advanced(by duration: Swift.Duration) -> Instant { Instant(offset: self.offset + duration) }
        func duration(to other: Instant) -> Swift.Duration { other.offset - self.offset }
        static func < (lhs: Instant, rhs: Instant) -> Bool { lhs.offset < rhs.offset }
    }

    private struct State {
        var now = Instant(offset: .zero)
        var sleepers: [(deadline: Instant, continuation: CheckedContinuation<Void, Never>)] = []
    }

    private let state = Mutex(State())
    let minimumResolution: Swift.Duration = .zero

    var now: Instant { self.state.withLock { $0.now } }

    func advance(by duration: Swift.Duration) {
        let due = self.state.withLock { state in
            state.now = state.now.advanced(by: duration)
            let now = state.now
            let due = state.sleepers.filter { $0.deadline <= now }
            state.sleepers.removeAll { $0.deadline <= now }
            return due
        }
        for sleeper in due { sleeper.continuation.resume() }
    }

    func sleep(until deadline: Instant, tolerance: Swift.Duration?) async throws {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let due = self.state.withLock { state -> Bool in
                if deadline <= state.now { return true }
                state.sleepers.append((deadline, continuation))
                return false
            }
            if due { continuation.resume() }
        }
    }
}

/// The forwarder's rules, one at a time, with a test clock: no broker, no disk, no sleep.
/// Waiters are names, so a test sees exactly whom the machine wakes.
@Suite struct ForwarderStateMachineTests {
    typealias Machine = ForwarderStateMachine<TestClock, String>

    static func machine(maxInFlight: Int = 100) -> Machine {
        Machine(policy: .init(maxInFlightEvents: maxInFlight))
    }

    /// Starts a pass (``ForwarderStateMachine/startPass(cursor:)``), failing the test if none starts.
    static func start(_ machine: inout Machine, cursor: LSN) throws -> Int {
        let generation = machine.startPass(cursor: cursor)
        return try #require(generation, "no pass started")
    }

    static func events(_ count: Int, from first: Int = 0) -> [[UInt8]] {
        (first..<first + count).map { Array("e\($0)".utf8) }
    }

    static func ok(_ lsn: UInt64) -> DeliveryReport {
        DeliveryReport(id: lsn, topic: "events", partition: 0, offset: Int64(lsn))
    }

    static func failed(_ lsn: UInt64, _ code: KafkaError.Code) -> DeliveryReport {
        DeliveryReport(id: lsn, topic: "events", partition: 0, offset: -1, error: KafkaError(code, "test"))
    }

    @Test func theInFlightCapHoldsAndADeliveryThatMakesRoomWakesThePump() throws {
        var machine = Self.machine(maxInFlight: 4)
        let generation = try Self.start(&machine, cursor: .zero)
        #expect(machine.admit(lsn: LSN(0), events: Self.events(3), from: .zero) == .admitted)
        // 3 in flight: a record of 3 more would make 6.
        #expect(machine.admit(lsn: LSN(3), events: Self.events(3), from: .zero) == .full(needed: 3))
        #expect(machine.progress?.inFlight == 3)
        #expect(machine.park(.capacity(needed: 3), "pump") == nil)
        // One delivery leaves 2 in flight: 2 + 3 is still over the cap, the pump sleeps on.
        #expect(machine.delivered([Self.ok(0)], generation: generation).wake.isEmpty)
        // The second makes room.
        #expect(machine.delivered([Self.ok(1)], generation: generation).wake == ["pump"])
        #expect(machine.admit(lsn: LSN(3), events: Self.events(3), from: .zero) == .admitted)
        #expect(machine.progress?.inFlight == 4)
        // Full again; and a pump that finds room already is not parked at all.
        #expect(machine.admit(lsn: LSN(6), events: Self.events(1), from: .zero) == .full(needed: 1))
        _ = machine.delivered([Self.ok(2)], generation: generation)
        #expect(machine.park(.capacity(needed: 1), "pump") == "pump")
        #expect(machine.admit(lsn: LSN(6), events: Self.events(1), from: .zero) == .admitted)
        #expect(machine.progress?.inFlight == 4)
    }

    @Test func aRecordLargerThanTheCapGoesAloneAndEventsBelowTheCursorDoNotCount() throws {
        var machine = Self.machine(maxInFlight: 2)
        let generation = try Self.start(&machine, cursor: LSN(1))
        // LSN 0 was forwarded before: of this record only 1 and 2 are sent, which fit.
        #expect(machine.admit(lsn: LSN(0), events: Self.events(3), from: LSN(1)) == .admitted)
        #expect(machine.progress?.inFlight == 2)
        #expect(machine.admit(lsn: LSN(3), events: Self.events(5), from: LSN(3)) == .full(needed: 5))
        _ = machine.delivered([Self.ok(1), Self.ok(2)], generation: generation)
        // Nothing in flight: it goes, or it would never go.
        #expect(machine.admit(lsn: LSN(3), events: Self.events(5), from: LSN(3)) == .admitted)
        #expect(machine.progress?.committable == LSN(3))
    }

    @Test func failedDeliveriesAreResentInLSNOrderAtMostOncePerPause() throws {
        let clock = TestClock()
        var machine = Self.machine()
        let generation = try Self.start(&machine, cursor: .zero)
        for lsn in 0..<6 as Range<UInt64> {
            #expect(machine.admit(lsn: LSN(lsn), events: Self.events(1, from: Int(lsn)), from: .zero) == .admitted)
        }
        guard case .park = machine.nextResends(now: clock.now) else {
            Issue.record("nothing failed yet, yet the resend loop has work")
            return
        }
        #expect(machine.park(.resends, "resend") == nil)
        let outcome = machine.delivered(
            [Self.failed(4, .notLeaderForPartition), Self.ok(0), Self.failed(2, .requestTimedOut), Self.ok(5)],
            generation: generation
        )
        #expect(outcome.delivered == 2)
        #expect(outcome.failed == 2)
        #expect(outcome.deadLetters.isEmpty)
        #expect(outcome.wake == ["resend"])
        guard case .send(let first) = machine.nextResends(now: clock.now) else {
            Issue.record("the failed deliveries were not handed to the resend loop")
            return
        }
        #expect(first.map(\.lsn) == [LSN(2), LSN(4)])
        #expect(first.map(\.event) == [Array("e2".utf8), Array("e4".utf8)])

        // LSN 2 fails again 50 ms later: the next round waits for the pause (200 ms).
        clock.advance(by: .milliseconds(50))
        _ = machine.delivered([Self.failed(2, .requestTimedOut)], generation: generation)
        guard case .sleep(let until) = machine.nextResends(now: clock.now) else {
            Issue.record("a second round went out before the pause")
            return
        }
        #expect(until == TestClock.Instant(offset: .milliseconds(200)))
        clock.advance(by: .milliseconds(150))
        guard case .send(let second) = machine.nextResends(now: clock.now) else {
            Issue.record("the round after the pause did not come")
            return
        }
        #expect(second.map(\.lsn) == [LSN(2)])
        // A failure reported for an event already delivered is not resent.
        #expect(machine.delivered([Self.failed(0, .requestTimedOut)], generation: generation).failed == 0)
        _ = machine.delivered([Self.ok(1), Self.ok(2), Self.ok(3), Self.ok(4)], generation: generation)
        #expect(machine.progress?.committable == LSN(6))
    }

    @Test func onlyAMessageKafkaCanNeverTakeIsDeadLetteredAndTheCursorWaitsForTheFile() throws {
        var machine = Self.machine()
        let generation = try Self.start(&machine, cursor: .zero)
        #expect(machine.admit(lsn: .zero, events: Self.events(4), from: .zero) == .admitted)
        let outcome = machine.delivered(
            [
                Self.failed(0, .messageSizeTooLarge), Self.failed(1, .topicAuthorizationFailed),
                Self.failed(2, .clusterAuthorizationFailed), Self.failed(3, .transactionalIDAuthorizationFailed),
            ],
            generation: generation
        )
        // A lagging ACL passes by itself: authorization failures go round again, they are
        // never set aside.
        #expect(outcome.deadLetters.map(\.lsn) == [LSN(0)])
        guard case .send(let resent) = machine.nextResends(now: TestClock().now) else {
            Issue.record("authorization failures were not resent")
            return
        }
        #expect(resent.map(\.lsn) == [LSN(1), LSN(2), LSN(3)])
        _ = machine.delivered([Self.ok(1), Self.ok(2), Self.ok(3)], generation: generation)
        // Not until the dead letter is durable may the cursor pass LSN 0.
        #expect(machine.progress?.committable == .zero)
        _ = machine.deadLetterFinished(lsn: .zero, kept: false, generation: generation)
        #expect(machine.progress?.committable == .zero)
        guard case .send(let again) = machine.nextResends(now: TestClock().now.advanced(by: .seconds(1))) else {
            Issue.record("a dead letter that could not be written was dropped")
            return
        }
        #expect(again.map(\.lsn) == [LSN(0)])
        _ = machine.deadLetterFinished(lsn: .zero, kept: true, generation: generation)
        #expect(machine.progress?.committable == LSN(4))
    }

    @Test func refusedSendsBackOffAlongTheCurveAndStartOverAfterASuccess() throws {
        let clock = TestClock()
        var machine = Self.machine()
        _ = try Self.start(&machine, cursor: .zero)
        let queueFull = KafkaError(.queueFull, "test")
        var delays: [Duration] = []
        var warnings = 0
        for _ in 0..<9 {
            guard case .retry(let at, let warn) = machine.sendFailed(queueFull, now: clock.now) else {
                Issue.record("a full local queue was not retried")
                return
            }
            delays.append(clock.now.duration(to: at))
            if warn { warnings += 1 }
            clock.advance(by: clock.now.duration(to: at))
        }
        #expect(delays == [10, 20, 40, 80, 160, 320, 640, 1000, 1000].map { Duration.milliseconds($0) })
        #expect(warnings == 0)  // a full queue is flow control, not news
        machine.sendSucceeded()
        guard
            case .retry(let at, let warn) = machine.sendFailed(
                KafkaError(.topicAuthorizationFailed, "test"),
                now: clock.now
            )
        else {
            Issue.record("an authorization failure was not retried")
            return
        }
        #expect(clock.now.duration(to: at) == .milliseconds(10))
        #expect(warn)
        guard case .deadLetter = machine.sendFailed(KafkaError(.messageSizeTooLarge, "test"), now: clock.now) else {
            Issue.record("a message too large was not dead-lettered")
            return
        }
        // Neither retriable nor permanent: a long pause.
        machine.sendSucceeded()
        guard case .retry(let later, _) = machine.sendFailed(KafkaError(.invalidArgument, "test"), now: clock.now)
        else {
            Issue.record("a refusal librdkafka could not classify was not retried")
            return
        }
        #expect(clock.now.duration(to: later) == .seconds(1))
        #expect(Backoff(first: .milliseconds(10), maximum: .seconds(1)).delay(afterFailures: 1000) == .seconds(1))
    }

    @Test func aFatalErrorEndsThePassAndTheNextResendsEverythingTheCursorDoesNotCover() throws {
        let clock = TestClock()
        var machine = Self.machine()
        let first = try Self.start(&machine, cursor: .zero)
        #expect(machine.admit(lsn: LSN(0), events: Self.events(2), from: .zero) == .admitted)  // 0, 1
        #expect(machine.admit(lsn: LSN(2), events: Self.events(1), from: .zero) == .admitted)  // 2
        #expect(machine.admit(lsn: LSN(3), events: Self.events(2), from: .zero) == .admitted)  // 3, 4
        #expect(machine.park(.end, "watcher") == nil)
        #expect(machine.park(.resends, "resend") == nil)
        _ = machine.delivered([Self.ok(0), Self.ok(1), Self.ok(3)], generation: first)
        #expect(machine.progress?.committable == LSN(2))

        #expect(Set(machine.producerFailed()) == ["watcher", "resend"])
        #expect(machine.phase == .ending(fatal: true))
        #expect(machine.admit(lsn: LSN(5), events: Self.events(1), from: .zero) == .ending)
        guard case .endPass = machine.sendFailed(KafkaError(.queueFull, "test"), now: clock.now) else {
            Issue.record("a pass that must end kept sending")
            return
        }
        // The old producer's final flush still counts …
        _ = machine.delivered([Self.ok(4)], generation: first)
        #expect(machine.progress?.committable == LSN(2))  // … but LSN 2 is not in Kafka
        #expect(machine.passEnded(now: clock.now) == .restart(at: clock.now.advanced(by: .seconds(1))))
        #expect(machine.restarts == 1)
        #expect(machine.phase == .restarting(until: clock.now.advanced(by: .seconds(1))))
        // The restart delay ends (or a stop comes): the next pass starts from the cursor.
        clock.advance(by: .seconds(1))
        let second = try Self.start(&machine, cursor: LSN(2))
        #expect(second != first)
        #expect(machine.progress?.committable == LSN(2))
    }

    @Test func aNewPassResendsFromTheCursorAndIgnoresTheOldProducersReports() throws {
        let clock = TestClock()
        var machine = Self.machine()
        let first = try Self.start(&machine, cursor: .zero)
        #expect(machine.admit(lsn: LSN(0), events: Self.events(3), from: .zero) == .admitted)
        #expect(machine.admit(lsn: LSN(3), events: Self.events(2), from: .zero) == .admitted)
        _ = machine.delivered([Self.ok(0), Self.ok(1), Self.ok(3), Self.ok(4)], generation: first)
        _ = machine.producerFailed()
        #expect(machine.passEnded(now: clock.now) == .restart(at: clock.now.advanced(by: .seconds(1))))
        #expect(machine.progress == nil)

        let second = try Self.start(&machine, cursor: LSN(2))
        #expect(second != first)
        // Everything from the cursor is in flight again: 2 from the first record, 3 and 4.
        #expect(machine.admit(lsn: LSN(0), events: Self.events(3), from: LSN(2)) == .admitted)
        #expect(machine.admit(lsn: LSN(3), events: Self.events(2), from: LSN(2)) == .admitted)
        #expect(machine.progress?.inFlight == 3)
        // A late report of the old producer does not count for the new pass.
        #expect(machine.delivered([Self.ok(2)], generation: first).delivered == 0)
        _ = machine.delivered([Self.ok(3), Self.ok(4)], generation: second)
        #expect(machine.progress?.committable == LSN(2))  // never past an undelivered LSN
        _ = machine.delivered([Self.ok(2)], generation: second)
        #expect(machine.progress?.committable == LSN(5))
    }

    @Test func stopWakesEveryWaiterAndNoPassFollows() throws {
        var machine = Self.machine(maxInFlight: 1)
        _ = try Self.start(&machine, cursor: .zero)
        #expect(machine.admit(lsn: LSN(0), events: Self.events(1), from: .zero) == .admitted)
        #expect(machine.admit(lsn: LSN(1), events: Self.events(1), from: .zero) == .full(needed: 1))
        #expect(machine.park(.capacity(needed: 1), "pump") == nil)
        #expect(machine.park(.resends, "resend") == nil)
        #expect(machine.park(.end, "watcher") == nil)
        #expect(Set(machine.stop()) == ["pump", "resend", "watcher"])
        #expect(machine.admit(lsn: LSN(1), events: Self.events(1), from: .zero) == .ending)
        guard case .ending = machine.nextResends(now: TestClock().now) else {
            Issue.record("the resend loop went on after a stop")
            return
        }
        // Nobody parks once the pass is ending.
        #expect(machine.park(.end, "late") == "late")
        #expect(machine.passEnded(now: TestClock().now) == .stop)
        #expect(machine.startPass(cursor: .zero) == nil)
    }

    @Test func aStopDuringTheRestartDelayOrAfterAFatalErrorStartsNoNewPass() throws {
        let clock = TestClock()
        var machine = Self.machine()
        _ = try Self.start(&machine, cursor: .zero)
        _ = machine.producerFailed()
        guard case .restart = machine.passEnded(now: clock.now) else {
            Issue.record("a fatal error did not restart")
            return
        }
        #expect(machine.park(.end, "restart") == nil)
        #expect(machine.stop() == ["restart"])
        #expect(machine.startPass(cursor: .zero) == nil)

        var stopping = Self.machine()
        _ = try Self.start(&stopping, cursor: .zero)
        _ = stopping.producerFailed()
        _ = stopping.stop()
        #expect(stopping.passEnded(now: clock.now) == .stop)
        #expect(stopping.restarts == 0)
    }
}
