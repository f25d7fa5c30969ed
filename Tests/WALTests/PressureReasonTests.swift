import Testing

@testable import WAL

/// The words behind a pressure level: what an operator must free or change.
@Suite struct PressureReasonTests {
    let budget = DiskBudget(maxBytes: 1000, softFraction: 0.8, hardFraction: 0.95, minFreeBytes: 100)

    @Test func normalPressureHasNoReason() {
        #expect(self.budget.pressureReason(walBytes: 10, volumeAvailable: 10_000) == nil)
    }

    @Test func aSmallVolumeIsNamedAsSuchWhenTheWALIsEmpty() {
        let reason = self.budget.pressureReason(walBytes: 0, volumeAvailable: 50)
        #expect(reason == "free space on the volume (50 bytes) is below wal.min_free_bytes (100)")
        #expect(self.budget.pressureReason(walBytes: 0, volumeAvailable: 150)?.contains("twice") == true)
    }

    @Test func aFullBudgetIsNamedAsSuch() {
        #expect(
            self.budget.pressureReason(walBytes: 960, volumeAvailable: 10_000)
                == "the WAL holds 960 bytes, over 95 % of wal.max_bytes (1000)"
        )
        let both = self.budget.pressureReason(walBytes: 960, volumeAvailable: 50)
        #expect(both?.contains("free space") == true && both?.contains("the WAL holds") == true)
    }

    @Test func theWritersSettingsRoundTrip() {
        let settings = WriterSettings(pid: 42, segmentBytes: 1 << 20, budget: self.budget, openedNanos: 7)
        #expect(WriterSettings.decode(settings.encoded()) == settings)
        #expect(WriterSettings.decode("{\"pid\":1}") == nil)
    }
}
