import ArgumentParser
import SluiceCore

/// Options shared by the commands that run a role.
struct ConfigOptions: ParsableArguments {
    @Option(help: "A YAML configuration file (see docs/configuration.md).")
    var config: String?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String?

    func load() throws -> Settings {
        do {
            var settings = try SettingsLoader.load(file: self.config)
            try Self.apply(self.logLevel, to: "logging.level", from: "--log-level", in: &settings)
            return settings
        } catch let error as SettingsError {
            printError("sluice: \(error.description)")
            throw ExitCode(2)
        }
    }

    /// A flag's value set as the key `path` sets it (same checks, same errors), recorded with
    /// the flag as its origin; nil (the flag not given) leaves the settings as they are.
    static func apply(_ text: String?, to path: String, from flag: String, in settings: inout Settings) throws {
        guard let text else { return }
        try SettingsLoader.key(path).apply(&settings, SettingValue(text: text, list: nil, origin: flag))
    }
}

/// `--wal-dir`, over `wal.directory`: the roles that open the WAL.
struct WALDirectoryOption: ParsableArguments {
    @Option(help: ArgumentHelp("The WAL directory (default \(SettingsLoader.defaultText("wal.directory")))."))
    var walDir: String?

    func apply(to settings: inout Settings) throws {
        try ConfigOptions.apply(self.walDir, to: "wal.directory", from: "--wal-dir", in: &settings)
    }
}

/// `--kafka-bootstrap`, over `kafka.bootstrap_servers`: the roles and tools that talk to Kafka.
struct KafkaBootstrapOption: ParsableArguments {
    @Option(help: "Kafka bootstrap servers, host:port,... (default: kafka.bootstrap_servers).")
    var kafkaBootstrap: String?

    func apply(to settings: inout Settings) throws {
        try ConfigOptions.apply(
            self.kafkaBootstrap,
            to: "kafka.bootstrap_servers",
            from: "--kafka-bootstrap",
            in: &settings
        )
    }
}

extension SettingsLoader {
    /// A key's default as `sluice config keys` shows it, for the help of the flag that sets it.
    static func defaultText(_ path: String) -> String { self.key(path).defaultText(in: Settings()) }
}
