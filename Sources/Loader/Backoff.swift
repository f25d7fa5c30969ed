/// Exponential back-off with jitter: the step doubles from `initial` up to `maximum`, and each
/// delay lies between half the step and the whole step.
///
/// The jitter is injected: `Double.random(in: 0...1)` in production, a fixed fraction in tests,
/// which can then assert the exact curve.
struct Backoff {
    let initial: Duration
    let maximum: Duration
    /// A fraction in 0...1 for each delay; values outside are clamped.
    private let jitter: () -> Double
    private var attempt = 0

    init(initial: Duration, maximum: Duration, jitter: @escaping () -> Double = { Double.random(in: 0...1) }) {
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
    }

    /// The delay before the next attempt.
    mutating func next() -> Duration {
        let ceiling = min(self.maximum, self.initial * (1 << min(self.attempt, 20)))
        self.attempt += 1
        // Jitter, but never less than half the step: retries spread out, none spins.
        return ceiling / 2 + ceiling / 2 * min(1, max(0, self.jitter()))
    }

    /// Back to `initial`: the thing retried succeeded.
    mutating func reset() { self.attempt = 0 }
}
