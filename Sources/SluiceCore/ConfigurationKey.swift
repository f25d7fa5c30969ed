/// One configuration key, declared once beside the configuration struct it sets: its path,
/// its type, the values it accepts, its help, and how a value reaches the struct.
///
/// A key holds no default of its own: ``read`` shows the value a configuration holds, so the
/// default that `sluice config keys`, its help and docs/configuration.md show is read from the
/// struct's default instance, and a changed default cannot leave a stale copy behind. A module
/// lists its keys (`GatewayConfiguration.keys`); the executable lifts them into its own settings
/// (``lifted(_:)``) and layers the file, the environment and the flags over them.
package struct ConfigurationKey<Root>: Sendable {
    package typealias Kind = ConfigurationKind

    /// The YAML path, `gateway.max_body_bytes`; a trailing `.*` takes every key below it
    /// (`kafka.properties.*`), the part the `*` stands for arriving as the value's `subkey`.
    package let path: String
    package let kind: Kind
    package let help: String
    /// The value `root` holds, written as this key takes it (`150ms`, `5242880`); nil when it
    /// holds none.
    package let read: @Sendable (Root) -> String?
    /// What to show as the default when the default instance's value is not one: computed at
    /// start (the host name) or taken from another key (the issuer). nil: ``read`` it.
    package let computedDefault: String?
    private let assign: @Sendable (inout Root, ConfigurationValue, ConfigurationKey<Root>) throws -> Void

    /// A key whose value is not a plain assignment (an address split into host and port, an
    /// enum, a unit conversion): `apply` parses and sets it, throwing ``ConfigurationValue/fail(_:_:)``
    /// errors; `read` writes it back.
    package init(
        path: String,
        kind: Kind,
        help: String,
        computedDefault: String? = nil,
        read: @escaping @Sendable (Root) -> String? = { _ in nil },
        apply: @escaping @Sendable (inout Root, ConfigurationValue, ConfigurationKey<Root>) throws -> Void
    ) {
        self.path = path
        self.kind = kind
        self.help = help
        self.computedDefault = computedDefault
        self.read = read
        self.assign = apply
    }

    /// Parses `value` and sets it in `root`; throws an error naming the key, the value, what
    /// was expected and where the value came from.
    package func set(_ root: inout Root, _ value: ConfigurationValue) throws {
        try self.assign(&root, value, self)
    }

    /// The same key on a struct that holds `Root` at `keyPath`: how the executable composes the
    /// modules' keys into one table.
    package func lifted<Outer>(_ keyPath: any WritableKeyPath<Outer, Root> & Sendable) -> ConfigurationKey<Outer> {
        let key = self
        return ConfigurationKey<Outer>(
            path: self.path,
            kind: self.kind,
            help: self.help,
            computedDefault: self.computedDefault,
            read: { key.read($0[keyPath: keyPath]) },
            apply: { outer, value, _ in try key.set(&outer[keyPath: keyPath], value) }
        )
    }

    /// What the default is, as `sluice config keys` shows it: the value of `defaults`, with
    /// byte counts also in KiB, MiB or GiB; empty when there is none.
    package func defaultText(in defaults: Root) -> String {
        if let computed = self.computedDefault { return computed }
        guard let text = self.read(defaults) else { return "" }
        guard self.kind == .integer, self.path.hasSuffix("bytes"), let bytes = Int64(text) else { return text }
        for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] where bytes >= 1 << shift {
            if bytes % (1 << shift) == 0 { return "\(text) (\(bytes >> shift) \(unit))" }
        }
        return text
    }

    /// Keys ending in `.*` take a whole subtree from the file and have no environment variable
    /// of their own.
    package var isWildcard: Bool { self.path.hasSuffix(".*") }

    /// `gateway.max_body_bytes` → `SLUICE_GATEWAY_MAX_BODY_BYTES`.
    package var environmentName: String {
        "SLUICE_" + String(self.path.uppercased().map { $0 == "." ? "_" : $0 })
    }
}

extension ConfigurationKey {
    /// A string set as it is.
    package static func string(
        _ path: String,
        _ keyPath: any WritableKeyPath<Root, String> & Sendable,
        help: String
    ) -> Self {
        Self(
            path: path,
            kind: .string,
            help: help,
            read: { $0[keyPath: keyPath] },
            apply: { root, value, _ in
                root[keyPath: keyPath] = value.text
            }
        )
    }

    /// A string that may be absent; with `emptyIsNone`, an empty value unsets it (so the
    /// environment can switch off what the file set).
    package static func string(
        _ path: String,
        _ keyPath: any WritableKeyPath<Root, String?> & Sendable,
        emptyIsNone: Bool = false,
        computedDefault: String? = nil,
        help: String
    ) -> Self {
        Self(
            path: path,
            kind: .string,
            help: help,
            computedDefault: computedDefault,
            read: { $0[keyPath: keyPath] },
            apply: { root, value, _ in
                root[keyPath: keyPath] = emptyIsNone && value.text.isEmpty ? nil : value.text
            }
        )
    }

