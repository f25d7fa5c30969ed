/// Where a hop hands its ledger records: the ledger topic (``LedgerPublisher``), and, in a
/// gateway, its own receipts too (``LedgerFanOut``). Called on the hop's own threads: keep
/// it short and never block.
public protocol LedgerSink: Sendable {
    func record(_ record: LedgerRecord)
}

extension LedgerPublisher: LedgerSink {
    public func record(_ record: LedgerRecord) { self.publish(record) }
}

/// Hands every record to each of `sinks`, in order.
public struct LedgerFanOut: LedgerSink {
    public let sinks: [any LedgerSink]

    public init(_ sinks: [any LedgerSink]) { self.sinks = sinks }

    public func record(_ record: LedgerRecord) {
        for sink in self.sinks { sink.record(record) }
    }
}
