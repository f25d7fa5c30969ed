import Foundation
import HTTPTypes
import Hummingbird
import NIOCore

/// The browser tracker (clients/js/sluice.js, docs/tracker.md), compiled into the binary by
/// scripts/build-tracker so that a `sluice` copied alone still serves it.
///
/// Two URLs: `/sluice.js`, the one tag sites paste, cached for five minutes and revalidated by
/// its ETag so that a new release reaches every site within minutes; and
/// `/sluice/<version>.js`, whose content never changes, cached for a year (`immutable`) for
/// sites that pin a version (or use Subresource Integrity). No credential is needed: the
/// script is public, like the publishable key in the tag.
package enum TrackerScript {
    /// The stable URL.
    package static let path = "/sluice.js"
    /// The URL of this build's script, cached forever.
    package static var versionedPath: String { "/sluice/\(version).js" }
    /// ``minified``, gzipped once at build time (a 2.9 KB body is not worth compressing per request).
    package static let gzipped = [UInt8](
        Data(base64Encoded: gzippedBase64, options: .ignoreUnknownCharacters) ?? Data()
    )
    /// Weak (RFC 9110 §8.8.3): the gzipped and the plain body are the same script, not the same bytes.
    package static let etag = "W/\"\(version)\""

    /// The answer to `GET`/`HEAD` of either URL: 304 when `If-None-Match` names this version,
    /// gzip when the client accepts it.
    static func response(to request: Request, immutable: Bool) -> Response {
        var headers: HTTPFields = [
            .contentType: "text/javascript; charset=utf-8",
            .cacheControl: immutable ? "public, max-age=31536000, immutable" : "public, max-age=300",
            .eTag: Self.etag,
            .vary: "Accept-Encoding",
            // A page may load it with `crossorigin` (Subresource Integrity): any origin may.
            .accessControlAllowOrigin: "*",
            .xContentTypeOptions: "nosniff",
        ]
        // If-None-Match compares weakly: `"v"` and `W/"v"` both match.
        if let tags = request.headers[.ifNoneMatch],
            tags.split(separator: ",").contains(where: {
                let tag = $0.trimmingCharacters(in: .whitespaces)
                return tag == "*" || tag == Self.etag || "W/" + tag == Self.etag
            })
        {
            return Response(status: .notModified, headers: headers)
        }
        let body: ByteBuffer
        if Self.acceptsGzip(request.headers[values: .acceptEncoding]) {
            headers[.contentEncoding] = "gzip"
            body = ByteBuffer(bytes: Self.gzipped)
        } else {
            body = ByteBuffer(string: Self.minified)
        }
        headers[.contentLength] = String(body.readableBytes)
        return Response(status: .ok, headers: headers, body: ResponseBody(byteBuffer: body))
    }

    /// Whether `Accept-Encoding` allows gzip (RFC 9110 §12.5.3): named or `*`, with a q-value
    /// above zero.
    static func acceptsGzip(_ values: [String]) -> Bool {
        for item in values.joined(separator: ",").split(separator: ",") {
            let parts = item.split(separator: ";").map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
            guard let coding = parts.first, coding == "gzip" || coding == "x-gzip" || coding == "*" else { continue }
            let q = parts.dropFirst().first { $0.hasPrefix("q=") }.flatMap { Double($0.dropFirst(2)) } ?? 1
            return q > 0
        }
        return false
    }
}

/// `GET /sluice.js` and `GET /sluice/<version>.js`; with `gateway.demo_page`, `GET /demo`.
func addTrackerRoutes<Context: RequestContext>(to router: Router<Context>, configuration: GatewayConfiguration) {
    router.get(RouterPath(TrackerScript.path)) { request, _ in
        TrackerScript.response(to: request, immutable: false)
    }
    router.get(RouterPath(TrackerScript.versionedPath)) { request, _ in
        TrackerScript.response(to: request, immutable: true)
    }
    if configuration.demoPage {
        router.get("/demo") { _, _ in
            Response(
                status: .ok,
                headers: [.contentType: "text/html; charset=utf-8", .cacheControl: "no-store"],
                body: ResponseBody(byteBuffer: ByteBuffer(string: DemoPage.html))
            )
        }
    }
}

/// What a browser needs to read the gateway's refusals across origins. Sits inside the CORS
/// middleware and answers a thrown ``Problem`` here, as a response: Hummingbird's CORS
/// middleware wraps a thrown error in its own type, which the access log could only turn
/// into a generic problem without the `Retry-After`, and the browser would then see a
/// network error instead of the 503 or 400. And it names `Retry-After` in
/// `Access-Control-Expose-Headers` (Hummingbird sends that on preflights only, and the
/// tracker's `text/plain` POST has none), or the tracker could not honour it.
struct CrossOriginAnswers: RouterMiddleware {
    typealias Context = IngestRequestContext

    func handle(
        _ request: Request,
        context: IngestRequestContext,
        next: (Request, IngestRequestContext) async throws -> Response
    ) async throws -> Response {
        guard request.headers[.origin] != nil else { return try await next(request, context) }
        var response: Response
        do {
            response = try await next(request, context)
        } catch let problem as Problem {
            response = problem.response(instance: request.uri.path, requestID: context.requestID)
        }
        response.headers[.accessControlExposeHeaders] = "Retry-After, X-Request-Id"
        return response
    }
}

extension HTTPField.Name {
    static let xContentTypeOptions = Self("X-Content-Type-Options")!
}
