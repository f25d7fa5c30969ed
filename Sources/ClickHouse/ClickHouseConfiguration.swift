/// Where ClickHouse is and how to talk to it over its HTTP interface.
///
/// The password is sent only in the `X-ClickHouse-Key` header: it is never put in a URL, and
/// neither ``description`` nor a reflection of this value shows it.
public struct ClickHouseConfiguration: Sendable {
    /// The server's HTTP endpoint: `http://127.0.0.1:8123` or `https://host:8443`. A path after
    /// the port (a proxy in front of ClickHouse) is kept; a trailing slash is ignored.
    public var url: String
    /// The ClickHouse user, sent as `X-ClickHouse-User`; `nil` is the server's `default` user.
    public var user: String?
    /// The user's password, sent as `X-ClickHouse-Key`. Never logged, never in an error.
    public var password: String?
    /// Where ``password`` was read from (`clickhouse.password_file`); nil when it was given
    /// inline or not at all.
    public var passwordFile: String?
    /// The default database for unqualified table names (the `database` URL parameter).
    public var database: String?
    /// How long one request may take, from connecting to the last byte of the response.
    public var timeout: Duration
    /// A PEM bundle of the CAs to trust for `https` instead of the system's. Certificates and
    /// host names are always verified.
    public var caFile: String?
    /// A PEM client certificate (chain) for servers that authenticate clients by TLS.
    public var clientCertificateFile: String?
    /// The PEM private key of ``clientCertificateFile``.
    public var clientKeyFile: String?
    /// Request bodies larger than this many bytes are sent gzip-compressed
    /// (`Content-Encoding: gzip`, which every ClickHouse since at least 18.16 accepts); `nil`
    /// sends them as they are. Compression saves bandwidth on real networks and costs CPU on
    /// both sides, so it is off by default.
    public var compressRequestsAbove: Int?
    /// The largest response body ``ClickHouseClient/query(_:settings:)`` accepts.
    public var maxResponseBytes: Int

    /// A configuration; everything but the URL has a default.
    public init(
        url: String,
        user: String? = nil,
        password: String? = nil,
        database: String? = nil,
        timeout: Duration = .seconds(30),
        caFile: String? = nil,
        clientCertificateFile: String? = nil,
        clientKeyFile: String? = nil,
        compressRequestsAbove: Int? = nil,
        maxResponseBytes: Int = 64 << 20
    ) {
        self.url = url
        self.user = user
        self.password = password
        self.database = database
        self.timeout = timeout
        self.caFile = caFile
        self.clientCertificateFile = clientCertificateFile
        self.clientKeyFile = clientKeyFile
        self.compressRequestsAbove = compressRequestsAbove
        self.maxResponseBytes = maxResponseBytes
    }
}

extension ClickHouseConfiguration: CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    /// The configuration with the password replaced by `<redacted>`.
    public var description: String {
        var fields = ["url: \(self.url)"]
        if let user = self.user { fields.append("user: \(user)") }
        if self.password != nil { fields.append("password: <redacted>") }
        if let database = self.database { fields.append("database: \(database)") }
        fields.append("timeout: \(self.timeout)")
        if let caFile = self.caFile { fields.append("caFile: \(caFile)") }
        if let file = self.clientCertificateFile { fields.append("clientCertificateFile: \(file)") }
        if let file = self.clientKeyFile { fields.append("clientKeyFile: \(file)") }
        if let limit = self.compressRequestsAbove { fields.append("compressRequestsAbove: \(limit)") }
        fields.append("maxResponseBytes: \(self.maxResponseBytes)")
        return "ClickHouseConfiguration(\(fields.joined(separator: ", ")))"
    }

    public var debugDescription: String { self.description }

    /// Keeps `dump()` and debuggers from showing the password.
    public var customMirror: Mirror {
        Mirror(
            self,
            children: [
                "url": self.url, "user": self.user as Any, "password": self.password.map { _ in "<redacted>" } as Any,
                "database": self.database as Any, "timeout": self.timeout, "caFile": self.caFile as Any,
                "clientCertificateFile": self.clientCertificateFile as Any,
                "clientKeyFile": self.clientKeyFile as Any,
                "compressRequestsAbove": self.compressRequestsAbove as Any,
                "maxResponseBytes": self.maxResponseBytes,
            ],
            displayStyle: .struct
        )
    }
}
