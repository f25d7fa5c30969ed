/// Who sent a request, once its credential has been checked: what the gateway writes into
/// every event's `source` and into the request's log line. Never holds a secret.
public struct Principal: Sendable, Hashable, CustomStringConvertible {
    /// The kind of credential that proved the identity.
    public enum Kind: String, Sendable, Hashable, CaseIterable {
        /// A secret API key (`slk_…`), for servers.
        case secretKey = "key"
        /// A publishable browser key (`slp_…`), bound to origins.
        case publishableKey = "pkey"
        /// An OAuth 2.0 access token (JWT) from a configured issuer.
        case oauthClient = "client"
        /// A client certificate (mTLS).
        case certificate = "cert"
        /// Nobody: `auth.required: false`.
        case anonymous = "anonymous"

        /// The label used in metrics and logs (`method`).
        public var method: String {
            switch self {
            case .secretKey: return "secret_key"
            case .publishableKey: return "publishable_key"
            case .oauthClient: return "jwt"
            case .certificate: return "mtls"
            case .anonymous: return "none"
            }
        }
    }

    public var kind: Kind
    /// The key's name, the token's client id, or the certificate's identity.
    public var name: String

    public init(kind: Kind, name: String) {
        self.kind = kind
        self.name = name
    }

    public static let anonymous = Principal(kind: .anonymous, name: "")

    /// `key:web-shop`, `client:analytics-backend`, `cert:spiffe://corp/billing`; empty for
    /// anonymous requests. This is what policies and rate-limit overrides name.
    public var description: String { self.kind == .anonymous ? "" : "\(self.kind.rawValue):\(self.name)" }
}

/// Why a request's credential was not accepted, in the terms of RFC 6750 §3.1.
///
/// `detail` is written for the caller and is safe to show: it never contains the credential,
/// a signature or a secret. `reason` is a short fixed label for metrics and logs.
public struct AuthFailure: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: String, Sendable {
        /// 400: malformed or more than one credential.
        case invalidRequest = "invalid_request"
        /// 401: missing, unknown, expired, revoked or badly signed.
        case invalidToken = "invalid_token"
        /// 403: a valid credential without the required scope.
        case insufficientScope = "insufficient_scope"
        /// 403: a valid credential used where it may not be (wrong endpoint, origin, action).
        case forbidden = "forbidden"
        /// 429: too many requests or too many failed attempts.
        case rateLimited = "rate_limited"
    }

    public var code: Code
    /// HTTP status: 400, 401, 403 or 429.
    public var status: Int
    /// A fixed label such as `expired`, `bad_signature`, `unknown_kid`, `bad_checksum`.
    public var reason: String
    /// Safe to show to the caller.
    public var detail: String
    /// For `insufficient_scope`: the scope that was missing.
    public var scope: String?
    /// For `rate_limited`: seconds until a retry can succeed.
    public var retryAfterSeconds: Int?

    public init(
        _ code: Code,
        reason: String,
        detail: String,
        status: Int? = nil,
        scope: String? = nil,
        retryAfterSeconds: Int? = nil
    ) {
        self.code = code
        self.reason = reason
        self.detail = detail
        self.scope = scope
        self.retryAfterSeconds = retryAfterSeconds
        switch code {
        case .invalidRequest: self.status = status ?? 400
        case .invalidToken: self.status = status ?? 401
        case .insufficientScope, .forbidden: self.status = status ?? 403
        case .rateLimited: self.status = status ?? 429
        }
    }

    /// 401 `invalid_token`.
    public static func invalidToken(_ reason: String, _ detail: String) -> AuthFailure {
        AuthFailure(.invalidToken, reason: reason, detail: detail)
    }

    /// 400 `invalid_request`.
    public static func invalidRequest(_ reason: String, _ detail: String) -> AuthFailure {
        AuthFailure(.invalidRequest, reason: reason, detail: detail)
    }

    /// 403, not a scope matter (endpoint, origin, action, batch size).
    public static func forbidden(_ reason: String, _ detail: String) -> AuthFailure {
        AuthFailure(.forbidden, reason: reason, detail: detail)
    }

    public var description: String { "\(self.status) \(self.code.rawValue) (\(self.reason)): \(self.detail)" }
}
