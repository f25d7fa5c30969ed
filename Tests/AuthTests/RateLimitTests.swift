import Auth
import Synchronization
import Testing

/// A clock the test moves by hand, in nanoseconds.
final class KeysTestClock: Sendable {
    private let nanos = Atomic<Int64>(1_000_000_000)
    var now: Int64 { self.nanos.load(ordering: .relaxed) }
    func advance(nanoseconds: Int64) { self.nanos.add(nanoseconds, ordering: .relaxed) }
}

@Suite struct RateLimitTests {
    @Test func limitsParseFromText() {
        #expect(RateLimit("100/s") == RateLimit(count: 100, windowSeconds: 1, burst: 100))
        #expect(RateLimit("6000/m", burst: 200) == RateLimit(count: 6000, windowSeconds: 60, burst: 200))
        #expect(RateLimit(" 10/h ")?.windowSeconds == 3600)
        #expect(RateLimit("1_000/min")?.count == 1000)
        #expect(RateLimit("50/s", burst: 80)?.description == "50/s burst 80")
        for bad in ["", "100", "/s", "0/s", "-1/s", "10/x", "ten/s", "1/s/s", "1 0/s", "_/s", "99999999999999999999/s"]
        {
            #expect(RateLimit(bad) == nil, "\(bad)")
        }
        #expect(RateLimit("10/s", burst: 0) == nil)
    }

    @Test func gcraAllowsTheBurstThenOneUnitPerInterval() {
        let limit = RateLimit(count: 10, windowSeconds: 1, burst: 3)
        var tat: Int64 = 0
        let now: Int64 = 5_000_000_000
        var remaining: [Int] = []
        for _ in 0..<3 {
            let (decision, next) = GCRA.check(tat: tat, now: now, limit: limit)
            #expect(decision.allowed)
            remaining.append(decision.remaining)
            tat = next
        }
        #expect(remaining == [2, 1, 0])
        let (refused, unchanged) = GCRA.check(tat: tat, now: now, limit: limit)
        #expect(!refused.allowed && unchanged == tat)
        #expect(refused.retryAfterSeconds == 1, "100 ms to the next unit, rounded up to a whole second")
        #expect(refused.remaining == 0)
        let (again, _) = GCRA.check(tat: tat, now: now + 100_000_000, limit: limit)
        #expect(again.allowed)
        let (tooBig, _) = GCRA.check(tat: 0, now: now, cost: 4, limit: limit)
        #expect(!tooBig.allowed)
        let (batch, _) = GCRA.check(tat: 0, now: now, cost: 3, limit: limit)
        #expect(batch.allowed && batch.remaining == 0)
    }

    @Test func retryAfterCoversTheWholeWait() {
        let limit = RateLimit(count: 1, windowSeconds: 60, burst: 1)
        let (first, tat) = GCRA.check(tat: 0, now: 0, limit: limit)
        #expect(first.allowed && first.resetSeconds == 60)
        let (refused, _) = GCRA.check(tat: tat, now: 1_000_000_000, limit: limit)
        #expect(refused.retryAfterSeconds == 59)
        #expect(RateLimitHeaders.state(name: "client", decision: refused) == "\"client\";r=0;t=59")
    }

    /// R1: 100/s with burst 200, offered 400/s for a simulated minute.
    @Test func r1AcceptsTheRateAfterTheBurstAndEveryRefusalSaysWhenToRetry() {
        let clock = KeysTestClock()
        let limiter = RateLimiter { clock.now }
        let limit = RateLimit(count: 100, windowSeconds: 1, burst: 200)
        var acceptedPerSecond = [Int](repeating: 0, count: 60)
        var refusals = 0
        for request in 0..<(400 * 60) {
            let decision = limiter.check("key:web", limit: limit)
            if decision.allowed {
                acceptedPerSecond[request / 400] += 1
            } else {
                refusals += 1
                #expect(decision.retryAfterSeconds >= 1)
                #expect(decision.remaining == 0)
                #expect(RateLimitHeaders.state(name: "client", decision: decision).hasPrefix("\"client\";r=0;t="))
                #expect(RateLimitHeaders.failure(for: decision).status == 429)
                #expect(RateLimitHeaders.failure(for: decision).retryAfterSeconds == decision.retryAfterSeconds)
            }
            clock.advance(nanoseconds: 2_500_000)
        }
        #expect((295...305).contains(acceptedPerSecond[0]), "the burst of 200 plus the first second's 100")
        for second in 1..<60 { #expect((95...105).contains(acceptedPerSecond[second]), "second \(second)") }
        let afterBurst = Double(acceptedPerSecond.reduce(0, +) - 200) / 60
        #expect(abs(afterBurst - 100) <= 5)
        #expect(refusals > 0)
        #expect(RateLimitHeaders.policy(name: "client", limit: limit) == "\"client\";q=100;w=1")
    }

    /// A policy name is a structured-field string: `"` and `\` are escaped, anything else is not.
    @Test func policyNamesAreEscapedAsStructuredFieldStrings() {
        let limit = RateLimit(count: 5, windowSeconds: 60)
        #expect(RateLimitHeaders.policy(name: "key:a\"b\\c", limit: limit) == #""key:a\"b\\c";q=5;w=60"#)
        #expect(RateLimitHeaders.policy(name: "pkey:shop é", limit: limit) == #""pkey:shop é";q=5;w=60"#)
    }

    /// R2: two principals have independent buckets.
    @Test func r2KeysHaveIndependentBuckets() {
        let clock = KeysTestClock()
        let limiter = RateLimiter { clock.now }
        let limit = RateLimit(count: 5, windowSeconds: 1, burst: 5)
        for _ in 0..<5 { #expect(limiter.check("key:a", limit: limit).allowed) }
        #expect(!limiter.check("key:a", limit: limit).allowed)
        for _ in 0..<5 { #expect(limiter.check("key:b", limit: limit).allowed) }
        #expect(!limiter.check("key:b", limit: limit).allowed)
        clock.advance(nanoseconds: 200_000_000)
        #expect(limiter.check("key:a", limit: limit).allowed)
        #expect(!limiter.check("key:a", limit: limit).allowed)
    }

    @Test func theLimiterTracksABoundedNumberOfKeys() {
        let clock = KeysTestClock()
        let limiter = RateLimiter(maxKeys: 100) { clock.now }
        let limit = RateLimit(count: 1, windowSeconds: 60, burst: 1)
        for index in 0..<1000 {
            #expect(limiter.check("ip:\(index)", limit: limit).allowed)
            #expect(limiter.trackedKeys <= 100)
        }
        #expect(!limiter.check("ip:999", limit: limit).allowed, "a recent key is still limited")
        clock.advance(nanoseconds: 61_000_000_000)
        #expect(limiter.check("ip:999", limit: limit).allowed)
        #expect(limiter.check("ip:new", limit: limit).allowed)
        #expect(limiter.trackedKeys <= 2, "idle keys were evicted before a busy one")
    }
}
