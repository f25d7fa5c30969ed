import Testing
import WAL

@testable import Forwarder

@Suite struct DeliveryTrackerTests {
    static func events(_ count: Int) -> [[UInt8]] { (0..<count).map { Array("e\($0)".utf8) } }

    @Test func theCursorMovesOnlyOverFullyDeliveredRecordsInOrder() {
        var tracker = DeliveryTracker(cursor: LSN(10))
        tracker.sent(lsn: LSN(10), events: Self.events(3), from: LSN(10))  // 10, 11, 12
        tracker.sent(lsn: LSN(13), events: Self.events(2), from: LSN(10))  // 13, 14
        #expect(tracker.inFlight == 5)
        tracker.delivered(LSN(13))
        tracker.delivered(LSN(14))
        #expect(tracker.committable == LSN(10))  // the second record is done, the first is not
        tracker.delivered(LSN(10))
        tracker.delivered(LSN(12))
        #expect(tracker.committable == LSN(10))  // half a record does not count
        tracker.delivered(LSN(11))
        #expect(tracker.committable == LSN(15))
        #expect(tracker.inFlight == 0)
    }

    @Test func repeatedAndUnknownReportsAreIgnored() {
        var tracker = DeliveryTracker(cursor: .zero)
        tracker.sent(lsn: .zero, events: Self.events(2), from: .zero)
        let first = tracker.delivered(LSN(0))
        let again = tracker.delivered(LSN(0))
        let unknown = tracker.delivered(LSN(99))
        #expect(first)
        #expect(!again)
        #expect(!unknown)
        #expect(tracker.inFlight == 1)
        #expect(tracker.event(LSN(1)) == Array("e1".utf8))
        #expect(tracker.event(LSN(0)) == nil)
    }

    @Test func eventsBelowTheCursorCountAsDeliveredAndGapsAreCrossed() {
        var tracker = DeliveryTracker(cursor: LSN(12))
        // The tail hands back the whole record holding the cursor: 10 and 11 were forwarded.
        tracker.sent(lsn: LSN(10), events: Self.events(3), from: LSN(12))
        #expect(tracker.inFlight == 1)
        tracker.delivered(LSN(12))
        #expect(tracker.committable == LSN(13))
        // A failed fsync left LSNs 13..<20 unused; the next segment starts at 20.
        tracker.sent(lsn: LSN(20), events: Self.events(1), from: LSN(13))
        #expect(tracker.committable == LSN(20))
        tracker.delivered(LSN(20))
        #expect(tracker.committable == LSN(21))
    }
}
