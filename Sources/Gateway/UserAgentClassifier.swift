import EventModel
import Synchronization

/// What a `User-Agent` string says about the visitor: browser family, operating system,
/// device class, and whether it is a known robot.
///
/// Coarse on purpose: analytics groups by these and excludes bots, so a stable small set of
/// names matters more than versions (which the raw `user_agent` column keeps).
package struct UserAgentClass: Sendable, Equatable {
    /// `Chrome`, `Firefox`, `Safari`, `Edge`, `Opera`, `Samsung Internet`, …, a robot's or
    /// tool's name for bots (`Googlebot`) and HTTP libraries (`curl`), else `Other`.
    package var browser: String
    /// `Windows`, `macOS`, `iOS`, `Android`, `Linux`, `ChromeOS`, `Windows Phone`, else `Other`.
    package var os: String
    /// `desktop`, `mobile`, `tablet`, `bot` or `other`.
    package var device: String
    /// A crawler, a monitoring probe, a headless browser or a load generator: not a person.
    /// (An HTTP library is a back end sending real users' events: `device` `server`, not a bot.)
    package var isBot: Bool

    package init(browser: String, os: String, device: String, isBot: Bool) {
        self.browser = browser
        self.os = os
        self.device = device
        self.isBot = isBot
    }
}

