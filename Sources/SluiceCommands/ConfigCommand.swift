import ArgumentParser
import Foundation
import Loader
import SluiceCore

/// `sluice config`: check a configuration before deploying it, and list every key.
struct ConfigCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config",
        abstract: "Check a configuration, or list every configuration key.",
        subcommands: [Check.self, Keys.self]
    )

    struct Check: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Validate the configuration (file + environment) for every role; print what is set and where.",
            discussion: "Exit status 0: valid; 2: invalid, with the key, the value and what was expected."
        )

        @OptionGroup var options: ConfigOptions

        func run() async throws {
            var settings = try self.options.load()
            do {
                try settings.prepareGateway()
                try settings.validateAuth()
                if settings.kafkaBootstrap == nil { settings.kafkaBootstrap = "(unset)" }
                _ = try settings.loaderConfiguration()
            } catch {
                printError("sluice: \(describe(error))")
                throw ExitCode(2)
            }
            for entry in settings.applied {
                print("\(entry.path) = \(entry.value)\t(\(entry.origin))")
            }
            let routes = (try? settings.loaderRoutes()) ?? []
            for route in routes {
                print(
                    "route \(route.topic) → \(route.table) (\(route.columns.count) columns, dead letters to \(route.deadLetterTopic))"
                )
            }
            print("ok: the configuration is valid for sluice gateway, loader, all and dev")
        }
    }

    struct Keys: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List every configuration key with its environment variable, default and meaning."
        )

        @Flag(help: "As the Markdown table of docs/configuration.md.")
        var markdown = false

        func run() async throws {
            if self.markdown {
                print("| key | type | environment | default | meaning |")
                print("|---|---|---|---|---|")
            }
            let defaults = Settings()
            for key in SettingsLoader.keys {
                let environment =
                    key.path == "kafka.properties.*"
                    ? SettingsLoader.kafkaPropertyPrefix + "<NAME>"
                    : key.isWildcard ? "(file only)" : key.environmentName
                let value = key.defaultText(in: defaults)
                if self.markdown {
                    print("| `\(key.path)` | \(key.kind.rawValue) | `\(environment)` | \(value) | \(key.help) |")
                } else {
                    print("\(key.path)\t\(key.kind.rawValue)\t\(environment)\t\(value)\t\(key.help)")
                }
            }
        }
    }
}
