import AsyncHTTPClient
import ClickHouse
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOSSL
import Synchronization
import TestSupport

/// Every process whose command line mentions `text` (to find what a test left running).
func processes(mentioning text: String) -> [Int32] {
    guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
    return entries.compactMap { entry in
        guard let pid = Int32(entry), pid != getpid(),
            let commandLine = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline")
        else { return nil }
        return String(decoding: commandLine, as: UTF8.self).contains(text) ? pid : nil
    }
}

/// What the front door of an end-to-end gateway needs: a test CA with a server certificate
/// (`sluice tls self-signed`) and a secret key (`sluice keys create`), made with the binary as
/// an operator would.
struct FrontDoor {
    let directory: String
    let key: String

    var caFile: String { self.directory + "/tls/ca.pem" }
    var keysFile: String { self.directory + "/keys.json" }

    /// The gateway's environment: HTTPS with the test certificate, keys from the file.
    var environment: [String: String] {
        [
            "SLUICE_GATEWAY_TLS_CERT_FILE": self.directory + "/tls/server.pem",
            "SLUICE_GATEWAY_TLS_KEY_FILE": self.directory + "/tls/server.key",
            "SLUICE_AUTH_API_KEYS_FILE": self.keysFile,
        ]
    }

    static func make(in directory: String, rate: String = "100000/s") async throws -> FrontDoor {
        let tls = try SluiceProcess(["tls", "self-signed", "--out", directory + "/tls", "--host", "127.0.0.1"])
        guard try await tls.waitForExit() == 0 else {
            throw FrontDoorError(message: "sluice tls self-signed failed: \(tls.standardError)")
        }
        let keys = try SluiceProcess([
            "keys", "create", "e2e", "--kind", "secret", "--rate", rate, "--file", directory + "/keys.json",
        ])
        guard try await keys.waitForExit() == 0,
            let key = keys.standardOutput.split(whereSeparator: \.isWhitespace).first(where: { $0.hasPrefix("slk_") })
        else {
            throw FrontDoorError(message: "sluice keys create failed: \(keys.standardError)")
        }
        return FrontDoor(directory: directory, key: String(key))
    }

    /// An HTTP client that trusts the test CA (and only it).
    func client() -> HTTPClient { EventPoster.client(trusting: self.caFile) }
}

struct FrontDoorError: Error, CustomStringConvertible {
    var message: String
    var description: String { self.message }
}