/// Classifies user agents by table-driven substring rules, with a bounded cache.
///
/// Written here rather than taken from a UA database: the gateway needs four coarse answers per
/// request, and a dependency with thousands of regular expressions would cost more per request
/// than the rest of the ingest path. The rules are ordered tables; the first match wins.
package final class UserAgentClassifier: Sendable {
    /// A site's traffic has a few hundred distinct user agents; the cache holds this many and
    /// is emptied when full (a flood of made-up user agents costs a classification each, not
    /// memory).
    package static let cacheLimit = 4096

    package static let shared = UserAgentClassifier()

    private let cache = Mutex<[String: UserAgentClass]>([:])

    package init() {}

    /// User agents in the cache now.
    package var cachedCount: Int { self.cache.withLock { $0.count } }

    /// The class of `userAgent`; an empty one is `Other`/`other`, not a bot.
    package func classify(_ userAgent: String) -> UserAgentClass {
        if let known = self.cache.withLock({ $0[userAgent] }) { return known }
        let result = Self.classifyUncached(userAgent)
        self.cache.withLock { cache in
            if cache.count >= Self.cacheLimit { cache.removeAll(keepingCapacity: true) }
            cache[userAgent] = result
        }
        return result
    }

    /// Robots and tools, as lower-case substrings, with the name reported as `browser`.
    static let bots: [(token: String, name: String)] = [
        ("googlebot", "Googlebot"), ("adsbot-google", "Googlebot"), ("mediapartners-google", "Googlebot"),
        ("google-inspectiontool", "Googlebot"), ("bingbot", "Bingbot"), ("bingpreview", "Bingbot"),
        ("yandexbot", "YandexBot"), ("baiduspider", "Baiduspider"), ("duckduckbot", "DuckDuckBot"),
        ("applebot", "Applebot"), ("slurp", "Yahoo! Slurp"), ("facebookexternalhit", "Facebook"),
        ("twitterbot", "Twitterbot"), ("linkedinbot", "LinkedInBot"), ("slackbot", "Slackbot"),
        ("discordbot", "Discordbot"), ("telegrambot", "TelegramBot"), ("whatsapp", "WhatsApp"),
        ("petalbot", "PetalBot"), ("ahrefsbot", "AhrefsBot"), ("semrushbot", "SemrushBot"),
        ("mj12bot", "MJ12bot"), ("dotbot", "DotBot"), ("gptbot", "GPTBot"), ("chatgpt-user", "ChatGPT-User"),
        ("claudebot", "ClaudeBot"), ("ccbot", "CCBot"), ("bytespider", "Bytespider"),
        ("amazonbot", "Amazonbot"), ("pingdom", "Pingdom"), ("uptimerobot", "UptimeRobot"),
        ("statuscake", "StatusCake"), ("chrome-lighthouse", "Lighthouse"), ("lighthouse", "Lighthouse"),
        ("headlesschrome", "HeadlessChrome"), ("phantomjs", "PhantomJS"), ("wget/", "Wget"),
        ("scrapy", "Scrapy"), ("k6/", "k6"), ("jmeter", "JMeter"),
    ]

    /// HTTP client libraries and API tools: how back ends send their users' events (a shop's
    /// server posting purchases with `python-requests`, the README's `curl`). Not robots: their
    /// events are real actions, counted like a browser's, with `device` `server`. Crawlers,
    /// headless browsers, probes and load generators above are the robots.
    static let libraries: [(token: String, name: String)] = [
        ("curl/", "curl"), ("python-requests", "python-requests"), ("python-urllib", "Python-urllib"),
        ("python-httpx", "python-httpx"), ("aiohttp", "aiohttp"), ("go-http-client", "Go-http-client"),
        ("okhttp", "okhttp"), ("apache-httpclient", "Apache-HttpClient"), ("java/", "Java"),
        ("libwww-perl", "libwww-perl"), ("node-fetch", "node-fetch"), ("axios/", "axios"), ("undici", "undici"),
        ("httpie", "HTTPie"), ("postmanruntime", "PostmanRuntime"), ("insomnia", "Insomnia"),
    ]

    /// Words that mark the long tail of robots, trusted only where a browser would not have
    /// them: in a user agent that does not start `Mozilla/`, or that says `compatible;` or links
    /// its robot page (`+http`). A phone named "CUBOT" in a browser's user agent is a person.
    static let botWords = ["bot", "crawler", "spider", "crawl", "scraper", "monitor", "headless"]

    /// Browser families, checked in order: many browsers also claim `Chrome/` and `Safari/`,
    /// so the specific ones come first.
    static let browsers: [(tokens: [String], name: String)] = [
        (["edg/", "edge/", "edga/", "edgios/"], "Edge"),
        (["opr/", "opera", "opt/"], "Opera"),
        (["samsungbrowser/"], "Samsung Internet"),
        (["yabrowser/"], "Yandex Browser"),
        (["ucbrowser/"], "UC Browser"),
        (["vivaldi/"], "Vivaldi"),
        (["brave"], "Brave"),
        (["fxios/", "firefox/"], "Firefox"),
        (["crios/"], "Chrome"),
        (["chromium/"], "Chromium"),
        (["chrome/"], "Chrome"),
        (["msie ", "trident/"], "Internet Explorer"),
        (["version/", "safari/"], "Safari"),
    ]

    static let systems: [(tokens: [String], name: String)] = [
        (["windows phone"], "Windows Phone"),
        (["windows"], "Windows"),
        (["iphone", "ipad", "ipod"], "iOS"),
        (["android"], "Android"),
        (["cros "], "ChromeOS"),
        (["mac os x", "macintosh"], "macOS"),
        (["linux", "x11"], "Linux"),
    ]

    static func classifyUncached(_ userAgent: String) -> UserAgentClass {
        let text = LowercasedAgent(userAgent)
        guard !text.bytes.isEmpty else {
            return UserAgentClass(browser: "Other", os: "Other", device: "other", isBot: false)
        }
        let os = Self.systems.first { $0.tokens.contains { text.contains($0) } }?.name ?? "Other"
        if let bot = Self.bots.first(where: { text.contains($0.token) }) {
            return UserAgentClass(browser: bot.name, os: os, device: "bot", isBot: true)
        }
        if let library = Self.libraries.first(where: { text.contains($0.token) }) {
            return UserAgentClass(browser: library.name, os: os, device: "server", isBot: false)
        }
        if !text.hasPrefix("mozilla/") || text.contains("compatible;") || text.contains("+http"),
            Self.botWords.contains(where: { text.contains($0) })
        {
            return UserAgentClass(browser: "Other bot", os: os, device: "bot", isBot: true)
        }
        // Safari is named only when a WebKit browser says so (`Version/… Safari/`); an app's
        // web view that sends neither stays `Other`.
        var browser = Self.browsers.first { $0.tokens.contains { text.contains($0) } }?.name ?? "Other"
        if browser == "Safari" && !(text.contains("version/") && text.contains("safari/")) { browser = "Other" }
        return UserAgentClass(browser: browser, os: os, device: Self.device(text, os: os), isBot: false)
    }

    static func device(_ text: LowercasedAgent, os: String) -> String {
        if text.contains("ipad") || text.contains("tablet") || text.contains("kindle") || text.contains("silk/")
            || text.contains("playbook")
        {
            return "tablet"
        }
        // Android phones say "Mobile"; Android tablets do not.
        if os == "Android" { return text.contains("mobile") ? "mobile" : "tablet" }
        if text.contains("mobi") || text.contains("iphone") || text.contains("ipod") || os == "Windows Phone" {
            return "mobile"
        }
        switch os {
        case "Windows", "macOS", "Linux", "ChromeOS": return "desktop"
        default: return "other"
        }
    }

    /// A user agent lower-cased (ASCII only: user agents are ASCII, and Unicode case mapping
    /// is work for nothing), searched byte by byte: `String.contains` was measured at about
    /// 100 µs per user agent over these tables, this at a few µs (docs/api.md).
    struct LowercasedAgent {
        let bytes: [UInt8]

        init(_ text: String) {
            var bytes = Array(text.utf8)
            for index in bytes.indices where (0x41...0x5A).contains(bytes[index]) { bytes[index] += 0x20 }
            self.bytes = bytes
        }

        func contains(_ needle: String) -> Bool {
            var needle = needle
            return needle.withUTF8 { needle in
                self.bytes.withUnsafeBufferPointer { haystack in
                    guard let first = needle.first, needle.count <= haystack.count else { return needle.isEmpty }
                    var start = 0
                    let last = haystack.count - needle.count
                    while start <= last {
                        if haystack[start] == first {
                            var matched = 1
                            while matched < needle.count && haystack[start + matched] == needle[matched] {
                                matched += 1
                            }
                            if matched == needle.count { return true }
                        }
                        start += 1
                    }
                    return false
                }
            }
        }

        func hasPrefix(_ prefix: String) -> Bool { self.bytes.starts(with: prefix.utf8) }
    }
}

extension RequestOrigin {
    /// Sets ``browser``, ``os``, ``device`` and ``isBot`` from ``userAgent``; all nil when
    /// there is none.
    mutating func classifyUserAgent(with classifier: UserAgentClassifier = .shared) {
        guard let agent = self.userAgent, !agent.isEmpty else {
            (self.browser, self.os, self.device, self.isBot) = (nil, nil, nil, nil)
            return
        }
        let found = classifier.classify(agent)
        (self.browser, self.os, self.device, self.isBot) = (found.browser, found.os, found.device, found.isBot)
    }
}
