import Logging
import NIOCore
import NIOEmbedded
import Testing

@testable import Gateway

#if canImport(Glibc)
import Glibc
#endif

/// The deadline rules, as plain values: no sockets, no sleeping.
@Suite struct ConnectionTimeoutsTests {
    let start = NIODeadline.uptimeNanoseconds(1_000_000_000)

    func make() -> ConnectionTimeouts {
        ConnectionTimeouts(idle: .seconds(75), header: .seconds(10), body: .seconds(60), now: self.start)
    }

    @Test func aNewConnectionHasTheIdleDeadline() {
        let timeouts = self.make()
        #expect(timeouts.expired(now: self.start + .seconds(74)) == nil)
        #expect(timeouts.expired(now: self.start + .seconds(75)) == .idle)
        #expect(timeouts.tick == .seconds(10))
    }

    @Test func theHeaderDeadlineCountsFromTheFirstByteNotFromTheLastOne() {
        var timeouts = self.make()
        timeouts.bytesArrived(now: self.start + .seconds(30))
        timeouts.bytesArrived(now: self.start + .seconds(35))  // more bytes: no new start
        #expect(timeouts.expired(now: self.start + .seconds(39)) == nil)
        #expect(timeouts.expired(now: self.start + .seconds(40)) == .header)
    }

    @Test func theBodyDeadlineBoundsTheWholeBody() {
        var timeouts = self.make()
        timeouts.headReceived(now: self.start + .seconds(1))
        #expect(timeouts.expired(now: self.start + .seconds(60)) == nil)
        #expect(timeouts.expired(now: self.start + .seconds(61)) == .body)
    }

    @Test func noDeadlineRunsWhileTheGatewayOwesAnAnswer() {
        var timeouts = self.make()
        timeouts.headReceived(now: self.start)
        timeouts.requestEnded(now: self.start + .seconds(1))
        #expect(timeouts.deadline == nil)
        // A pipelined head arriving meanwhile waits behind the answer, not on the client.
        timeouts.bytesArrived(now: self.start + .seconds(2))
        #expect(timeouts.expired(now: self.start + .seconds(500)) == nil)
        timeouts.answerEnded(now: self.start + .seconds(3))
        #expect(timeouts.expired(now: self.start + .seconds(12)) == .header)
    }

    @Test func afterTheAnswerTheIdleDeadlineStartsAgain() {
        var timeouts = self.make()
        timeouts.headReceived(now: self.start)
        timeouts.requestEnded(now: self.start)
        timeouts.answerEnded(now: self.start + .seconds(5))
        #expect(timeouts.expired(now: self.start + .seconds(79)) == nil)
        #expect(timeouts.expired(now: self.start + .seconds(80)) == .idle)
        timeouts.close()
        #expect(timeouts.deadline == nil)
    }
}

/// The limiter in a listening channel's pipeline, driven by hand.
@Suite struct ConnectionLimiterTests {
    /// Counts the read() calls that get past the limiter.
    final class ReadProbe: ChannelOutboundHandler {
        typealias OutboundIn = Never
        typealias OutboundOut = Never
        var reads = 0
        func read(context: ChannelHandlerContext) {
            self.reads += 1
            context.read()
        }
    }

    /// A connected child channel, as the listening socket hands them on.
    func connection() throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        return channel
    }

    func make(limit: Int) throws -> (EmbeddedChannel, ReadProbe) {
        let server = EmbeddedChannel()
        let probe = ReadProbe()
        try server.pipeline.syncOperations.addHandler(probe)
        try server.pipeline.syncOperations.addHandler(
            ConnectionLimiter(limit: limit, metrics: HTTPMetrics(), logger: Logger(label: "test"))
        )
        return (server, probe)
    }

    @Test func atTheLimitAcceptingStopsAndResumesWhenAConnectionCloses() throws {
        let (server, probe) = try self.make(limit: 2)
        let first = try self.connection()
        let second = try self.connection()
        try server.writeInbound(first as any Channel)
        server.read()
        #expect(probe.reads == 1)
        try server.writeInbound(second as any Channel)
        server.read()
        #expect(probe.reads == 1, "accepting continued at the limit")
        let third = try self.connection()
        try server.writeInbound(third as any Channel)  // accepted in the same wakeup: refused
        #expect(!third.isActive)
        _ = try? first.finish()
        server.embeddedEventLoop.run()
        #expect(probe.reads == 2, "the held read was not issued when a connection closed")
        _ = try server.readInbound(as: (any Channel).self)
        _ = try? second.finish()
    }

    @Test func outOfDescriptorsAcceptingPausesInsteadOfSpinning() throws {
        let (server, probe) = try self.make(limit: 100)
        server.pipeline.fireErrorCaught(IOError(errnoCode: EMFILE, reason: "accept"))
        server.read()
        #expect(probe.reads == 0, "read passed while out of descriptors")
        // The connection the freed reserve descriptor lets through is closed at once.
        let drained = try self.connection()
        // The embedded channel hands the EMFILE error back here, after delivering the read.
        _ = try? server.writeInbound(drained as any Channel)
        #expect(!drained.isActive)
        server.embeddedEventLoop.advanceTime(by: .seconds(1))
        #expect(probe.reads == 1, "accepting did not resume after the pause")
    }
}
