import Auth
import Foundation
import Gateway
import SluiceCore

/// What `sluice dev` sets up so that the tour works with the front door on: HTTPS with its
/// own CA, a secret key, a publishable browser key and an OAuth client of the built-in
/// authorization server. All of it lives in the state directory, is reused across restarts,
/// and is written to `<state>/env` (mode 0600) for `source`.
struct DevCredentials {
    var secretKey: String
    var browserKey: String
    /// A secret key with only `stats:read`: the analytics page's (docs/analytics.md).
    var statsKey: String
    var clientID: String
    var clientSecret: String
    var caFile: String
    var envFile: String

    /// The origin the dev browser key is bound to (the tour's pixel sends it as `Referer`).
    static let browserOrigin = "https://shop.example"

    /// Points the settings at the state directory's certificate, key store and built-in
    /// server, creating what is missing, and returns the credentials to show.
    static func prepare(settings: inout Settings, stateDir: String, port: Int) async throws -> DevCredentials {
        let tls = stateDir + "/tls"
        let manager = FileManager.default
        if !manager.fileExists(atPath: tls + "/server.pem") || !manager.fileExists(atPath: tls + "/ca.pem") {
            _ = try TLSSelfSigned.writeBundle(
                directory: tls,
                hosts: ["localhost", "127.0.0.1", "::1"],
                clientURI: "spiffe://sluice.local/dev-client"
            )
        }
        if settings.gateway.tlsCertFile == nil && settings.gateway.tlsKeyFile == nil {
            settings.gateway.tlsCertFile = tls + "/server.pem"
            settings.gateway.tlsKeyFile = tls + "/server.key"
        }
        let envFile = stateDir + "/env"
        let previous = Self.readEnv(envFile)

        // API keys, in the state directory unless configured elsewhere.
        if settings.apiKeys.file == nil && settings.apiKeys.postgresURL == nil {
            settings.apiKeys.file = stateDir + "/keys.json"
        }
        guard let keysFile = settings.apiKeys.file else {
            throw SettingsError(description: "sluice dev keeps its keys in a file; unset auth.api_keys.postgres_url")
        }
        let store = try FileKeyStore(path: keysFile)
        let authenticator = APIKeyAuthenticator(store: store)
        // The browser key also serves the gateway's own /demo page (docs/tracker.md).
        let browserOrigins = [Self.browserOrigin, "https://127.0.0.1:\(port)", "https://localhost:\(port)"]
        func stillValid(_ key: String?, browser: Bool) -> Bool {
            guard let key else { return false }
            for origin in browser ? browserOrigins.map(Optional.some) : [nil] {
                guard case .success = authenticator.authenticate(key: key, origin: origin, browserEndpoint: browser)
                else { return false }
            }
            return true
        }
        var secretKey = previous["SLUICE_KEY"]
        if !stillValid(secretKey, browser: false) {
            let current = try await store.list()
            if current.contains(where: { $0.name == "dev" && $0.revokedAt == nil }) {
                _ = try await store.revoke(name: "dev", now: Date())
            }
            let issued = try await store.create(
                NewAPIKey(name: "dev", kind: .secret, environment: .test),
                now: Date()
            )
            secretKey = issued.key.plaintext
        }
        var browserKey = previous["SLUICE_BROWSER_KEY"]
        if !stillValid(browserKey, browser: true) {
            let current = try await store.list()
            if current.contains(where: { $0.name == "dev-browser" && $0.revokedAt == nil }) {
                _ = try await store.revoke(name: "dev-browser", now: Date())
            }
            let issued = try await store.create(
                NewAPIKey(name: "dev-browser", kind: .publishable, environment: .test, origins: browserOrigins),
                now: Date()
            )
            browserKey = issued.key.plaintext
        }

        var statsKey = previous["SLUICE_STATS_KEY"]
        if !stillValid(statsKey, browser: false) {
            let current = try await store.list()
            if current.contains(where: { $0.name == "dev-stats" && $0.revokedAt == nil }) {
                _ = try await store.revoke(name: "dev-stats", now: Date())
            }
            let issued = try await store.create(
                NewAPIKey(name: "dev-stats", kind: .secret, environment: .test, scopes: [APIKeyScope.statsRead]),
                now: Date()
            )
            statsKey = issued.key.plaintext
        }

        // The built-in authorization server, with one client.
        let oauth = stateDir + "/oauth"
        try manager.createDirectory(atPath: oauth, withIntermediateDirectories: true)
        settings.auth.builtinServer.enabled = true
        settings.auth.builtinServer.signingKeyFile = oauth + "/signing.key"
        settings.auth.builtinServer.clientsFile = oauth + "/clients.json"
        settings.auth.builtinServer.issuer = "https://127.0.0.1:\(port)"
        settings.auth.builtinServer.caFile = tls + "/ca.pem"
        let clients = try OAuthClientStore(path: oauth + "/clients.json")
        var clientSecret = previous["SLUICE_CLIENT_SECRET"]
        let existing = try clients.client("dev")
        if clientSecret == nil || existing == nil {
            if existing != nil { try clients.remove("dev") }
            clientSecret = try clients.add("dev", scopes: ["events:write"]).secret
        }
        guard let secretKey, let browserKey, let statsKey, let clientSecret else {
            throw SettingsError(description: "could not create the development credentials in \(stateDir)")
        }
        return DevCredentials(
            secretKey: secretKey,
            browserKey: browserKey,
            statsKey: statsKey,
            clientID: "dev",
            clientSecret: clientSecret,
            caFile: tls + "/ca.pem",
            envFile: envFile
        )
    }

    /// The variables ``writeEnv(url:)`` exports: a shell that sourced them still runs every
    /// `sluice` command (they are not settings, and not refused as unknown ones).
    static let environmentNames: Set<String> = [
        "SLUICE_URL", "SLUICE_KEY", "SLUICE_BROWSER_KEY", "SLUICE_CLIENT_ID", "SLUICE_CLIENT_SECRET",
        "SLUICE_STATS_KEY",
    ]

    /// `<state>/env`: the variables the README tour uses, for `source`. Mode 0600. The test CA
    /// for curl (`CURL_CA_BUNDLE`) and for Python's `requests`, which the Segment and RudderStack
    /// SDKs use (`REQUESTS_CA_BUNDLE`, which wins over `CURL_CA_BUNDLE` where a system sets it).
    func writeEnv(url: String) throws {
        let text = """
            # Written by sluice dev: development credentials (test keys; never use them in production).
            export SLUICE_URL=\(url)
            export CURL_CA_BUNDLE=\(Self.absolute(self.caFile))
            export REQUESTS_CA_BUNDLE=\(Self.absolute(self.caFile))
            export SLUICE_KEY=\(self.secretKey)
            export SLUICE_BROWSER_KEY=\(self.browserKey)
            export SLUICE_STATS_KEY=\(self.statsKey)
            export SLUICE_CLIENT_ID=\(self.clientID)
            export SLUICE_CLIENT_SECRET=\(self.clientSecret)

            """
        try TLSSelfSigned.write(text, to: self.envFile, mode: 0o600)
    }

    static func absolute(_ path: String) -> String {
        URL(fileURLWithPath: path).standardizedFileURL.path
    }

    static func readEnv(_ path: String) -> [String: String] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [:] }
        var values: [String: String] = [:]
        for line in text.split(separator: "\n") where line.hasPrefix("export ") {
            let assignment = line.dropFirst("export ".count)
            guard let equals = assignment.firstIndex(of: "=") else { continue }
            values[String(assignment[..<equals])] = String(assignment[assignment.index(after: equals)...])
        }
        return values
    }
}
