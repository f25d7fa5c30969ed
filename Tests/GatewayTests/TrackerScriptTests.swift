import CompressNIO
import Foundation
import Gateway
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import NIOCore
import TestSupport
import Testing

/// The tracker as the gateway serves it: the one tag's URL and the versioned one, gzip, ETag,
/// the 4 KB budget, the generated file held to clients/js, and the demo page's switch.
@Suite struct TrackerScriptTests {
    @Test func theServedTrackerIsAtMostFourKilobytesGzipped() throws {
        #expect(TrackerScript.gzipped.count <= 4096, "the tracker is \(TrackerScript.gzipped.count) B gzipped")
        var compressed = ByteBuffer(bytes: TrackerScript.gzipped)
        let unpacked = try compressed.decompress(with: .gzip())
        #expect(String(buffer: unpacked) == TrackerScript.minified)
    }

    @Test func theGeneratedScriptMatchesClientsJS() async throws {
        let root = repositoryRoot().path
        let check = try await ChildProcess.run("/usr/bin/python3", [root + "/scripts/build-tracker", "--check"])
        #expect(check.status == 0, "\(check.standardError)")
    }

    @Test func slashSluiceJSIsServedGzippedWithAnETagAndAShortCache() async throws {
        let gateway = try await TestGateway.make()
        try await gateway.test { client in
            let gzipped = try await client.execute(
                uri: "/sluice.js",
                method: .get,
                headers: headers([.acceptEncoding: "gzip, deflate, br"])
            )
            #expect(gzipped.status == .ok)
            #expect(gzipped.headers[.contentEncoding] == "gzip")
            #expect(gzipped.headers[.contentType] == "text/javascript; charset=utf-8")
            #expect(gzipped.headers[.cacheControl] == "public, max-age=300")
            #expect(gzipped.headers[.vary] == "Accept-Encoding")
            #expect(gzipped.body.readableBytes == TrackerScript.gzipped.count)
            let etag = try #require(gzipped.headers[.eTag])

            let plain = try await client.execute(
                uri: "/sluice.js",
                method: .get,
                headers: headers([.acceptEncoding: "gzip;q=0"])
            )
            #expect(plain.headers[.contentEncoding] == nil)
            #expect(String(buffer: plain.body) == TrackerScript.minified)
            #expect(plain.headers[.eTag] == etag)

            let revalidated = try await client.execute(
                uri: "/sluice.js",
                method: .get,
                headers: headers([.ifNoneMatch: etag])
            )
            #expect(revalidated.status == .notModified)
            #expect(revalidated.body.readableBytes == 0)
            // If-None-Match compares weakly (RFC 9110 §13.1.2): the strong form matches too.
            let strong = try await client.execute(
                uri: "/sluice.js",
                method: .get,
                headers: headers([.ifNoneMatch: "\"other\", \"\(TrackerScript.version)\""])
            )
            #expect(strong.status == .notModified)
            let stale = try await client.execute(
                uri: "/sluice.js",
                method: .get,
                headers: headers([.ifNoneMatch: "\"x\""])
            )
            #expect(stale.status == .ok)
            let head = try await client.execute(uri: "/sluice.js", method: .head)
            #expect(head.headers[.contentLength] != nil)
        }
    }

    @Test func theVersionedURLIsImmutableAndOtherVersionsAreNotFound() async throws {
        let gateway = try await TestGateway.make()
        try await gateway.test { client in
            let versioned = try await client.execute(uri: TrackerScript.versionedPath, method: .get)
            #expect(versioned.status == .ok)
            #expect(versioned.headers[.cacheControl] == "public, max-age=31536000, immutable")
            #expect(String(buffer: versioned.body) == TrackerScript.minified)
            let other = try await client.execute(uri: "/sluice/000000000000.js", method: .get)
            #expect(other.status == .notFound)
        }
    }

    @Test func theDemoPageIsOffUnlessEnabled() async throws {
        let off = try await TestGateway.make()
        try await off.test { client in
            let page = try await client.execute(uri: "/demo", method: .get)
            #expect(page.status == .notFound)
        }
        let on = try await TestGateway.make { $0.demoPage = true }
        try await on.test { client in
            let page = try await client.execute(uri: "/demo", method: .get)
            #expect(page.status == .ok)
            let html = String(buffer: page.body)
            #expect(html.contains("data-sluice-object"))
            #expect(html.contains("'/sluice.js'"))
        }
    }

    /// A refusal across origins must reach the page's script as what it is (status, problem
    /// and `Retry-After` readable), or the tracker would take it for a network error and retry.
    @Test func crossOriginRefusalsKeepTheirStatusCORSHeadersAndExposeRetryAfter() async throws {
        let gateway = try await TestGateway.make { $0.corsAllowedOrigins = ["https://shop.example"] }
        try await gateway.test { client in
            let invalid = try await client.execute(
                uri: "/v1/events/batch",
                method: .post,
                headers: headers([.contentType: "text/plain", .origin: "https://shop.example"]),
                body: buffer(#"[{"action":"Bad Action","user_id":"u"}"#)
            )
            #expect(invalid.status == .badRequest)
            #expect(invalid.headers[.contentType] == "application/problem+json")
            #expect(invalid.headers[.accessControlAllowOrigin] == "https://shop.example")
            #expect(invalid.headers[.accessControlExposeHeaders]?.contains("Retry-After") == true)
            let other = try await client.execute(
                uri: "/v1/events/batch",
                method: .post,
                headers: headers([.contentType: "text/plain", .origin: "https://evil.example"]),
                body: buffer(#"[{"action":"click","user_id":"u"}]"#)
            )
            #expect(other.status == .forbidden)
            #expect(String(buffer: other.body).contains("origin-not-allowed"))
            #expect(other.headers[.accessControlAllowOrigin] == "https://evil.example")
        }
        #expect(try gateway.storedEvents().isEmpty)
    }
}
