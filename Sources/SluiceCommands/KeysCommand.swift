import ArgumentParser
import Auth
import Foundation
import SluiceCore

/// `sluice keys …`: create, list, revoke and roll API keys in the file or PostgreSQL store.
/// A key is printed once, at creation; everything else shows it masked.
struct KeysCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keys",
        abstract: "Create, list, revoke and roll API keys.",
        discussion: """
            The store is --file PATH, --postgres URL, or auth.api_keys.file / auth.api_keys.postgres_url \
            from --config (or SLUICE_AUTH_API_KEYS_FILE / SLUICE_AUTH_API_KEYS_POSTGRES_URL). \
            Running gateways pick changes up within seconds, without a restart.
            """,
        subcommands: [Create.self, List.self, Revoke.self, Roll.self]
    )
}

/// Which key store a `sluice keys` command works on.
struct KeyStoreOptions: ParsableArguments {
    @Option(help: "The JSON key file (auth.api_keys.file).")
    var file: String?

    @Option(help: "A PostgreSQL URL (auth.api_keys.postgres_url); its password is never printed.")
    var postgres: String?

    @Option(help: "A YAML configuration file to read the store from.")
    var config: String?

    func open() throws -> any APIKeyStore {
        if self.file != nil && self.postgres != nil {
            throw KeysCommandError("pass either --file or --postgres, not both")
        }
        var file = self.file
        var postgres = self.postgres
        if file == nil && postgres == nil {
            let settings: Settings
            do { settings = try SettingsLoader.load(file: self.config) } catch let error as SettingsError {
                throw KeysCommandError(error.description)
            }
            file = settings.apiKeys.file
            postgres = settings.apiKeys.postgresURL
            if file == nil && postgres == nil {
                throw KeysCommandError(
                    "no key store: pass --file PATH or --postgres URL, or set auth.api_keys.file in the --config file"
                )
            }
        }
        do { return try openAPIKeyStore(file: file, postgresURL: postgres) } catch {
            throw KeysCommandError(error.message)
        }
    }
}

/// A failure the operator can act on: printed as one sentence, exit status 1.
struct KeysCommandError: Error {
    var message: String
    init(_ message: String) { self.message = message }
}

extension KeysCommand {
    /// Runs `body`, turning every failure into `sluice: <sentence>` on stderr and exit status 1.
    static func perform(_ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch let error as KeysCommandError {
            printError("sluice: \(error.message)")
            throw ExitCode(1)
        } catch let error as KeyStoreError {
            printError("sluice: \(error.message)")
            throw ExitCode(1)
        }
    }

    static func formatDate(_ date: Date?) -> String {
        guard let date else { return "-" }
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.string(from: date)
    }

    static func duration(_ text: String, option: String) throws -> Duration {
        guard let duration = APIKeyDuration.parse(text) else {
            throw KeysCommandError(
                "\(option) '\(text)' is not a duration; use a whole number and a unit, e.g. 90d, 24h, 30m"
            )
        }
        return duration
    }

