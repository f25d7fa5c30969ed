import Kafka

/// A batch's messages, and the rows of those that became rows, encoded end to end in one
/// body: what one `INSERT` sends, or a chunk of it when a refused batch is halved.
struct EncodedRows: Sendable {
    /// The batch's messages: rows and the messages that could not become rows.
    var source: ArraySlice<ConsumedMessage> = []
    /// For each row, its message's position in `source` (from 0).
    var sources: [Int] = []
    var receivedAtMillis: [Int64?] = []
    var body: [UInt8] = []
    /// Where each row ends in `body`; a row starts where the one before it ends.
    var ends: [Int] = []

    var count: Int { self.sources.count }
    var indices: Range<Int> { 0..<self.sources.count }

    func message(_ row: Int) -> ConsumedMessage { self.source[self.source.startIndex + self.sources[row]] }

    mutating func reserve(_ rows: Int, bytes: Int) {
        self.sources.reserveCapacity(rows)
        self.receivedAtMillis.reserveCapacity(rows)
        self.ends.reserveCapacity(rows)
        self.body.reserveCapacity(bytes)
    }

    /// Records the message whose row was just appended to `body`.
    mutating func appended(source: Int, receivedAtMillis: Int64?) {
        self.sources.append(source)
        self.receivedAtMillis.append(receivedAtMillis)
        self.ends.append(self.body.count)
    }

    mutating func append(contentsOf other: EncodedRows) {
        let shift = self.body.count
        self.sources += other.sources
        self.receivedAtMillis += other.receivedAtMillis
        self.ends += other.ends.lazy.map { $0 + shift }
        self.body += other.body
    }

    /// The bytes of rows `chunk`: the body itself (no copy) when that is all of them.
    func body(of chunk: Range<Int>) -> [UInt8] {
        guard chunk != self.indices else { return self.body }
        let start = chunk.lowerBound == 0 ? 0 : self.ends[chunk.lowerBound - 1]
        return Array(self.body[start..<self.ends[chunk.upperBound - 1]])
    }
}

/// A message the loader cannot load, and why: it goes to its route's dead-letter topic.
struct DeadLetter: Sendable {
    var message: ConsumedMessage
    /// The `dlq_reason` header: a ``LoaderError``'s description or ClickHouse's refusal.
    var reason: String
}
