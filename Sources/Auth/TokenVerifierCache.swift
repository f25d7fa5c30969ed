import Foundation
import Synchronization

/// Tokens verified recently, keyed by the full token string, so a client that sends the same
/// token many times pays for the signature once (as PostgREST's JWT cache and Envoy's
/// `jwt_cache_config` do). An entry lives at most `maxTTL` and never past the token's `exp`, so
/// a key removed from the issuer stops working within `maxTTL`.
final class VerifiedTokenCache: Sendable {
    private struct Entry: Sendable {
        var token: VerifiedToken
        var until: Date
    }

    private let maxEntries: Int
    private let maxTTL: TimeInterval
    private let entries = Mutex<[String: Entry]>([:])

    init(maxEntries: Int, maxTTL: Duration) {
        self.maxEntries = maxEntries
        self.maxTTL = maxTTL.timeInterval
    }

    /// The verified token for `token`, if cached and not expired at `now`.
    func lookup(_ token: String, now: Date) -> VerifiedToken? {
        self.entries.withLock { entries in
            guard let entry = entries[token] else { return nil }
            guard now < entry.until else {
                entries[token] = nil
                return nil
            }
            return entry.token
        }
    }

    /// Remembers `verified` until min(exp, now + maxTTL). When full, expired entries go first,
    /// then arbitrary ones: the cache only saves work, it never decides.
    func insert(_ token: String, _ verified: VerifiedToken, now: Date) {
        guard self.maxEntries > 0 else { return }
        let until = min(verified.expiresAt, now + self.maxTTL)
        guard until > now else { return }
        self.entries.withLock { entries in
            if entries.count >= self.maxEntries, entries[token] == nil {
                entries = entries.filter { $0.value.until > now }
                while entries.count >= self.maxEntries, let first = entries.keys.first {
                    entries[first] = nil
                }
            }
            entries[token] = Entry(token: verified, until: until)
        }
    }

    var count: Int { self.entries.withLock { $0.count } }
}
