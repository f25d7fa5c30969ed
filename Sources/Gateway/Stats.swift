import Auth
import ClickHouse
import EventModel
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import SluiceCore
import Synchronization

/// The stats API (`GET /v1/stats/objects`, `/pages`, `/timeseries`) and the analytics page
/// (`GET /analytics`): the clickstream figures of docs/analytics.md, read from the loader's
/// replay-safe rollups in ClickHouse.
///
/// Every stats request needs a credential with the `stats:read` scope: a secret API key made
/// with `--scope stats:read`, or an access token carrying the scope. An ingest key (no scope
/// given: `events:write` only) is refused with 403, a publishable key always (browser pages
/// show their keys to anyone). The page itself is static and holds no data; it asks for a key
/// and calls the API with it.
public struct StatsService: Sendable {
    /// What the rollups are named after: the events table (`analytics.table`).
    public var table: String
    /// Runs a query on ClickHouse and answers its `JSONEachRow` text.
    public var query: @Sendable (String) async throws -> String
    /// Checks a presented credential for `stats:read`: the principal, or the failure to answer.
    public var authorize: @Sendable (PresentedCredential) async -> Result<Principal, AuthFailure>
    /// The longest range one request may ask for. Default: 31 days (7 for the time series).
    public var maxRange: Duration = .seconds(31 * 86_400)

    public init(
        table: String,
        query: @escaping @Sendable (String) async throws -> String,
        authorize: @escaping @Sendable (PresentedCredential) async -> Result<Principal, AuthFailure>
    ) {
        self.table = table
        self.query = query
        self.authorize = authorize
    }
}

/// The paths of the stats API and the page.
enum StatsRoutes {
    static let objects = "/v1/stats/objects"
    static let pages = "/v1/stats/pages"
    static let timeseries = "/v1/stats/timeseries"
    static let page = "/analytics"
    static let all: [String: [HTTPRequest.Method]] = [
        objects: [.get, .head], pages: [.get, .head], timeseries: [.get, .head], page: [.get, .head],
        AnalyticsPage.scriptPath: [.get, .head],
    ]
}

/// Adds the stats routes; without `service` they answer 404 saying how to turn them on.
func addStatsRoutes(to router: Router<IngestRequestContext>, service: StatsService?, logger: Logger) {
    guard let service else {
        for path in StatsRoutes.all.keys {
            router.get(RouterPath(path)) { _, _ -> Response in
                throw Problem(.notFound, "analytics is off on this gateway; set analytics.enabled: true")
            }
        }
        return
    }
    let handler = StatsHandler(service: service, clickstream: Clickstream(table: service.table), logger: logger)
    router.get(RouterPath(StatsRoutes.page)) { _, _ in AnalyticsPage.response() }
    router.get(RouterPath(AnalyticsPage.scriptPath)) { _, _ in AnalyticsPage.script() }
    router.get(RouterPath(StatsRoutes.objects)) { request, context in
        try await handler.answer(request, context: context, handler.objects)
    }
    router.get(RouterPath(StatsRoutes.pages)) { request, context in
        try await handler.answer(request, context: context, handler.pages)
    }
    router.get(RouterPath(StatsRoutes.timeseries)) { request, context in
        try await handler.answer(request, context: context, handler.timeseries)
    }
}

/// The query parameters of one stats request, checked: unknown names and bad values are a 400
/// naming the parameter and what it takes.
struct StatsParameters {
    var values: [String: String]

    init(_ query: [(String, String)], allowed: Set<String>) throws(Problem) {
        var values: [String: String] = [:]
        for (name, value) in query {
            guard allowed.contains(name) else {
                throw Problem(
                    .malformed,
                    "unknown parameter '\(name)'; this endpoint takes \(allowed.sorted().joined(separator: ", "))"
                )
            }
            guard values[name] == nil else { throw Problem(.malformed, "parameter '\(name)' is given twice") }
            values[name] = value
        }
        self.values = values
    }

    /// A time: RFC 3339 or epoch milliseconds; in unix seconds.
    func time(_ name: String) throws(Problem) -> Int64? {
        guard let text = self.values[name] else { return nil }
        if let millis = Int64(text), millis >= 0 { return millis / 1000 }
        guard let millis = Timestamp.parse(text) else {
            throw Problem(
                .malformed,
                "parameter '\(name)' must be RFC 3339 (2026-11-30T10:00:00Z) or epoch milliseconds"
            )
        }
        return millis / 1000
    }

    func integer(_ name: String, default value: Int, range: ClosedRange<Int>) throws(Problem) -> Int {
        guard let text = self.values[name] else { return value }
        guard let number = Int(text), range.contains(number) else {
            throw Problem(
                .malformed,
                "parameter '\(name)' must be a whole number from \(range.lowerBound) to \(range.upperBound)"
            )
        }
        return number
    }

