import Testing

@testable import WAL

/// Start-up decisions from hand-built scans: no files, no system calls.
@Suite struct RecoveryPlanTests {
    /// A scan of segment `first..<next` holding `records` records, as the footer or a full
    /// read found it.
    static func scan(
        _ first: UInt64,
        _ next: UInt64,
        state: SegmentSummary.State,
        records: UInt64? = nil,
        dataEnd: Int64 = 4096,
        fileBytes: Int64 = 65536,
        tornTail: String? = nil,
        damage: [Damage] = [],
        headerDamage: String? = nil,
        footerDamage: String? = nil,
        writerTags: Set<UInt16> = [7],
        allZeros: Bool? = nil
    ) -> RecoveryPlan.Scanned {
        let name = SegmentName.make(LSN(first))
        return RecoveryPlan.Scanned(
            name: name,
            summary: SegmentSummary(
                name: name,
                firstLSN: LSN(first),
                nextLSN: LSN(next),
                records: records ?? (next - first),
                dataEnd: dataEnd,
                fileBytes: fileBytes,
                minTimestampNanos: next > first ? 100 : nil,
                maxTimestampNanos: next > first ? 200 : nil,
                state: state,
                damage: damage,
                tornTail: tornTail,
                headerDamage: headerDamage,
                footerDamage: footerDamage
            ),
            createdNanos: 50,
            writerTags: writerTags,
            allZeros: allZeros
        )
    }

    static func damage(in first: UInt64, lost: UInt64) -> Damage {
        Damage(
            segment: SegmentName.make(LSN(first)),
            startOffset: 200,
            endOffset: 300,
            firstLostLSN: LSN(lost),
            resumeLSN: LSN(lost + 1),
            reason: "payload checksum mismatch"
        )
    }

    @Test func anEmptyDirectoryStartsAtLSNZeroWithNothingToDo() {
        let plan = RecoveryPlan([])
        #expect(plan.decisions.isEmpty)
        #expect(plan.active == nil)
        #expect(plan.nextLSN == .zero)
    }

    @Test func sealedSegmentsAreKeptFromTheirFootersAndTheUnsealedLastOneIsReopened() throws {
        let plan = RecoveryPlan([
            Self.scan(0, 10, state: .sealed),
            Self.scan(10, 25, state: .sealed),
            Self.scan(25, 30, state: .unsealed, dataEnd: 1000, writerTags: [3, 9]),
        ])
        #expect(plan.decisions.map(\.disposition) == [.keep, .keep, .reopen])
        #expect(plan.segments.map(\.state) == [.sealed, .sealed, .active])
        #expect(plan.nextLSN == LSN(30))
        // Only the one without a footer had to be read whole.
        #expect(plan.scannedSegments == [SegmentName.make(LSN(25))])
        #expect(plan.damagedSegments.isEmpty && plan.quarantinedSegments.isEmpty && plan.damage.isEmpty)
        let active = try #require(plan.active)
        #expect(active.name == SegmentName.make(LSN(25)))
        #expect(active.summary.dataEnd == 1000)
        #expect(active.summary.state == .active)
        #expect(active.createdNanos == 50)
        #expect(active.writerTags == [3, 9])
        #expect(active.tornTail == nil)
    }

    @Test func aTornTailOfTheLastSegmentIsCutOffAtItsLastWholeFrame() throws {
        let plan = RecoveryPlan([
            Self.scan(0, 5, state: .unsealed, dataEnd: 700, fileBytes: 65536, tornTail: "frame checksum mismatch")
        ])
        let active = try #require(plan.active)
        #expect(
            active.tornTail == RecoveryPlan.TornTail(offset: 700, bytes: 65536 - 700, reason: "frame checksum mismatch")
        )
        #expect(active.summary.tornTail == nil)
        #expect(plan.segments.first?.tornTail == nil)
        // A torn tail is never damage: nothing there was acknowledged.
        #expect(plan.damage.isEmpty)
        #expect(plan.nextLSN == LSN(5))
    }

    @Test func anUnsealedSegmentBeforeTheLastIsKeptAndNeverReopened() {
        let plan = RecoveryPlan([
            Self.scan(0, 10, state: .unsealed),
            Self.scan(10, 12, state: .unsealed),
        ])
        #expect(plan.decisions.map(\.disposition) == [.keep, .reopen])
        #expect(plan.segments.map(\.state) == [.unsealed, .active])
        #expect(plan.active?.summary.firstLSN == LSN(10))
    }

    @Test func anAllZeroFileWithoutAHeaderIsACreationCutShortAndIsRemoved() {
        let plan = RecoveryPlan([
            Self.scan(0, 10, state: .unsealed),
            Self.scan(10, 10, state: .unsealed, headerDamage: "bad magic", allZeros: true),
        ])
        #expect(plan.decisions.map(\.disposition) == [.keep, .removeIncomplete])
        // The last file is gone, so the one before stays finished: the next append rolls.
        #expect(plan.active == nil)
        #expect(plan.segments.map(\.state) == [.unsealed])
        #expect(plan.nextLSN == LSN(10))
        #expect(plan.quarantinedSegments.isEmpty)
    }

    @Test func anUnreadableFileWithoutOneIntactFrameIsQuarantinedWhole() {
        let plan = RecoveryPlan([
            Self.scan(0, 0, state: .unsealed, headerDamage: "header checksum mismatch", allZeros: false)
        ])
        #expect(plan.decisions.map(\.disposition) == [.quarantine(reason: "header checksum mismatch")])
        #expect(plan.quarantinedSegments == [SegmentName.make(.zero)])
        #expect(plan.segments.isEmpty)
        #expect(plan.active == nil)
        #expect(plan.nextLSN == .zero)
    }

    @Test func aLastSegmentWithADamagedHeaderOrFooterStaysReadableButClosed() {
        for scan in [
            Self.scan(0, 8, state: .unsealed, headerDamage: "header checksum mismatch"),
            Self.scan(0, 8, state: .unsealed, footerDamage: "footer damaged"),
        ] {
            let plan = RecoveryPlan([scan])
            #expect(plan.decisions.map(\.disposition) == [.closeDamaged])
            #expect(plan.active == nil)
            #expect(plan.segments.map(\.state) == [.unsealed])
            #expect(plan.damagedSegments == [SegmentName.make(.zero)])
            #expect(plan.nextLSN == LSN(8))
        }
    }

    @Test func damageFoundAnywhereIsCopiedAsideAndItsSegmentKept() {
        let sealedDamage = Self.damage(in: 0, lost: 4)
        let activeDamage = Self.damage(in: 10, lost: 12)
        let plan = RecoveryPlan([
            Self.scan(0, 10, state: .sealed, damage: [sealedDamage]),
            Self.scan(10, 20, state: .unsealed, damage: [activeDamage]),
        ])
        #expect(plan.decisions.map(\.disposition) == [.keep, .reopen])
        #expect(plan.damage == [sealedDamage, activeDamage])
        // A sealed segment with damage was read whole to find it.
        #expect(plan.scannedSegments == [SegmentName.make(.zero), SegmentName.make(LSN(10))])
        #expect(plan.active?.tornTail == nil)
    }
}
