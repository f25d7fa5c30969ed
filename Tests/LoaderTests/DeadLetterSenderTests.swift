import Testing

@testable import Loader

/// Dead-letter verdicts reach the send waiting for them through continuations, whichever
/// comes first: the report or the wait.
@Suite struct DeadLetterSenderTests {
    @Test func aReportBeforeTheWaitIsKept() async {
        let sender = DeadLetterSender()
        let ids = sender.register(2)
        sender.settle(ids[0], acknowledged: true)
        sender.settle(ids[1], acknowledged: false)
        #expect(await sender.verdict(ids[0]) == true)
        #expect(await sender.verdict(ids[1]) == false)
        #expect(sender.outstanding == 0)
    }

    @Test func aReportResumesTheWaitingSend() async {
        let sender = DeadLetterSender()
        let ids = sender.register(2)
        let first = Task { await sender.verdict(ids[0]) }
        let second = Task { await sender.verdict(ids[1]) }
        while !sender.isAwaited(ids[0]) || !sender.isAwaited(ids[1]) { await Task.yield() }
        sender.settle(ids[1], acknowledged: false)
        sender.settle(ids[0], acknowledged: true)
        #expect(await first.value == true)
        #expect(await second.value == false)
        #expect(sender.outstanding == 0)
    }

    @Test func aCancelledWaitCountsAsNotAcknowledged() async {
        let sender = DeadLetterSender()
        let ids = sender.register(1)
        let waiting = Task { await sender.verdict(ids[0]) }
        while !sender.isAwaited(ids[0]) { await Task.yield() }
        waiting.cancel()
        #expect(await waiting.value == false)
        // The late report clears the entry; reports of ids never registered change nothing.
        sender.settle(ids[0], acknowledged: true)
        sender.settle(999, acknowledged: true)
        #expect(sender.outstanding == 0)
    }
}