    /// A name (page, object, action): 1 to 2048 bytes.
    func name(_ name: String) throws(Problem) -> String? {
        guard let text = self.values[name] else { return nil }
        guard !text.isEmpty, text.utf8.count <= 2048 else {
            throw Problem(.malformed, "parameter '\(name)' must be 1 to 2048 bytes")
        }
        return text
    }

    /// `bots=include` counts traffic the classifier flagged as bots; default: left out.
    func bots() throws(Problem) -> Bool {
        switch self.values["bots"] {
        case nil, "exclude": return false
        case "include": return true
        default: throw Problem(.malformed, "parameter 'bots' must be include or exclude")
        }
    }

    /// `[from, to)` in unix seconds: default the last 24 hours; at most `maxSeconds` long.
    func range(maxSeconds: Int64, now: Int64) throws(Problem) -> (Int64, Int64) {
        let to = try self.time("to") ?? now
        let from = try self.time("from") ?? (to - 86_400)
        guard from < to else { throw Problem(.malformed, "'from' must be before 'to'") }
        guard to - from <= maxSeconds else {
            throw Problem(.malformed, "the range from 'from' to 'to' may be at most \(maxSeconds / 86_400) days")
        }
        return (from, to)
    }
}

struct StatsHandler: Sendable {
    let service: StatsService
    let clickstream: Clickstream
    let logger: Logger

    typealias Endpoint = @Sendable (Request) async throws -> JSONValue

    /// Authorizes, runs the endpoint, answers JSON (no caching: the figures move every minute).
    func answer(_ request: Request, context: IngestRequestContext, _ endpoint: Endpoint) async throws -> Response {
        let extracted = CredentialExtraction.extract(
            authorization: request.headers[values: .authorization],
            writeKey: request.headers[values: HTTPField.Name("X-Write-Key")!],
            query: [],
            browserEndpoint: false
        )
        let credential: PresentedCredential
        switch extracted {
        case .success(PresentedCredential.none):
            throw AuthProblem(
                failure: AuthFailure(
                    .invalidToken,
                    reason: "missing",
                    detail:
                        "the stats API needs a credential with the stats:read scope: Authorization: Bearer <key or token>"
                )
            ).problem
        case .success(let found): credential = found
        case .failure(let failure): throw AuthProblem(failure: failure).problem
        }
        let principal: Principal
        switch await self.service.authorize(credential) {
        case .success(let found): principal = found
        case .failure(let failure): throw AuthProblem(failure: failure).problem
        }
        context.authRecord.state.withLock {
            $0.principal = principal
            $0.method = principal.kind.method
        }
        var response = Ingest.json(.ok, try await endpoint(request))
        response.headers[.cacheControl] = "no-store"
        return response
    }

    private func rows(_ sql: String) async throws -> [JSONValue] {
        let text: String
        do {
            text = try await self.service.query(sql + "\nFORMAT JSONEachRow")
        } catch {
            self.logger.warning("stats.query_failed", metadata: ["error": "\(error)"])
            throw Problem(.unavailable, "the analytics store (ClickHouse) did not answer; try again shortly")
        }
        return text.split(separator: "\n").compactMap { try? JSONParser.parse(Array($0.utf8)) }
    }

    private var now: Int64 { Timestamp.nowMillis() / 1000 }

    private func period(_ from: Int64, _ to: Int64) -> [(String, JSONValue)] {
        [
            ("from", .string(Timestamp.format(millis: from * 1000))),
            ("to", .string(Timestamp.format(millis: to * 1000))),
        ]
    }

    func objects(_ request: Request) async throws -> JSONValue {
        let parameters = try StatsParameters(
            Self.query(request),
            allowed: ["from", "to", "min_views", "limit", "page", "order", "bots"]
        )
        let (from, to) = try parameters.range(maxSeconds: self.service.maxRange.components.seconds, now: self.now)
        let order = parameters.values["order"] ?? "views"
        guard order == "views" || order == "ctr" else {
            throw Problem(.malformed, "parameter 'order' must be views or ctr")
        }
        let sql = self.clickstream.objectsQuery(
            from: from,
            to: to,
            minViews: try parameters.integer("min_views", default: 1, range: 0...1_000_000_000),
            limit: try parameters.integer("limit", default: 50, range: 1...1000),
            page: try parameters.name("page"),
            byCTR: order == "ctr",
            bots: try parameters.bots()
        )
        let objects = try await self.rows(sql).map { row -> JSONValue in
            let views = Self.count(row["views"])
            let clicks = Self.count(row["clicks"])
            return .object([
                ("object", row["object"] ?? .string("")),
                ("views", .number(String(views))),
                ("clicks", .number(String(clicks))),
                ("ctr", .number(Self.ratio(clicks, views))),
                ("visitors", .number(String(Self.count(row["visitors"])))),
            ])
        }
        return .object(self.period(from, to) + [("objects", .array(objects))])
    }

