import ServiceLifecycle
import WAL

/// Where the gateway puts the events it accepts: in production always the ``WAL``.
///
/// The gateway answers 202 only after ``store(_:)`` returned, so an implementation must make
/// the events durable before it returns. The protocol exists so that the benchmark target can
/// measure the same server without the disk (`sluice-bench gateway`, docs/performance.md) —
/// not as a production switch: `sluice` itself always passes the WAL.
///
/// It is a `Service`: the gateway runs it first in its service group, so it starts before
/// requests arrive and, shutdown running in reverse, closes only after the HTTP server stopped
/// (no request can be left waiting on a closed log).
public protocol EventLog: Service {
    /// Stores `events` as one record and returns once they are durable. Throws a `WALError`
    /// when they are not (its code decides the HTTP answer: 503, or 413 for a record too large).
    func store(_ events: [[UInt8]]) async throws

    /// ``store(_:)``, returning the first event's LSN (the others follow it), for receipts;
    /// nil from a log without LSNs.
    func storeReturningLSN(_ events: [[UInt8]]) async throws -> UInt64?

    /// For `/readyz`: whether a store can succeed now.
    var isWritable: Bool { get }
    /// For `/readyz`: why a store cannot succeed, when ``isWritable`` is false.
    var unavailableReason: String? { get }
    /// For `/readyz`: `ok`, `pressure` or `full`.
    var pressureLevel: String { get }

    /// Closes the log; ``run()`` does it at shutdown.
    func close() async
}

extension EventLog {
    public func storeReturningLSN(_ events: [[UInt8]]) async throws -> UInt64? {
        try await self.store(events)
        return nil
    }
}

extension WAL: EventLog {
    public func store(_ events: [[UInt8]]) async throws {
        _ = try await self.append(events)
    }

    public func storeReturningLSN(_ events: [[UInt8]]) async throws -> UInt64? {
        try await self.append(events).firstLSN.rawValue
    }

    public var pressureLevel: String { self.pressure.rawValue }
}