    static func printNewKey(_ issued: IssuedAPIKey) {
        print(issued.key.plaintext)
        print("This key will not be shown again: store it now (only its SHA-256 is kept).")
    }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a key and print it once.",
            discussion: """
                Secret keys (slk_) are for servers and are refused from browsers. Publishable keys (slp_) \
                are for the pixel, beacon and CORS endpoints and need at least one --origin.
                """
        )

        @Argument(help: "A unique name: the principal is key:NAME (letters, digits, '.', '_', '-').")
        var name: String

        @Option(help: "secret or publishable.")
        var kind: String

        @Option(name: .customLong("origin"), help: "An origin a publishable key may be used from (repeatable).")
        var origins: [String] = []

        @Option(help: "Expire the key after this long, e.g. 90d, 12h.")
        var expires: String?

        @Option(help: "The key's own rate limit, e.g. 50/s or 3000/m.")
        var rate: String?

        @Option(help: "The burst for --rate (default: one window's worth).")
        var burst: Int?

        @Option(help: "live or test: written into the key's prefix.")
        var environment: String = "live"

        @Option(name: .customLong("action"), help: "An action the key may send (repeatable; default: any).")
        var actions: [String] = []

        @Option(help: "The largest batch the key may send.")
        var maxBatch: Int?

        @Option(
            name: .customLong("scope"),
            help: "What the key may do: events:write or stats:read (repeatable; default: events:write)."
        )
        var scopes: [String] = []

        @OptionGroup var store: KeyStoreOptions

        func run() async throws {
            try await KeysCommand.perform {
                guard let kind = APIKeyKind(rawValue: self.kind) else {
                    throw KeysCommandError("--kind must be secret or publishable, not '\(self.kind)'")
                }
                guard let environment = APIKeyEnvironment(rawValue: self.environment) else {
                    throw KeysCommandError("--environment must be live or test, not '\(self.environment)'")
                }
                let expires = try self.expires.map { try KeysCommand.duration($0, option: "--expires") }
                if self.burst != nil && self.rate == nil { throw KeysCommandError("--burst needs --rate") }
                var rate: RateLimit?
                if let text = self.rate {
                    if let burst = self.burst, burst < 1 { throw KeysCommandError("--burst must be at least 1") }
                    guard let parsed = RateLimit(text, burst: self.burst) else {
                        throw KeysCommandError("--rate '\(text)' is not a rate; use e.g. 50/s or 3000/m")
                    }
                    rate = parsed
                }
                let request = NewAPIKey(
                    name: self.name,
                    kind: kind,
                    environment: environment,
                    origins: self.origins,
                    expiresIn: expires,
                    rate: rate,
                    allowedActions: self.actions.isEmpty ? nil : self.actions,
                    maxBatch: self.maxBatch,
                    scopes: self.scopes.isEmpty ? nil : self.scopes
                )
                let issued = try await self.store.open().create(request, now: Date())
                print("Created \(kind.rawValue) key \(self.name) (\(issued.record.masked)):")
                KeysCommand.printNewKey(issued)
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "ls",
            abstract: "List keys, masked: id, name, kind, origins, created, expires, revoked, last used.",
            aliases: ["list"]
        )

        @OptionGroup var store: KeyStoreOptions
        @OptionGroup var output: OutputOptions

        struct Row: Encodable {
            var id: String
            var key: String
            var name: String
            var kind: String
            var state: String
            var origins: [String]
            var created: String
            var expires: String?
            var revoked: String?
            var lastUsed: String?
            var rate: String?
            var scopes: [String]
        }

        func run() async throws {
            try await KeysCommand.perform {
                let keys = try await self.store.open().list()
                let now = Date()
                let rows = keys.map { key in
                    Row(
                        id: key.id,
                        key: key.masked,
                        name: key.name,
                        kind: key.kind.rawValue,
                        state: key.state(at: now),
                        origins: key.allowedOrigins,
                        created: KeysCommand.formatDate(key.createdAt),
                        expires: key.expiresAt.map { KeysCommand.formatDate($0) },
                        revoked: key.revokedAt.map { KeysCommand.formatDate($0) },
                        lastUsed: key.lastUsedAt.map { KeysCommand.formatDate($0) },
                        rate: key.rateLimit?.description,
                        scopes: key.scopes ?? APIKeyScope.defaults
                    )
                }
                if self.output.json {
                    try printJSON(rows)
                    return
                }
                var grid = [
                    ["ID", "NAME", "KIND", "KEY", "STATE", "ORIGINS", "CREATED", "EXPIRES", "REVOKED", "LAST_USED"]
                ]
                for row in rows {
                    grid.append([
                        row.id, row.name, row.kind, row.key, row.state,
                        row.origins.isEmpty ? "-" : row.origins.joined(separator: ","),
                        row.created, row.expires ?? "-", row.revoked ?? "-", row.lastUsed ?? "-",
                    ])
                }
                print(table(grid))
            }
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Revoke a key (and any older key of the same name still in a roll's grace period)."
        )

        @Argument(help: "The key's name.")
        var name: String

        @OptionGroup var store: KeyStoreOptions

        func run() async throws {
            try await KeysCommand.perform {
                let changed = try await self.store.open().revoke(name: self.name, now: Date())
                if changed.isEmpty {
                    print("The key named \(self.name) was already revoked.")
                } else {
                    let keys = changed.map(\.masked).joined(separator: ", ")
                    print("Revoked \(self.name) (\(keys)); gateways refuse it within seconds.")
                }
            }
        }
    }

    struct Roll: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Issue a new key for NAME; the old one stays valid for the grace period."
        )

        @Argument(help: "The key's name.")
        var name: String

        @Option(help: "How long the old key stays valid, e.g. 24h, 0s.")
        var grace: String = "24h"

        @OptionGroup var store: KeyStoreOptions

        func run() async throws {
            try await KeysCommand.perform {
                let grace = try KeysCommand.duration(self.grace, option: "--grace")
                let now = Date()
                let issued = try await self.store.open().roll(name: self.name, grace: grace, now: now)
                let until = KeysCommand.formatDate(now.addingTimeInterval(Double(grace.components.seconds)))
                print("Rolled \(self.name): new key \(issued.record.masked); the old key stays valid until \(until).")
                KeysCommand.printNewKey(issued)
            }
        }
    }
}
