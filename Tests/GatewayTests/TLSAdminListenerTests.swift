import Foundation
import TestSupport
import Testing

@testable import Gateway

/// `gateway.admin_listen`: health, readiness and metrics move to a second, plain-HTTP
/// listener, and the API listener answers 404 for them.
@Suite("TLS admin listener")
struct TLSAdminListenerTests {
    @Test("health, readiness and metrics on the admin port; 404 on the HTTPS API port")
    func adminSplit() async throws {
        let files = try TLSTestFiles()
        let configure: (inout GatewayConfiguration) -> Void = { configuration in
            files.configure(&configuration)
            configuration.adminHost = "127.0.0.1"
            configuration.adminPort = 0
        }
        try await RunningTLSGateway.with(configure: configure) { gateway in
            let adminPort = try #require(gateway.adminPort)
            #expect(adminPort != gateway.port)
            for path in ["/healthz", "/readyz", "/metrics"] {
                let status = try await offPool {
                    let admin = try RawConnection(port: adminPort)
                    try admin.send("GET \(path) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                    return admin.response(timeout: .seconds(20))?.status
                }
                #expect(status == 200, "\(path) on the admin listener")

                let api = try OpenSSLConnection(port: gateway.port, caFile: files.caFile)
                let answer = try await api.get(path, answers: 1)
                await api.close()
                #expect(answer.contains("HTTP/1.1 404"), "\(path) on the API listener: \(answer)")
            }
            // The API itself still answers on the API port.
            let api = try OpenSSLConnection(port: gateway.port, caFile: files.caFile)
            let answer = try await api.get("/v1/pixel?action=page_view&user_id=u1", answers: 1)
            await api.close()
            #expect(!answer.contains("HTTP/1.1 404"), "\(answer)")
        }
    }

    @Test("without an admin listener the API listener serves /healthz")
    func noAdmin() async throws {
        let files = try TLSTestFiles()
        try await RunningTLSGateway.with(configure: files.configure) { gateway in
            #expect(gateway.adminPort == nil)
            let api = try OpenSSLConnection(port: gateway.port, caFile: files.caFile)
            #expect(try await api.get("/healthz", answers: 1).contains("HTTP/1.1 200"))
            await api.close()
        }
    }
}
