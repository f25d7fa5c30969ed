import CoreMetrics
import Logging
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// Keeps the number of client connections under a limit, in the listening socket's pipeline.
///
/// At the limit it stops asking for new connections: they wait in the kernel's listen backlog
/// (and are refused by the kernel once that is full) and are accepted as connections close.
/// The limit is lowered at start to fit the process's descriptor limit (see
/// ``effectiveLimit(configured:descriptorLimit:)``), so accepting does not normally fail.
///
/// When it does fail for lack of descriptors (EMFILE, ENFILE: descriptors taken by something
/// else), NIO keeps its read pending and epoll reports the listening socket readable again at
/// once, so the event loop would spin on `accept` at full CPU. The limiter then pauses
/// accepting for a second and gives up a descriptor it holds in reserve, so that one waiting
/// connection can be accepted and closed at once: that takes the socket's readiness away.
///
/// Each pause is counted (`sluice_http_accept_pauses_total{reason}`) and logged, at most once a
/// minute. Runs on the listening channel's event loop.
final class ConnectionLimiter: ChannelDuplexHandler {
    typealias InboundIn = any Channel
    typealias InboundOut = any Channel
    typealias OutboundIn = Never
    typealias OutboundOut = Never

    enum Pause: String {
        case maxConnections = "max_connections"
        case descriptors = "fd_limit"
    }

    /// Descriptors kept free for everything but client connections: WAL segments, the
    /// directory, cursors, Kafka's sockets, logs.
    static let reservedDescriptors = 64

    /// The connection limit that fits `descriptorLimit` (RLIMIT_NOFILE's soft limit).
    static func effectiveLimit(configured: Int, descriptorLimit: Int) -> Int {
        max(1, min(configured, descriptorLimit - self.reservedDescriptors))
    }

    /// The process's descriptor limit (`ulimit -n`); nil when unlimited or unknown.
    static func descriptorLimit() -> Int? {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur != rlim_t.max else { return nil }
        return Int(clamping: limit.rlim_cur)
    }

    private let limit: Int
    private let metrics: HTTPMetrics
    private let logger: Logger
    private var open = 0
    private var paused: Pause?
    /// A read() arrived while paused; it is issued on resume.
    private var readHeld = false
    private var resumeTimer: Scheduled<Void>?
    /// A descriptor (of /dev/null) given up when accept fails for lack of descriptors.
    private var reserve: Int32 = -1
    private var lastWarning: NIODeadline?
    private var pausesSinceWarning = 0

    init(limit: Int, metrics: HTTPMetrics, logger: Logger) {
        self.limit = limit
        self.metrics = metrics
        self.logger = logger
        metrics.connectionsLimit.record(limit)
        metrics.connections.record(0)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.reserve = Glibc.open("/dev/null", O_RDONLY | O_CLOEXEC)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        if self.reserve >= 0 { Glibc.close(self.reserve) }
        self.reserve = -1
        self.resumeTimer?.cancel()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let child = Self.unwrapInboundIn(data)
        // Past the limit only if the listening channel accepts several connections per
        // wakeup (the gateway sets it to one); while out of descriptors, the one accepted
        // with the reserve is only taken to clear the socket's readiness.
        if self.paused == .descriptors || self.open >= self.limit {
            (self.paused == .descriptors ? self.metrics.refusedAtFDLimit : self.metrics.refusedAtLimit).increment()
            child.close(promise: nil)
            child.closeFuture.hop(to: context.eventLoop).assumeIsolated().whenComplete { _ in
                self.restoreReserve()
            }
            return
        }
        self.open += 1
        self.metrics.connections.record(self.open)
        child.closeFuture.hop(to: context.eventLoop).assumeIsolated().whenComplete { _ in
            self.connectionClosed(context: context)
        }
        if self.open >= self.limit { self.pause(.maxConnections, context: context) }
        context.fireChannelRead(data)
    }

    private func connectionClosed(context: ChannelHandlerContext) {
        self.open -= 1
        self.metrics.connections.record(self.open)
        self.restoreReserve()
        if self.paused == .maxConnections && self.open < self.limit { self.resume(context: context) }
    }

    func read(context: ChannelHandlerContext) {
        guard self.paused == nil else {
            self.readHeld = true
            return
        }
        context.read()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? IOError, error.errnoCode == EMFILE || error.errnoCode == ENFILE {
            if self.paused != .descriptors {
                self.pause(.descriptors, context: context)
                self.resumeTimer?.cancel()
                self.resumeTimer = context.eventLoop.assumeIsolated().scheduleTask(in: .seconds(1)) {
                    self.resumeTimer = nil
                    self.resume(context: context)
                }
            }
            if self.reserve >= 0 {
                Glibc.close(self.reserve)
                self.reserve = -1
            }
        }
        context.fireErrorCaught(error)
    }

    private func restoreReserve() {
        if self.reserve < 0 { self.reserve = Glibc.open("/dev/null", O_RDONLY | O_CLOEXEC) }
    }

    private func pause(_ reason: Pause, context: ChannelHandlerContext) {
        self.paused = reason
        switch reason {
        case .maxConnections: self.metrics.acceptPausedAtLimit.increment()
        case .descriptors: self.metrics.acceptPausedAtFDLimit.increment()
        }
        self.pausesSinceWarning += 1
        let now = NIODeadline.now()
        if let last = self.lastWarning, now - last < .seconds(60) { return }
        self.lastWarning = now
        self.logger.warning(
            "gateway.connections.limit_reached",
            metadata: [
                "reason": "\(reason.rawValue)",
                "gateway.connections": "\(self.open)",
                "gateway.max_connections": "\(self.limit)",
                "gateway.accept_pauses": "\(self.pausesSinceWarning)",
                "detail": .string(
                    reason == .maxConnections
                        ? "new connections wait in the listen backlog until one closes (gateway.max_connections)"
                        : "the process is out of file descriptors; accepting pauses for 1 s (raise LimitNOFILE / ulimit -n)"
                ),
            ]
        )
        self.pausesSinceWarning = 0
    }

    private func resume(context: ChannelHandlerContext) {
        self.paused = nil
        if self.open >= self.limit {
            self.paused = .maxConnections
            return
        }
        if self.readHeld {
            self.readHeld = false
            context.read()
        }
    }
}

@available(*, unavailable)
extension ConnectionLimiter: Sendable {}
