import EventModel
import Gateway
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Testing

@Suite struct UserAgentClassifierTests {
    /// Real user agents, as browsers, crawlers and tools send them.
    static let table: [(agent: String, browser: String, os: String, device: String, isBot: Bool)] = [
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
            "Chrome", "Windows", "desktop", false
        ),
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
            "Safari", "macOS", "desktop", false
        ),
        (
            "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
            "Firefox", "Linux", "desktop", false
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
            "Edge", "Windows", "desktop", false
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36 OPR/115.0.0.0",
            "Opera", "Windows", "desktop", false
        ),
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
            "Safari", "iOS", "mobile", false
        ),
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/131.0.6778.73 Mobile/15E148 Safari/604.1",
            "Chrome", "iOS", "mobile", false
        ),
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) FxiOS/132.0 Mobile/15E148 Safari/605.1.15",
            "Firefox", "iOS", "mobile", false
        ),
        (
            "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
            "Safari", "iOS", "tablet", false
        ),
        (
            "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.81 Mobile Safari/537.36",
            "Chrome", "Android", "mobile", false
        ),
        (
            "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
            "Chrome", "Android", "tablet", false
        ),
        (
            "Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S921B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36",
            "Samsung Internet", "Android", "mobile", false
        ),
        (
            "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
            "Chrome", "ChromeOS", "desktop", false
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; WOW64; Trident/7.0; rv:11.0) like Gecko",
            "Internet Explorer", "Windows", "desktop", false
        ),
        (
            "Mozilla/5.0 (Linux; Android 11; KFTRWI) AppleWebKit/537.36 (KHTML, like Gecko) Silk/130.3.1 like Chrome/130.0.6723.102 Safari/537.36",
            "Chrome", "Android", "tablet", false
        ),
        // An iOS app's web view: WebKit without "Version/… Safari/".
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
            "Other", "iOS", "mobile", false
        ),
        (
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "Googlebot", "Other", "bot", true
        ),
        (
            "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.6778.69 Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "Googlebot", "Android", "bot", true
        ),
        (
            "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm) Chrome/116.0.1938.76 Safari/537.36",
            "Bingbot", "Other", "bot", true
        ),
        (
            "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
            "YandexBot", "Other", "bot", true
        ),
        ("facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)", "Facebook", "Other", "bot", true),
        (
            "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)",
            "GPTBot", "Other", "bot", true
        ),
        (
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/131.0.6778.85 Safari/537.36",
            "HeadlessChrome", "Linux", "bot", true
        ),
        (
            "Mozilla/5.0 (Linux; Android 11; moto g power (2022)) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36 Chrome-Lighthouse",
            "Lighthouse", "Android", "bot", true
        ),
        ("curl/8.11.0", "curl", "Other", "server", false),
        ("Wget/1.21.4", "Wget", "Other", "bot", true),
        ("python-requests/2.32.3", "python-requests", "Other", "server", false),
        ("Go-http-client/1.1", "Go-http-client", "Other", "server", false),
        ("okhttp/4.12.0", "okhttp", "Other", "server", false),
        ("Java/17.0.2", "Java", "Other", "server", false),
        ("Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)", "AhrefsBot", "Other", "bot", true),
        ("Mozilla/5.0 (compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)", "UptimeRobot", "Other", "bot", true),
        ("SomeNewCrawler/0.1 (+https://example.com/crawler)", "Other bot", "Other", "bot", true),
        ("Mozilla/5.0 (compatible; NewSpider/1.0)", "Other bot", "Other", "bot", true),
        // A phone whose model name holds "bot", in a browser's user agent: a person.
        (
            "Mozilla/5.0 (Linux; Android 9; CUBOT P30) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36",
            "Chrome", "Android", "mobile", false
        ),
        ("", "Other", "Other", "other", false),
        ("analytics-python/2.4.0", "Other", "Other", "other", false),
    ]

    @Test(arguments: Self.table.indices) func classifiesRealUserAgents(_ index: Int) {
        let row = Self.table[index]
        let found = UserAgentClassifier().classify(row.agent)
        #expect(
            found == UserAgentClass(browser: row.browser, os: row.os, device: row.device, isBot: row.isBot),
            "\(row.agent)"
        )
    }

    @Test func theCacheIsBoundedAndAnswersLikeTheRules() {
        let classifier = UserAgentClassifier()
        let agent = Self.table[0].agent
        #expect(classifier.classify(agent) == classifier.classify(agent))
        for index in 0..<(UserAgentClassifier.cacheLimit + 10) {
            _ = classifier.classify("probe-\(index)/1.0")
        }
        #expect(classifier.cachedCount <= UserAgentClassifier.cacheLimit)
        #expect(classifier.classify(agent).browser == "Chrome")
    }

    @Test func theGatewayStoresTheClassificationWithEveryEvent() async throws {
        let gateway = try await TestGateway.make()
        try await gateway.test { client in
            for agent in [
                "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", Self.table[0].agent,
            ] {
                let response = try await client.execute(
                    uri: "/v1/events",
                    method: .post,
                    headers: headers([.contentType: "application/json", .userAgent: agent]),
                    body: buffer(#"{"action":"page_view","anonymous_id":"a1"}"#)
                )
                #expect(response.status == .accepted, "\(response.text)")
            }
            let none = try await client.execute(
                uri: "/v1/events",
                method: .post,
                headers: headers([.contentType: "application/json"]),
                body: buffer(#"{"action":"page_view","anonymous_id":"a1"}"#)
            )
            #expect(none.status == .accepted)
        }
        let events = try gateway.storedEvents()
        try #require(events.count == 3)
        #expect(events[0]["is_bot"] == .bool(true) && events[0]["device"] == .string("bot"))
        #expect(events[0]["browser"] == .string("Googlebot"))
        #expect(events[1]["is_bot"] == .bool(false) && events[1]["browser"] == .string("Chrome"))
        #expect(events[1]["os"] == .string("Windows") && events[1]["device"] == .string("desktop"))
        #expect(events[2]["browser"] == nil && events[2]["is_bot"] == nil)
    }
}
