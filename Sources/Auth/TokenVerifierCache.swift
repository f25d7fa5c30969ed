import Crypto
import Foundation
import SluiceCore
import Synchronization

/// Tokens verified recently, keyed by the full token string, so a client that sends the same
/// token many times pays for the signature once (as PostgREST's JWT cache and Envoy's
/// `jwt_cache_config` do). The key is the token's SHA-256, which identifies the whole string
/// while holding 32 bytes instead of up to `max_token_bytes`, and keeps no bearer token in memory. An entry lives at most `maxTTL` and never past the token's `exp`, so
/// a key removed from the issuer stops working within `maxTTL`.
final class VerifiedTokenCache: Sendable {
    private struct Entry: Sendable {
        var token: VerifiedToken
        var until: Date
    }

    private let maxEntries: Int
    private let maxTTL: TimeInterval
    private let entries = Mutex<[SHA256Digest: Entry]>([:])

    init(maxEntries: Int, maxTTL: Duration) {
        self.maxEntries = maxEntries
        self.maxTTL = maxTTL.seconds
    }

    /// The verified token for `token`, if cached and not expired at `now`.
    func lookup(_ token: String, now: Date) -> VerifiedToken? {
        let key = SHA256.hash(data: Array(token.utf8))
        return self.entries.withLock { entries in
            guard let entry = entries[key] else { return nil }
            guard now < entry.until else {
                entries[key] = nil
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
        let key = SHA256.hash(data: Array(token.utf8))
        self.entries.withLock { entries in
            if entries.count >= self.maxEntries, entries[key] == nil {
                entries = entries.filter { $0.value.until > now }
                while entries.count >= self.maxEntries, let first = entries.keys.first {
                    entries[first] = nil
                }
            }
            entries[key] = Entry(token: verified, until: until)
        }
    }

    var count: Int { self.entries.withLock { $0.count } }
}
