import Auth
import HTTPTypes
import Hummingbird
import NIOCore

/// The largest token request body: a client-credentials request is a few hundred bytes.
let authorizationServerMaxBodyBytes = 16 * 1024

/// Mounts the built-in authorization server (`auth.oauth.builtin_server.enabled`):
///
/// - `POST /oauth/token`: the client-credentials grant, `application/x-www-form-urlencoded`,
///   at most 16 KiB; errors in RFC 6749 §5.2's JSON shape (not problem+json, which OAuth
///   clients do not read).
/// - `GET /.well-known/oauth-authorization-server`: RFC 8414 metadata.
/// - `GET /.well-known/jwks.json`: the public signing key.
///
/// These routes take no bearer credential: the authentication middleware must let them through
/// (a client asks here for the token it does not have yet).
public func addAuthorizationServerRoutes<Context: RequestContext>(
    to router: Router<Context>,
    server: AuthorizationServer
) {
    router.post("/oauth/token") { request, _ in
        try await authorizationServerToken(request, server: server)
    }
    router.get("/.well-known/oauth-authorization-server") { _, _ in
        authorizationServerDocument(server.metadataJSON())
    }
    router.get("/.well-known/jwks.json") { _, _ in
        authorizationServerDocument(server.jwksJSON())
    }
}

private func authorizationServerToken(_ request: Request, server: AuthorizationServer) async throws -> Response {
    let mediaType = request.headers[.contentType]?.split(separator: ";", maxSplits: 1).first
        .map { $0.filter { $0 != " " && $0 != "\t" }.lowercased() }
    guard mediaType == "application/x-www-form-urlencoded" else {
        return authorizationServerResponse(
            server.invalidRequest(
                "Content-Type must be application/x-www-form-urlencoded",
                reason: "unsupported_media_type"
            )
        )
    }
    var request = request
    let body: ByteBuffer
    do {
        body = try await request.collectBody(upTo: authorizationServerMaxBodyBytes)
    } catch is NIOTooManyBytesError {
        return authorizationServerResponse(
            server.invalidRequest(
                "the body exceeds \(authorizationServerMaxBodyBytes) bytes",
                reason: "body_too_large"
            )
        )
    }
    let authorization = request.headers[.authorization]
    // A stat of the clients file (a read only when it changed): microseconds, on a rare request.
    let answer = server.token(formBody: Array(body.readableBytesView), authorization: authorization)
    return authorizationServerResponse(answer)
}

private func authorizationServerResponse(_ answer: AuthorizationServer.Response) -> Response {
    var headers = HTTPFields()
    for (name, value) in answer.headers {
        if let field = HTTPField.Name(name) { headers[field] = value }
    }
    return Response(
        status: HTTPResponse.Status(code: answer.status),
        headers: headers,
        body: .init(byteBuffer: ByteBuffer(bytes: answer.body))
    )
}

/// Metadata and keys change only with a restart (a new key means a new `kid`, which resource
/// servers refetch for), so caches may keep them for five minutes.
private func authorizationServerDocument(_ body: [UInt8]) -> Response {
    var headers = HTTPFields()
    headers[.contentType] = "application/json"
    headers[.cacheControl] = "public, max-age=300"
    return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: body)))
}
