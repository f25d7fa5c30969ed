import SluiceCore
import Synchronization

/// A rate with a burst: `100/s` with burst 200 lets a client send 200 requests at once and then
/// 100 per second.
public struct RateLimit: Sendable, Hashable, CustomStringConvertible {
    /// Units allowed per `window`.
    public var count: Int
    /// The window, in whole seconds (`1` for `/s`, `60` for `/m`).
    public var windowSeconds: Int
    /// The most units a client may spend at once after being idle.
    public var burst: Int

    /// `count` per `windowSeconds`, with `burst` (default: one window's worth).
    public init(count: Int, windowSeconds: Int = 1, burst: Int? = nil) {
        self.count = max(1, count)
        self.windowSeconds = max(1, windowSeconds)
        self.burst = max(1, burst ?? count)
    }

    /// Parses `100/s`, `6000/m`, `10/h` or `1000/d` (also `/sec`, `/min`, `/hour`, `/day`).
    /// Nil when the text is not such a rate.
    public init?(_ text: some StringProtocol, burst: Int? = nil) {
        // Bytes, not Characters: a key's own rate is read on every request it authenticates.
        var bytes = Substring(text).utf8[...]
        func isSpace(_ byte: UInt8) -> Bool { byte == 0x20 || (0x09...0x0d).contains(byte) }
        while let first = bytes.first, isSpace(first) { bytes.removeFirst() }
        while let last = bytes.last, isSpace(last) { bytes.removeLast() }
        guard let slash = bytes.firstIndex(of: UInt8(ascii: "/")) else { return nil }
        var count = 0
        var digits = 0
        for byte in bytes[..<slash] where byte != UInt8(ascii: "_") {
            guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) else { return nil }
            let (times, overflow) = count.multipliedReportingOverflow(by: 10)
            let (sum, overflow2) = times.addingReportingOverflow(Int(byte - UInt8(ascii: "0")))
            guard !overflow, !overflow2 else { return nil }
            count = sum
            digits += 1
        }
        guard digits > 0, count > 0 else { return nil }
        let window: Int
        switch String(Substring(bytes[bytes.index(after: slash)...])).lowercased() {
        case "s", "sec", "second": window = 1
        case "m", "min", "minute": window = 60
        case "h", "hour": window = 3600
        case "d", "day": window = 86400
        default: return nil
        }
        if let burst, burst < 1 { return nil }
        self.init(count: count, windowSeconds: window, burst: burst)
    }

    /// Nanoseconds between two units at the sustained rate (GCRA's emission interval).
    public var emissionIntervalNanos: Int64 {
        max(1, Int64(self.windowSeconds) * 1_000_000_000 / Int64(self.count))
    }

    /// `100/s`, `6000/m`: the rate, without the burst.
    public var rateText: String {
        let unit: String
        switch self.windowSeconds {
        case 1: unit = "s"
        case 60: unit = "m"
        case 3600: unit = "h"
        case 86400: unit = "d"
        default: return "\(self.count)/\(self.windowSeconds)s"
        }
        return "\(self.count)/\(unit)"
    }

    public var description: String { "\(self.rateText) burst \(self.burst)" }
}

/// What the rate limiter decided for one request.
public struct RateLimitDecision: Sendable, Hashable {
    /// Whether the request may proceed.
    public var allowed: Bool
    /// Units that could still be spent right now (0 when refused).
    public var remaining: Int
    /// For a refusal: whole seconds until a retry of the same cost can succeed, at least 1.
    /// 0 when allowed.
    public var retryAfterSeconds: Int
    /// Whole seconds until the full burst is available again (draft-ietf-httpapi-ratelimit `t`).
    public var resetSeconds: Int
}

/// The generic cell rate algorithm: one timestamp per client (the theoretical arrival time),
/// no window-boundary bursts. A pure function, so it is tested with a simulated clock.
public enum GCRA {
    /// Decides one request of `cost` units at `now` (nanoseconds on any monotonic clock) for a
    /// client whose theoretical arrival time is `tat` (0 or anything ≤ `now` for a new client).
    /// Returns the decision and the TAT to store: unchanged on a refusal.
    ///
    /// A `cost` larger than the burst can never pass; it is refused with the time until the
    /// bucket is full.
    public static func check(
        tat: Int64,
        now: Int64,
        cost: Int = 1,
        limit: RateLimit
    ) -> (decision: RateLimitDecision, tat: Int64) {
        let interval = limit.emissionIntervalNanos
        let tolerance = interval * Int64(limit.burst)
        let start = max(tat, now)
        let increment = interval * Int64(max(0, cost))
        let newTAT = start + increment
        let allowAt = newTAT - tolerance
        if now < allowAt {
            let waitNanos = cost > limit.burst ? start - now : allowAt - now
            let decision = RateLimitDecision(
                allowed: false,
                remaining: 0,
                retryAfterSeconds: max(1, Self.ceilSeconds(waitNanos)),
                resetSeconds: max(1, Self.ceilSeconds(start - now))
            )
            return (decision, tat)
        }
        let remaining = Int((tolerance - (newTAT - now)) / interval)
        let decision = RateLimitDecision(
            allowed: true,
            remaining: max(0, remaining),
            retryAfterSeconds: 0,
            resetSeconds: Self.ceilSeconds(newTAT - now)
        )
        return (decision, newTAT)
    }

