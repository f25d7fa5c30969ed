import Testing

@testable import Kafka
@testable import Loader

@Suite struct BatchTests {
    static func message(_ offset: Int64, bytes: Int = 10, partition: Int32 = 0) -> ConsumedMessage {
        ConsumedMessage(
            topic: "events",
            partition: partition,
            offset: offset,
            key: nil,
            value: [UInt8](repeating: 0x61, count: bytes),
            headers: [],
            timestampMillis: -1
        )
    }

    @Test func batchesAreCutAtTheirSizeAndTheRestWaits() {
        let clock = TestClock()
        var batch = LoaderStateMachine<TestClock>.Batch()
        for offset in 0..<5 { batch.append(Self.message(Int64(offset)), at: clock.now) }
        #expect(batch.bytes == 50)
        #expect(batch.firstArrival == clock.now)

        clock.advance(by: .milliseconds(300))
        let first = batch.take(rows: 2, bytes: 1000, now: clock.now)
        #expect(first.map(\.offset) == [0, 1])
        #expect(batch.messages.map(\.offset) == [2, 3, 4])
        #expect(batch.bytes == 30)
        // The rest is a batch that starts now: its age counts from the cut.
        #expect(batch.firstArrival == clock.now)

        // Up to the message that reaches the byte limit.
        let second = batch.take(rows: 100, bytes: 15, now: clock.now)
        #expect(second.map(\.offset) == [2, 3])
        #expect(batch.bytes == 10)

        // One message at least, however small the limits; then the batch is empty.
        let last = batch.take(rows: 0, bytes: 0, now: clock.now)
        #expect(last.map(\.offset) == [4])
        #expect(batch.messages.isEmpty && batch.bytes == 0 && batch.firstArrival == nil)
    }

    @Test func aChunkOfRowsIsItsPartOfTheBody() {
        var rows = EncodedRows()
        for (index, row) in ["aa", "bbb", "c"].enumerated() {
            rows.body += Array(row.utf8)
            rows.appended(source: [0, 1, 3][index], receivedAtMillis: nil)
        }
        rows.source = ArraySlice((10..<16).map { Self.message(Int64($0)) })[2...]
        #expect(rows.body(of: 0..<3) == Array("aabbbc".utf8))
        #expect(rows.body(of: 1..<3) == Array("bbbc".utf8))
        #expect(rows.body(of: 0..<1) == Array("aa".utf8))
        #expect(rows.body(of: 2..<3) == Array("c".utf8))
        // Rows point at their messages, wherever the batch's slice starts.
        #expect(rows.indices.map { rows.message($0).offset } == [12, 13, 15])
    }
}
