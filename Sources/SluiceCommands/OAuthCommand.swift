import ArgumentParser
import AsyncHTTPClient
import Auth
import Foundation
import NIOCore
import NIOHTTP1
import NIOSSL
import SluiceCore

/// `sluice oauth …`: the built-in authorization server's clients, and a client-credentials
/// request for scripts (`curl -H "Authorization: Bearer $(sluice oauth token …)"`).
struct OAuthCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "oauth",
        abstract: "Manage the built-in OAuth 2.0 authorization server's clients, and get a token.",
        subcommands: [Clients.self, Token.self]
    )

    /// Where the clients file is: `--clients-file`, else `auth.oauth.builtin_server.clients_file`
    /// from `SLUICE_AUTH_OAUTH_BUILTIN_SERVER_CLIENTS_FILE` or the `--config` file.
    struct FileOptions: ParsableArguments {
        @Option(help: "The clients file (auth.oauth.builtin_server.clients_file).")
        var clientsFile: String?

        @Option(help: "A YAML configuration file to read auth.oauth.builtin_server.clients_file from.")
        var config: String?

        static let settingPath = "auth.oauth.builtin_server.clients_file"
        static let environmentName = "SLUICE_AUTH_OAUTH_BUILTIN_SERVER_CLIENTS_FILE"

        func path() throws -> String {
            if let clientsFile = self.clientsFile { return clientsFile }
            if let fromEnvironment = ProcessInfo.processInfo.environment[Self.environmentName] {
                return fromEnvironment
            }
            if let config = self.config {
                guard let text = try? String(contentsOfFile: config, encoding: .utf8) else {
                    printError("sluice: cannot read the configuration file \(config)")
                    throw ExitCode(2)
                }
                let values: [(String, SettingValue)]
                do {
                    values = try SettingsLoader.flatten(yaml: text, file: config)
                } catch let error as SettingsError {
                    printError("sluice: \(error.description)")
                    throw ExitCode(2)
                }
                if let value = values.last(where: { $0.0 == Self.settingPath })?.1 { return value.text }
                printError("sluice: \(config) does not set \(Self.settingPath)")
                throw ExitCode(2)
            }
            printError("sluice: say where the clients file is: --clients-file PATH or --config FILE")
            throw ExitCode(2)
        }

        func store() throws -> OAuthClientStore {
            let path = try self.path()
            do {
                return try OAuthClientStore(path: path)
            } catch {
                printError("sluice: \(error)")
                throw ExitCode(2)
            }
        }
    }
}

