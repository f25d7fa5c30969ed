import AsyncHTTPClient
import Dispatch
import Foundation
import Kafka
import NIOCore
import NIOHTTP1
import NIOSSL
import SluiceCore
import Synchronization

/// One OAuth 2.0 client-credentials request (RFC 6749 §4.4, `client_secret_basic`): what
/// `sluice oauth token` prints, and where the Kafka clients' OAUTHBEARER tokens come from.
struct ClientCredentialsGrant: Sendable {
    var endpoint: String
    var clientID: String
    var secret: String
    var scopes: [String] = []
    /// PEM CAs for an https endpoint; nil: the system's.
    var caFile: String?

    struct Token: Sendable {
        var accessToken: String
        /// `expires_in`, when the server said.
        var expiresIn: Int?
    }

    /// Why no token came back; never carries the secret.
    enum Failure: Error, CustomStringConvertible {
        case unreadableCA(String, String)
        case request(String, String)
        case refused(UInt, String, String?)
        case unexpected(String, UInt)

        var description: String {
            switch self {
            case .unreadableCA(let file, let reason): "cannot read CA certificates from \(file): \(reason)"
            case .request(let endpoint, let reason): "the token request to \(endpoint) failed: \(reason)"
            case .refused(let status, let error, let detail):
                "the authorization server refused (HTTP \(status)): \(error)\(detail.map { ": \($0)" } ?? "")"
            case .unexpected(let endpoint, let status): "unexpected answer from \(endpoint): HTTP \(status)"
            }
        }
    }

    func fetch(timeout: Duration) async throws(Failure) -> Token {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.minimumTLSVersion = .tlsv12
        if let caFile = self.caFile {
            do {
                tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(caFile))
            } catch {
                throw .unreadableCA(caFile, "\(error)")
            }
        }
        var configuration = HTTPClient.Configuration(tlsConfiguration: tls)
        // A refused certificate or connection is reported at once, not retried until the
        // connect timeout: the caller (a script, librdkafka's refresh) retries as it sees fit.
        configuration.connectionPool.retryConnectionEstablishment = false
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
        let outcome: Result<(status: UInt, body: [UInt8]), any Error>
        do {
            var request = HTTPClientRequest(url: self.endpoint)
            request.method = .POST
            request.headers.add(name: "Content-Type", value: "application/x-www-form-urlencoded")
            request.headers.add(name: "Accept", value: "application/json")
            // RFC 6749 §2.3.1: id and secret are form-urlencoded before Base64.
            let credentials = Self.formEncode(self.clientID) + ":" + Self.formEncode(self.secret)
            request.headers.add(name: "Authorization", value: "Basic " + Data(credentials.utf8).base64EncodedString())
            var form = "grant_type=client_credentials"
            if !self.scopes.isEmpty { form += "&scope=" + Self.formEncode(self.scopes.joined(separator: " ")) }
            request.body = .bytes(ByteBuffer(string: form))
            let response = try await client.execute(request, timeout: .nanoseconds(Int64(timeout.nanoseconds)))
            let body = try await response.body.collect(upTo: 1 << 20)
            outcome = .success((response.status.code, Array(body.readableBytesView)))
        } catch {
            outcome = .failure(error)
        }
        try? await client.shutdown()
        let status: UInt
        let body: [UInt8]
        switch outcome {
        case .success(let answer): (status, body) = answer
        case .failure(let error): throw .request(self.endpoint, "\(error)")
        }
        let document = (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any]
        if status == 200, let token = document?["access_token"] as? String, !token.isEmpty {
            return Token(accessToken: token, expiresIn: (document?["expires_in"] as? NSNumber)?.intValue)
        }
        if let error = document?["error"] as? String {
            throw .refused(status, error, document?["error_description"] as? String)
        }
        throw .unexpected(self.endpoint, status)
    }

    /// Percent-encodes all but the unreserved characters (RFC 3986 §2.3).
    static func formEncode(_ text: String) -> String {
        let allowed = CharacterSet(charactersIn: "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
        return text.addingPercentEncoding(withAllowedCharacters: allowed) ?? text
    }

    /// The `sub` claim of a JWT access token, unverified (the broker verifies it; this only
    /// names the principal for librdkafka); nil for an opaque token.
    static func subject(of token: String) -> String? {
        let parts = token.split(separator: ".")
        guard parts.count == 3 else { return nil }
        var base64 = parts[1].replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while base64.count % 4 != 0 { base64 += "=" }
        guard let data = Data(base64Encoded: base64),
            let claims = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any]
        else { return nil }
        return claims["sub"] as? String
    }
}

extension KafkaSecurity {
    /// Registers the client-credentials grant of `kafka.security.sasl.oauthbearer.*` as this
    /// process's OAUTHBEARER token source. The secret file is read at each refresh, so a
    /// rotated secret is picked up without a restart.
    func registerOAuthBearerSource() {
        guard self.usesOAuthBearer, let endpoint = self.oauthTokenEndpoint, let clientID = self.oauthClientID,
            let secretFile = self.oauthClientSecretFile
        else { return }
        let scopes = self.oauthScope.map { $0.split(separator: " ").map(String.init) } ?? []
        let caFile = self.oauthCAFile
        KafkaOAuthBearer.register {
            let secret = try SecretFile.read(
                secretFile,
                key: "kafka.security.sasl.oauthbearer.client_secret_file",
                origin: "kafka"
            )
            let grant = ClientCredentialsGrant(
                endpoint: endpoint,
                clientID: clientID,
                secret: secret,
                scopes: scopes,
                caFile: caFile
            )
            // librdkafka's background thread waits here; the request runs on NIO's threads.
            let result = Mutex<Result<ClientCredentialsGrant.Token, ClientCredentialsGrant.Failure>?>(nil)
            let done = DispatchSemaphore(value: 0)
            Task {
                do throws(ClientCredentialsGrant.Failure) {
                    let token = try await grant.fetch(timeout: .seconds(10))
                    result.withLock { $0 = .success(token) }
                } catch {
                    result.withLock { $0 = .failure(error) }
                }
                done.signal()
            }
            done.wait()
            guard let outcome = result.withLock({ $0 }) else {
                throw ClientCredentialsGrant.Failure.request(endpoint, "no answer")
            }
            let token = try outcome.get()
            let lifetime = Int64(token.expiresIn ?? 300)
            return OAuthBearerToken(
                value: token.accessToken,
                expiresAtMilliseconds: Int64(Date().timeIntervalSince1970 * 1000) + lifetime * 1000,
                principal: ClientCredentialsGrant.subject(of: token.accessToken) ?? clientID
            )
        }
    }
}
