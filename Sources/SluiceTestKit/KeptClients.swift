import Synchronization

/// Clients a test made, kept referenced until the process ends.
///
/// AsyncHTTPClient traps in debug builds when a client that was not shut down is released. A
/// test that fails by throwing skips its `shutdown()` (`defer` cannot await), and the trap then
/// ends the whole test run and hides the failure (it did in CI). A client kept here is never
/// released, so a failing test reports its failure and the others go on. A shut-down client
/// kept here costs a few kilobytes until the run ends.
public enum KeptClients {
    private static let kept = Mutex<[any AnyObject & Sendable]>([])

    /// Keeps `client` and hands it back.
    public static func keep<Client: AnyObject & Sendable>(_ client: Client) -> Client {
        Self.kept.withLock { $0.append(client) }
        return client
    }
}
