import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NIOSSL
import SluiceCore

/// Why fetching an issuer's metadata or key set failed; `label` is a fixed word for metrics and
/// logs, `message` is safe to log (no response body).
public struct JWKSFetchError: Error, Sendable, Equatable, CustomStringConvertible {
    public var label: String
    public var message: String
    public var description: String { "\(self.label): \(self.message)" }
}

/// Fetches one issuer's metadata and JWKS over HTTPS, with verification on, a time limit, a size
/// limit and no redirects. Never fetches anything a token names.
struct JWKSFetcher: Sendable {
    let httpClient: HTTPClient
    let policy: JWKSPolicy
    let tlsConfiguration: TLSConfiguration?

    /// A fetched document and what its `Cache-Control` allows.
    struct Document: Sendable {
        var body: [UInt8]
        var cacheControl: String?
    }

    /// Trust only the CAs in the policy's `caFile`, when it is set.
    static func tlsConfiguration(for policy: JWKSPolicy) throws -> TLSConfiguration? {
        guard let caFile = policy.caFile else { return nil }
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(caFile))
        configuration.minimumTLSVersion = .tlsv12
        return configuration
    }

    /// GETs `uri` (which must be https) and returns the body, at most `policy.maxBytes` long.
    func get(_ uri: String) async throws(JWKSFetchError) -> Document {
        guard IssuerConfiguration.isHTTPS(uri) else {
            throw JWKSFetchError(label: "not_https", message: "refusing to fetch a non-https URL")
        }
        var prepared = HTTPClientRequest(url: uri)
        prepared.headers.add(name: "Accept", value: "application/json")
        prepared.tlsConfiguration = self.tlsConfiguration
        let request = prepared
        let timeout = TimeAmount.nanoseconds(self.policy.timeout.nanoseconds)
        let deadline = NIODeadline.now() + timeout
        let maxBytes = self.policy.maxBytes
        let client = self.httpClient
        let result: Swift.Result<Document, JWKSFetchError> = await withTaskGroup(
            of: Swift.Result<Document, JWKSFetchError>?.self
        ) { group in
            group.addTask {
                do {
                    let response = try await client.execute(request, deadline: deadline)
                    guard response.status == .ok else {
                        return .failure(JWKSFetchError(label: "http_status", message: "HTTP \(response.status.code)"))
                    }
                    let body: ByteBuffer
                    do {
                        body = try await response.body.collect(upTo: maxBytes)
                    } catch {
                        return .failure(
                            JWKSFetchError(label: "too_large", message: "the document exceeds \(maxBytes) bytes")
                        )
                    }
                    return .success(
                        Document(
                            body: Array(body.readableBytesView),
                            cacheControl: response.headers.first(name: "Cache-Control")
                        )
                    )
                } catch let error as HTTPClientError where error == .deadlineExceeded {
                    return .failure(JWKSFetchError(label: "timeout", message: "no answer within the timeout"))
                } catch {
                    return .failure(JWKSFetchError(label: "unreachable", message: "\(type(of: error)): \(error)"))
                }
            }
            // The deadline covers the head; this covers reading the body too.
            group.addTask {
                try? await Task.sleep(for: self.policy.timeout)
                return Task.isCancelled
                    ? nil : .failure(JWKSFetchError(label: "timeout", message: "no answer within the timeout"))
            }
            var first: Swift.Result<Document, JWKSFetchError>?
            while first == nil, let next = await group.next() {
                first = next
            }
            group.cancelAll()
            return first ?? .failure(JWKSFetchError(label: "timeout", message: "no answer within the timeout"))
        }
        return try result.get()
    }

    /// The metadata URLs tried for `issuer`: RFC 8414 §3 (the well-known segment goes between the
    /// host and the path), then OIDC Discovery (appended to the issuer).
    static func metadataURLs(for issuer: String) -> [String] {
        guard let components = URLComponents(string: issuer), let host = components.host else { return [] }
        var authority = "https://\(host)"
        if let port = components.port { authority += ":\(port)" }
        let path = components.path == "/" ? "" : components.path
        let trimmed = issuer.hasSuffix("/") ? String(issuer.dropLast()) : issuer
        return [
            "\(authority)/.well-known/oauth-authorization-server\(path)",
            "\(trimmed)/.well-known/openid-configuration",
        ]
    }

    /// Reads `jwks_uri` from the issuer's metadata, checking that the metadata names the same
    /// issuer exactly (RFC 8414 §3.3) and that the key set is served over https.
    func discoverJWKSURI(issuer: String) async throws(JWKSFetchError) -> String {
        var lastError = JWKSFetchError(label: "discovery", message: "no metadata URL for the issuer")
        for url in Self.metadataURLs(for: issuer) {
            let document: Document
            do {
                document = try await self.get(url)
            } catch {
                lastError = error
                continue
            }
            guard let metadata = try? JWTJSON.parseObject(document.body) else {
                throw JWKSFetchError(label: "discovery", message: "the metadata is not a JSON object")
            }
            guard metadata["issuer"]?.stringValue == issuer else {
                throw JWKSFetchError(label: "discovery", message: "the metadata names another issuer")
            }
            guard let uri = metadata["jwks_uri"]?.stringValue, IssuerConfiguration.isHTTPS(uri) else {
                throw JWKSFetchError(label: "discovery", message: "the metadata has no https jwks_uri")
            }
            return uri
        }
        throw lastError
    }

    /// How long a fetched set may be used: `max-age` clamped to [min_ttl, max_ttl], `no-store` or
    /// `no-cache` as min_ttl, and default_ttl without a `max-age`.
    static func timeToLive(cacheControl: String?, policy: JWKSPolicy) -> Duration {
        guard let cacheControl else { return policy.defaultTTL }
        var ttl: Duration?
        for directive in cacheControl.split(separator: ",") {
            let parts = directive.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard let first = parts.first else { continue }
            let name = first.trimmingCharacters(in: .whitespaces).lowercased()
            if name == "no-store" || name == "no-cache" { return policy.minTTL }
            if name == "max-age", parts.count == 2 {
                let text = parts[1].trimmingCharacters(in: .whitespaces).trimmingCharacters(
                    in: CharacterSet(charactersIn: "\"")
                )
                if let seconds = Int64(text), seconds >= 0 { ttl = .seconds(seconds) }
            }
        }
        guard let ttl else { return policy.defaultTTL }
        return min(max(ttl, policy.minTTL), policy.maxTTL)
    }
}
