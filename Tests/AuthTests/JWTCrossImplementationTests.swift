import Auth
import Foundation
import TestSupport
import Testing

/// Tokens minted by PyJWT (a second implementation) with keys the test made: the verifier must
/// accept RS256, ES256 and EdDSA tokens it did not produce itself.
@Suite struct JWTCrossImplementationTests {
    private static var pythonWithPyJWT: Bool {
        guard let python = ChildProcess.find("python3") else { return false }
        return (try? ChildProcess.runBlocking(python, ["-c", "import jwt, cryptography"], timeout: .seconds(30)))?
            .status == 0
    }

    /// Runs mint_token.py and returns the token it printed.
    private func mint(
        key: TestSigningKey,
        issuer: String,
        client: String,
        now: Date,
        directory: TemporaryDirectory
    ) async throws -> String {
        let keyFile = directory.path + "/\(key.kid).pem"
        try key.privatePEM.write(toFile: keyFile, atomically: true, encoding: .utf8)
        let script = repositoryRoot().appendingPathComponent("Tests/AuthTests/mint_token.py").path
        let arguments = [
            script, keyFile, key.alg, key.kid, issuer, testAudience, client,
            String(Int(now.timeIntervalSince1970)),
        ]
        let minted = try await ChildProcess.run("python3", arguments, timeout: .seconds(60))
        guard minted.status == 0 else {
            throw ChildProcessError(description: "mint_token.py (\(minted.status)): \(minted.standardError)")
        }
        return minted.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    @Test(.enabled(if: pythonWithPyJWT)) func pyJWTTokensAreAccepted() async throws {
        try await withJWTEnvironment { env in
            let keys = [
                try await TestSigningKey.rsa(kid: "py-rsa", pem: JWTTestRSAKeys.pem2),
                try await TestSigningKey.p256(kid: "py-ec"),
                try await TestSigningKey.ed25519(kid: "py-ed"),
            ]
            env.publish(keys.map(\.jwk))
            let verifier = try env.verifier([env.configuration()])
            for key in keys {
                let token = try await self.mint(
                    key: key,
                    issuer: env.issuer(),
                    client: "py-\(key.alg)",
                    now: env.clock.now,
                    directory: env.directory
                )
                let verified = try await expectAccepted(verifier, token)
                #expect(verified.principal == Principal(kind: .oauthClient, name: "py-\(key.alg)"))
                // One character less in its signature, and the token is no longer canonical base64url.
                await expectRefused(verifier, String(token.dropLast()), reason: "malformed")
            }
        }
    }
}