    /// A whole number within `range` (`1_048_576` may be written with underscores).
    package static func integer<Value: FixedWidthInteger & SendableMetatype>(
        _ path: String,
        _ keyPath: any WritableKeyPath<Root, Value> & Sendable,
        range: ClosedRange<Int64> = 0...Int64.max,
        help: String
    ) -> Self {
        Self(
            path: path,
            kind: .integer,
            help: help,
            read: { "\($0[keyPath: keyPath])" },
            apply: { root, value, key in
                root[keyPath: keyPath] = Value(try value.integer(key.path, range: range))
            }
        )
    }

    /// A whole number within `range`, absent unless set.
    package static func integer(
        _ path: String,
        _ keyPath: any WritableKeyPath<Root, Int?> & Sendable,
        range: ClosedRange<Int64>,
        computedDefault: String? = nil,
        help: String
    ) -> Self {
        Self(
            path: path,
            kind: .integer,
            help: help,
            computedDefault: computedDefault,
            read: { $0[keyPath: keyPath].map { "\($0)" } },
            apply: { root, value, key in
                root[keyPath: keyPath] = Int(try value.integer(key.path, range: range))
            }
        )
    }

    /// A number within `range`.
    package static func number(
        _ path: String,
        _ keyPath: any WritableKeyPath<Root, Double> & Sendable,
        range: ClosedRange<Double>,
        help: String
    ) -> Self {
        Self(
            path: path,
            kind: .number,
            help: help,
            read: { "\($0[keyPath: keyPath])" },
            apply: { root, value, key in
                root[keyPath: keyPath] = try value.number(key.path, range: range)
            }
        )
    }

    /// `true`/`false` (also `yes`/`no`, `on`/`off`, `1`/`0`).
    package static func boolean(
        _ path: String,
        _ keyPath: any WritableKeyPath<Root, Bool> & Sendable,
        help: String
    ) -> Self {
        Self(
            path: path,
            kind: .boolean,
            help: help,
            read: { "\($0[keyPath: keyPath])" },
            apply: { root, value, key in
                root[keyPath: keyPath] = try value.boolean(key.path)
            }
        )
    }

    /// A YAML list, or comma-separated items in the environment.
    package static func list(
        _ path: String,
        _ keyPath: any WritableKeyPath<Root, [String]> & Sendable,
        help: String
    ) -> Self {
        Self(
            path: path,
            kind: .list,
            help: help,
            read: { root in root[keyPath: keyPath].isEmpty ? nil : root[keyPath: keyPath].joined(separator: ",") },
            apply: { root, value, _ in root[keyPath: keyPath] = value.items }
        )
    }

    /// A duration (`150ms`, `2s`, …), no shorter than `atLeast` and no longer than `atMost`.
    package static func duration(
        _ path: String,
        _ keyPath: any WritableKeyPath<Root, Duration> & Sendable,
        atLeast: Duration? = nil,
        atMost: Duration? = nil,
        help: String
    ) -> Self {
        Self(
            path: path,
            kind: .duration,
            help: help,
            read: { ConfigurationValue.text(of: $0[keyPath: keyPath]) },
            apply: { root, value, key in
                root[keyPath: keyPath] = try value.duration(key.path, atLeast: atLeast, atMost: atMost)
            }
        )
    }

    /// A duration that may be absent (nil turns the feature off); setting it always sets one.
    package static func duration(
        _ path: String,
        _ keyPath: any WritableKeyPath<Root, Duration?> & Sendable,
        help: String
    ) -> Self {
        Self(
            path: path,
            kind: .duration,
            help: help,
            read: { $0[keyPath: keyPath].map(ConfigurationValue.text(of:)) },
            apply: { root, value, key in
                root[keyPath: keyPath] = try value.duration(key.path)
            }
        )
    }

    /// One of a fixed set of names (an enum's raw values); `expected` lists them for the
    /// error, and `lowercased` accepts any letter case.
    package static func choice<Value: RawRepresentable<String> & SendableMetatype>(
        _ path: String,
        _ keyPath: any WritableKeyPath<Root, Value> & Sendable,
        expected: String,
        lowercased: Bool = false,
        help: String
    ) -> Self {
        Self(
            path: path,
            kind: .string,
            help: help,
            read: { $0[keyPath: keyPath].rawValue },
            apply: { root, value, key in
                guard let choice = Value(rawValue: lowercased ? value.text.lowercased() : value.text) else {
                    throw value.fail(key.path, expected)
                }
                root[keyPath: keyPath] = choice
            }
        )
    }
}

/// What a configuration value is written as (docs/configuration.md, "Values").
package enum ConfigurationKind: String, Sendable {
    case string, integer, number, boolean, list, duration
}