extension OAuthCommand {
    struct Clients: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "clients",
            abstract: "Add, list, disable and remove the clients allowed to get tokens.",
            subcommands: [Add.self, List.self, Disable.self, Remove.self]
        )
    }

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "add",
            abstract: "Add a client and print its secret, once.",
            discussion: "Only the secret's SHA-256 is kept: the secret cannot be shown again. A running gateway "
                + "sees the new client at its next token request."
        )

        @Argument(help: "The client's name: its client_id, and client:NAME as a principal.")
        var name: String

        @Option(name: .customLong("scope"), help: "A scope the client may ask for (repeatable; default events:write).")
        var scopes: [String] = []

        @OptionGroup var file: FileOptions

        @Flag(help: "Print JSON instead of text.")
        var json = false

        func run() async throws {
            let store = try self.file.store()
            let added: (client: OAuthClient, secret: String)
            do {
                added = try store.add(self.name, scopes: self.scopes.isEmpty ? ["events:write"] : self.scopes)
            } catch {
                printError("sluice: \(error)")
                throw ExitCode(1)
            }
            if self.json {
                let document: [String: Any] = [
                    "client_id": added.client.clientID, "client_secret": added.secret, "scopes": added.client.scopes,
                ]
                let data = try JSONSerialization.data(
                    withJSONObject: document,
                    options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
                )
                print(String(decoding: data, as: UTF8.self))
            } else {
                print("client_id:     \(added.client.clientID)")
                print("client_secret: \(added.secret)")
                print("scopes:        \(added.client.scopes.joined(separator: " "))")
            }
            printError(
                "sluice: the client secret is shown only now and will not be shown again; keep it in a file "
                    + "only its owner can read (chmod 600)"
            )
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "ls",
            abstract: "List the clients: name, scopes, created, disabled. Never a secret."
        )

        @OptionGroup var file: FileOptions

        @Flag(help: "Print JSON instead of text.")
        var json = false

        func run() async throws {
            let clients: [OAuthClient]
            do {
                clients = try self.file.store().clients()
            } catch let exit as ExitCode {
                throw exit
            } catch {
                printError("sluice: \(error)")
                throw ExitCode(2)
            }
            let formatter = ISO8601DateFormatter()
            if self.json {
                let rows: [[String: Any]] = clients.map { client in
                    var row: [String: Any] = [
                        "client_id": client.clientID, "scopes": client.scopes,
                        "created_at": formatter.string(from: client.createdAt),
                    ]
                    if let disabled = client.disabledAt { row["disabled_at"] = formatter.string(from: disabled) }
                    return row
                }
                let data = try JSONSerialization.data(
                    withJSONObject: rows,
                    options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
                )
                print(String(decoding: data, as: UTF8.self))
                return
            }
            var rows = [["CLIENT_ID", "SCOPES", "CREATED", "STATUS"]]
            for client in clients {
                rows.append([
                    client.clientID, client.scopes.joined(separator: " "), formatter.string(from: client.createdAt),
                    client.disabledAt.map { "disabled " + formatter.string(from: $0) } ?? "active",
                ])
            }
            print(table(rows))
        }
    }

    struct Disable: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "disable",
            abstract: "Refuse a client new tokens, keeping it in the list (its tokens run out by their exp)."
        )

        @Argument(help: "The client's name.")
        var name: String

        @OptionGroup var file: FileOptions

        func run() async throws {
            let store = try self.file.store()
            do {
                try store.disable(self.name)
            } catch {
                printError("sluice: \(error)")
                throw ExitCode(1)
            }
            print("disabled \(self.name)")
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "remove",
            abstract: "Remove a client (tokens it already has stay valid until they expire)."
        )

        @Argument(help: "The client's name.")
        var name: String

        @OptionGroup var file: FileOptions

        func run() async throws {
            let store = try self.file.store()
            do {
                try store.remove(self.name)
            } catch {
                printError("sluice: \(error)")
                throw ExitCode(1)
            }
            print("removed \(self.name)")
        }
    }

    struct Token: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "token",
            abstract: "Get an access token with the client-credentials grant and print it.",
            discussion: """
                Sends a real client-credentials request (client_secret_basic) over HTTP(S), so it works against \
                the built-in server or any OAuth 2.0 authorization server. Prints only the access token, e.g.
                  curl -H "Authorization: Bearer $(sluice oauth token --url https://ingest.example.com \
                --client shop --secret-file shop.secret)" ...
                """
        )

        @Option(help: "The token endpoint, or the issuer URL (then /oauth/token is used).")
        var url: String

        @Option(help: "The client id.")
        var client: String

        @Option(help: "A file holding the client secret (surrounding white space is ignored).")
        var secretFile: String

        @Option(name: .customLong("scope"), help: "A scope to ask for (repeatable; default: all of the client's).")
        var scopes: [String] = []

        @Option(help: "PEM CA certificates to trust for an https URL (default: the system's).")
        var caFile: String?

        @Option(help: "Give up after this many seconds.")
        var timeout: Int = 30

        func run() async throws {
            guard let endpoint = Self.endpoint(self.url) else {
                printError("sluice: --url '\(self.url)' is not an http(s) URL")
                throw ExitCode(2)
            }
            guard let secretText = try? String(contentsOfFile: self.secretFile, encoding: .utf8) else {
                printError("sluice: cannot read the secret file \(self.secretFile)")
                throw ExitCode(2)
            }
            let secret = secretText.trimmingCharacters(in: .whitespacesAndNewlines)
            guard !secret.isEmpty else {
                printError("sluice: the secret file \(self.secretFile) is empty")
                throw ExitCode(2)
            }
            let grant = ClientCredentialsGrant(
                endpoint: endpoint,
                clientID: self.client,
                secret: secret,
                scopes: self.scopes,
                caFile: self.caFile
            )
            do {
                print(try await grant.fetch(timeout: .seconds(self.timeout)).accessToken)
            } catch {
                printError("sluice: \(error)")
                if case .unreadableCA = error { throw ExitCode(2) }
                throw ExitCode(1)
            }
        }

        /// `https://host` → `https://host/oauth/token`; a URL with a path is used as it is.
        static func endpoint(_ url: String) -> String? {
            guard var components = URLComponents(string: url), let scheme = components.scheme?.lowercased(),
                scheme == "http" || scheme == "https", components.host?.isEmpty == false
            else { return nil }
            if components.path.isEmpty || components.path == "/" { components.path = "/oauth/token" }
            return components.string
        }
    }
}
