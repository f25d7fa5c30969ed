import EventModel
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Testing
import WAL

@testable import Gateway

/// `gateway.privacy.client_ip`: what a stored event keeps of its sender's address.
@Suite struct ClientIPPrivacyTests {
    @Test(arguments: [
        ("203.0.113.77", "203.0.113.0"),
        ("10.1.2.3", "10.1.2.0"),
        ("2001:db8:1234:5678::1", "2001:db8:1234::"),
        ("2001:db8:1234:ffff:ffff:ffff:ffff:ffff", "2001:db8:1234::"),
        ("::1", "::"),
        // An IPv4 client seen through an IPv6 socket keeps its /24, not a /48 of zeros.
        ("::ffff:198.51.100.9", "::ffff:198.51.100.0"),
    ])
    func truncationKeepsTheNetworkNotTheHost(address: String, stored: String) {
        #expect(ClientIPPolicy.truncate.apply(to: address) == stored)
        #expect(ClientIPPolicy.keep.apply(to: address) == address)
        #expect(ClientIPPolicy.drop.apply(to: address) == nil)
    }

    @Test func somethingThatIsNotAnAddressIsNotStoredAtAll() {
        #expect(ClientIPPolicy.truncate.apply(to: "not-an-address") == nil)
        #expect(ClientIPPolicy.truncate.apply(to: nil) == nil)
    }

    /// Through the router, as a client sends: the event in the WAL holds what the policy
    /// allows, behind a trusted proxy as well as directly.
    @Test(arguments: [
        (ClientIPPolicy.keep, JSONValue?.some(.string("198.51.100.77"))),
        (.truncate, .some(.string("198.51.100.0"))),
        (.drop, nil),
    ])
    func theStoredEventHoldsWhatThePolicyAllows(policy: ClientIPPolicy, stored: JSONValue?) async throws {
        let gateway = try await TestGateway.make {
            $0.trustedProxies = ["127.0.0.1"]
            $0.clientIPPolicy = policy
        }
        let app = Application(router: gateway.router, configuration: .init(address: .hostname("127.0.0.1", port: 0)))
        try await app.test(.live) { client in
            let response = try await client.execute(
                uri: "/v1/events",
                method: .post,
                headers: headers([.contentType: "application/json", .xForwardedFor: "198.51.100.77"]),
                body: buffer(#"{"action":"view","user_id":"u"}"#)
            )
            #expect(response.status == .accepted, "\(response.text)")
        }
        await gateway.wal.close()
        let events = try gateway.storedEvents()
        #expect(events.count == 1)
        #expect(events.first?["client_ip"] == stored)
    }
}
