import Auth
import Testing

@Suite struct TokenVerifierLifetimeTests {
    /// A verifier dropped without `shutdown()` — a start-up that failed after making it, a
    /// test stopped by a failed expectation — shuts its HTTP client down itself. Without that,
    /// AsyncHTTPClient traps on the client's release and takes the whole process with it.
    @Test func aVerifierDroppedWithoutShutdownDoesNotTrap() throws {
        for _ in 0..<3 {
            let verifier = try TokenVerifier(
                issuers: [
                    IssuerConfiguration(
                        issuer: "https://idp.example.com/realms/ingest",
                        jwksURI: "https://idp.example.com/jwks",
                        audiences: ["https://ingest.example.com"]
                    )
                ]
            )
            _ = verifier
        }
    }
}
