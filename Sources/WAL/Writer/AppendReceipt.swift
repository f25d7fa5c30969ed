/// Where an append landed: its events are durable at `firstLSN ..< firstLSN + eventCount`.
public struct AppendReceipt: Sendable, Equatable {
    public var firstLSN: LSN
    public var eventCount: Int
}