    static func ceilSeconds(_ nanos: Int64) -> Int {
        nanos <= 0 ? 0 : Int((nanos + 999_999_999) / 1_000_000_000)
    }
}

/// Per-key GCRA state for one process (one gateway): thread-safe, bounded.
///
/// With N gateways behind a non-sticky load balancer the effective limit is N × the rate.
/// At most `maxKeys` clients are tracked; when full, clients whose bucket has refilled (which
/// are the same as untracked ones) are dropped first, then the one closest to refilled.
public final class RateLimiter: Sendable {
    private struct State {
        var tats: [String: Int64] = [:]
    }

    private let state = Mutex(State())
    private let clock: @Sendable () -> Int64
    /// The most clients tracked at once.
    public let maxKeys: Int

    /// A limiter on the monotonic clock.
    public convenience init(maxKeys: Int = 100_000) {
        let start = ContinuousClock.now
        self.init(maxKeys: maxKeys) {
            let elapsed = ContinuousClock.now - start
            return elapsed.nanoseconds
        }
    }

    /// A limiter on `clock` (nanoseconds, monotonic): tests pass a simulated one.
    public init(maxKeys: Int = 100_000, clock: @escaping @Sendable () -> Int64) {
        self.maxKeys = max(1, maxKeys)
        self.clock = clock
    }

    /// Spends `cost` units of `key`'s allowance under `limit`, if it has them.
    public func check(_ key: String, cost: Int = 1, limit: RateLimit) -> RateLimitDecision {
        self.check(key, cost: cost, limit: limit, spend: true)
    }

    /// What spending `cost` units would decide now, without spending them: the failed-
    /// authentication limiter asks this before any cryptography and spends only on failure.
    public func peek(_ key: String, cost: Int = 1, limit: RateLimit) -> RateLimitDecision {
        self.check(key, cost: cost, limit: limit, spend: false)
    }

    private func check(_ key: String, cost: Int, limit: RateLimit, spend: Bool) -> RateLimitDecision {
        let now = self.clock()
        return self.state.withLock { state in
            let (decision, tat) = GCRA.check(tat: state.tats[key] ?? now, now: now, cost: cost, limit: limit)
            if decision.allowed && spend {
                if state.tats[key] == nil && state.tats.count >= self.maxKeys { self.evict(&state, now: now) }
                state.tats[key] = tat
            }
            return decision
        }
    }

    /// How many clients are tracked.
    public var trackedKeys: Int { self.state.withLock { $0.tats.count } }

    private func evict(_ state: inout State, now: Int64) {
        state.tats = state.tats.filter { $0.value > now }
        if state.tats.count >= self.maxKeys, let oldest = state.tats.min(by: { $0.value < $1.value }) {
            state.tats.removeValue(forKey: oldest.key)
        }
    }
}

/// The `RateLimit-Policy` and `RateLimit` fields of draft-ietf-httpapi-ratelimit-headers-11,
/// plus the matching 429 failure.
public enum RateLimitHeaders {
    /// `"client";q=100;w=1`: the value of `RateLimit-Policy` for a policy named `name`.
    public static func policy(name: String, limit: RateLimit) -> String {
        "\"\(Self.quoted(name))\";q=\(limit.count);w=\(limit.windowSeconds)"
    }

    /// `"client";r=0;t=1`: the value of `RateLimit` after `decision`.
    public static func state(name: String, decision: RateLimitDecision) -> String {
        let seconds = decision.allowed ? decision.resetSeconds : decision.retryAfterSeconds
        return "\"\(Self.quoted(name))\";r=\(decision.remaining);t=\(seconds)"
    }

    /// The 429 for a refusal, carrying `Retry-After`.
    public static func failure(for decision: RateLimitDecision) -> AuthFailure {
        AuthFailure(
            .rateLimited,
            reason: "rate_limited",
            detail: "Too many requests; retry after \(decision.retryAfterSeconds) s.",
            retryAfterSeconds: decision.retryAfterSeconds
        )
    }

    /// Structured-field strings allow no `"` or `\` unescaped; policy names are ours, but be safe.
    /// This runs twice per answered request: names without either character (all of ours) are
    /// returned as they are, without the generic `replacing` (a fifth of the limiter's cost).
    private static func quoted(_ name: String) -> String {
        guard name.utf8.contains(where: { $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\\") }) else { return name }
        var escaped = ""
        escaped.reserveCapacity(name.utf8.count + 4)
        for character in name {
            if character == "\"" || character == "\\" { escaped.append("\\") }
            escaped.append(character)
        }
        return escaped
    }
}
