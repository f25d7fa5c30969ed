import NIOCore

/// Which of a connection's deadlines applies now, and when it passes. A value without I/O:
/// ``HTTPRequestGuard`` feeds it what happened on the connection and the time, and asks it
/// whether the connection waited too long.
///
/// - idle: no byte of a next request, and every answer sent (a new connection counts);
/// - header: from the first byte of a request to the end of its header section;
/// - body: from the end of the header section to the end of the body, a bound on the whole
///   body (however steadily it dribbles in), not on the pause between two bytes.
///
/// While a request is complete and its answer is not, no deadline runs: the WAL's append
/// timeout bounds that time.
struct ConnectionTimeouts {
    enum Reason: String, Sendable, Equatable {
        case idle, header, body
    }

    enum Phase: Equatable {
        /// Waiting for the first byte of a request, since the last answer ended.
        case waiting(since: NIODeadline)
        /// Part of a request head has arrived; the first byte came at `since`.
        case head(since: NIODeadline)
        /// The head was complete at `since`; the body has not ended.
        case body(since: NIODeadline)
        /// The connection is being closed: no deadline.
        case closing
    }

    let idle: TimeAmount
    let header: TimeAmount
    let body: TimeAmount
    private(set) var phase: Phase
    /// Requests passed on whose answer has not ended.
    private(set) var unanswered = 0

    init(idle: TimeAmount, header: TimeAmount, body: TimeAmount, now: NIODeadline) {
        self.idle = idle
        self.header = header
        self.body = body
        self.phase = .waiting(since: now)
    }

    /// How often the caller's watchdog should look at least: no deadline can be set closer
    /// than this to the moment it is set, so a watchdog this frequent never needs to be moved
    /// earlier.
    var tick: TimeAmount { min(self.idle, self.header, self.body) }

    /// A read delivered bytes but no complete head: the first bytes of a request.
    mutating func bytesArrived(now: NIODeadline) {
        if case .waiting = self.phase { self.phase = .head(since: now) }
    }

    mutating func headReceived(now: NIODeadline) {
        guard self.phase != .closing else { return }
        self.phase = .body(since: now)
        self.unanswered += 1
    }

    mutating func requestEnded(now: NIODeadline) {
        guard self.phase != .closing else { return }
        self.phase = .waiting(since: now)
    }

    mutating func answerEnded(now: NIODeadline) {
        self.unanswered = max(0, self.unanswered - 1)
        if self.unanswered == 0, case .waiting = self.phase { self.phase = .waiting(since: now) }
    }

    mutating func close() { self.phase = .closing }

    /// The next deadline and what it bounds; nil while the gateway itself is busy.
    var deadline: (at: NIODeadline, reason: Reason)? {
        switch self.phase {
        case .waiting(let since): return self.unanswered == 0 ? (since + self.idle, .idle) : nil
        // A pipelined head waits behind an answer still being written: not the client's delay.
        case .head(let since): return self.unanswered == 0 ? (since + self.header, .header) : nil
        case .body(let since): return (since + self.body, .body)
        case .closing: return nil
        }
    }

    /// The deadline that has passed at `now`, if any.
    func expired(now: NIODeadline) -> Reason? {
        guard let deadline = self.deadline, now >= deadline.at else { return nil }
        return deadline.reason
    }
}