    func pages(_ request: Request) async throws -> JSONValue {
        let parameters = try StatsParameters(Self.query(request), allowed: ["from", "to", "limit", "bots"])
        let (from, to) = try parameters.range(maxSeconds: self.service.maxRange.components.seconds, now: self.now)
        let sql = self.clickstream.pagesQuery(
            from: from,
            to: to,
            limit: try parameters.integer("limit", default: 50, range: 1...1000),
            bots: try parameters.bots()
        )
        let pages = try await self.rows(sql).map { row -> JSONValue in
            .object([
                ("page", row["page"] ?? .string("")),
                ("page_views", .number(String(Self.count(row["page_views"])))),
                ("events", .number(String(Self.count(row["all_events"])))),
                ("visitors", .number(String(Self.count(row["visitors"])))),
            ])
        }
        return .object(self.period(from, to) + [("pages", .array(pages))])
    }

    func timeseries(_ request: Request) async throws -> JSONValue {
        let parameters = try StatsParameters(Self.query(request), allowed: ["from", "to", "action", "bots"])
        let limit = min(self.service.maxRange.components.seconds, 7 * 86_400)
        let now = self.now
        let to = try parameters.time("to") ?? now
        let from = try parameters.time("from") ?? (to - 3_600)
        guard from < to else { throw Problem(.malformed, "'from' must be before 'to'") }
        guard to - from <= limit else {
            throw Problem(.malformed, "the range from 'from' to 'to' may be at most \(limit / 86_400) days")
        }
        let sql = self.clickstream.timeseriesQuery(
            from: from,
            to: to,
            action: try parameters.name("action"),
            bots: try parameters.bots()
        )
        let points = try await self.rows(sql).map { row -> JSONValue in
            .object([
                ("minute", .string(Timestamp.format(millis: Int64(Self.count(row["minute"])) * 1000))),
                ("action", row["action"] ?? .string("")),
                ("events", .number(String(Self.count(row["events"])))),
            ])
        }
        return .object(self.period(from, to) + [("step_seconds", .number("60")), ("points", .array(points))])
    }

    static func query(_ request: Request) -> [(String, String)] {
        request.uri.queryParameters.map { (String($0.key), String($0.value)) }
    }

    /// A count as ClickHouse writes it: a number, or (UInt64 on older servers) a string.
    static func count(_ value: JSONValue?) -> UInt64 {
        switch value {
        case .number(let text)?, .string(let text)?: UInt64(text) ?? 0
        default: 0
        }
    }

    /// `clicks / views` to four places; 0 without views.
    static func ratio(_ clicks: UInt64, _ views: UInt64) -> String {
        guard views > 0 else { return "0" }
        let value = (Double(clicks) / Double(views) * 10_000).rounded() / 10_000
        return String(value)
    }
}

/// `analytics.*`: whether the gateway serves the stats API and the analytics page, and from
/// which events table's rollups. ClickHouse is reached with the loader's `clickhouse.*` keys.
public struct AnalyticsConfiguration: Sendable {
    /// Serve `/v1/stats/…` and `/analytics`. Default: off (404 with how to turn it on).
    public var enabled = false
    /// The events table whose rollups are read (`<table>_objects_minute`…). Default: `sluice.events`.
    public var table = "sluice.events"

    public init() {}

    package static let keys: [ConfigurationKey<AnalyticsConfiguration>] = [
        .boolean(
            "analytics.enabled",
            \.enabled,
            help: "serve the stats API (/v1/stats/…, stats:read scope) and the analytics page (/analytics)"
        ),
        ConfigurationKey(
            path: "analytics.table",
            kind: .string,
            help: "the events table whose rollups the stats API reads",
            read: { $0.table },
            apply: { configuration, value, key in
                let parts = value.text.split(separator: ".", omittingEmptySubsequences: false)
                guard parts.count == 2,
                    parts.allSatisfy({ part in
                        !part.isEmpty
                            && part.utf8.allSatisfy {
                                $0 == 0x5F || (0x30...0x39).contains($0) || (0x41...0x5A).contains($0)
                                    || (0x61...0x7A).contains($0)
                            }
                    })
                else { throw value.fail(key.path, "database.table, of letters, digits and underscores") }
                configuration.table = value.text
            }
        ),
    ]
}