/// A configuration value that cannot be used: says which key, which value, what was expected
/// and where it came from, in one line an operator can act on.
package struct ConfigurationError: Error, CustomStringConvertible {
    package var description: String
    package init(description: String) { self.description = description }
}

/// A raw value as read from the file, the environment or a flag, and where it was read.
package struct ConfigurationValue: Sendable {
    package var text: String
    /// The items, when the file wrote a YAML list.
    package var list: [String]?
    /// `sluice.yaml:14`, `environment SLUICE_…`, `--listen`: where to look when it is wrong.
    package var origin: String
    /// For keys ending in `.*`: the part of the path the `*` stands for.
    package var subkey: String

    package init(text: String, list: [String]?, origin: String, subkey: String = "") {
        self.text = text
        self.list = list
        self.origin = origin
        self.subkey = subkey
    }

    package func fail(_ path: String, _ expected: String) -> ConfigurationError {
        ConfigurationError(description: "\(self.origin): \(path) = '\(self.text)' is invalid: expected \(expected)")
    }

    package func integer(_ path: String, range: ClosedRange<Int64> = 0...Int64.max) throws -> Int64 {
        guard let value = Int64(String(self.text.filter { $0 != "_" })), range.contains(value) else {
            throw self.fail(path, "a whole number in \(range.lowerBound)...\(range.upperBound)")
        }
        return value
    }

    package func number(_ path: String, range: ClosedRange<Double>) throws -> Double {
        guard let value = Double(self.text), range.contains(value) else {
            throw self.fail(path, "a number in \(range.lowerBound)...\(range.upperBound)")
        }
        return value
    }

    /// `150ms`, `2s`, `5m`, `1h`, `7d`, or a bare number of seconds.
    package func duration(_ path: String, atLeast: Duration? = nil, atMost: Duration? = nil) throws -> Duration {
        var text = Substring(self.text)
        while text.first == " " || text.first == "\t" { text.removeFirst() }
        while text.last == " " || text.last == "\t" { text.removeLast() }
        var parsed: Duration?
        let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600), ("d", 86400)]
        for (suffix, scale) in units where parsed == nil && text.hasSuffix(suffix) {
            if let value = Double(text.dropLast(suffix.count)), value >= 0 {
                parsed = .milliseconds(Int64(value * scale * 1000))
            }
        }
        if parsed == nil, let seconds = Double(text), seconds >= 0 { parsed = .milliseconds(Int64(seconds * 1000)) }
        guard let parsed else { throw self.fail(path, "a duration such as 150ms, 2s, 5m, 1h or 7d") }
        if let atLeast, parsed < atLeast { throw self.fail(path, "a duration of at least \(Self.text(of: atLeast))") }
        if let atMost, parsed > atMost { throw self.fail(path, "a duration of at most \(Self.text(of: atMost))") }
        return parsed
    }

    package func boolean(_ path: String) throws -> Bool {
        switch self.text.lowercased() {
        case "true", "yes", "on", "1": return true
        case "false", "no", "off", "0": return false
        default: throw self.fail(path, "true or false")
        }
    }

    /// The items of a list: the YAML list's, or the text split at commas.
    package var items: [String] {
        self.list
            ?? self.text.split(separator: ",").map { item in
                var item = item
                while item.first == " " || item.first == "\t" { item.removeFirst() }
                while item.last == " " || item.last == "\t" { item.removeLast() }
                return String(item)
            }.filter { !$0.isEmpty }
    }

    /// `HOST:PORT` (`[::1]:8080` for IPv6; an empty host is every interface, `0.0.0.0`).
    package func listenAddress() throws -> (host: String, port: Int) {
        let text = self.text
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
            (0...65535).contains(port)
        else {
            throw ConfigurationError(
                description: "\(self.origin): listen address '\(text)' must be HOST:PORT, e.g. 127.0.0.1:8080"
            )
        }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return (host.isEmpty ? "0.0.0.0" : host, port)
    }

    /// `host:port` as ``listenAddress()`` reads it back: IPv6 hosts in brackets.
    package static func text(host: String, port: Int) -> String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    /// A duration as a key takes it, in the largest unit that writes it exactly: `150ms`,
    /// `75s`, `10m`, `1h`, `30d` (a minute is still `60s`, as operators usually write it).
    package static func text(of duration: Duration) -> String {
        let milliseconds = duration.milliseconds
        guard milliseconds % 1000 == 0 else { return "\(milliseconds)ms" }
        let seconds = milliseconds / 1000
        if seconds > 0 && seconds % 86400 == 0 { return "\(seconds / 86400)d" }
        if seconds > 0 && seconds % 3600 == 0 { return "\(seconds / 3600)h" }
        if seconds > 60 && seconds % 60 == 0 { return "\(seconds / 60)m" }
        return "\(seconds)s"
    }
}
