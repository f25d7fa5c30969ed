/// The segments of the WAL as readers see them, and the durable end of the log.
///
/// A value updated only by the writer's outcomes, in the same terms as ``GroupCommit``: a
/// durable batch (``applied(_:)``) copies the active segment the machine computed for it, a
/// roll seals or abandons the segment the machine closed and lists the new one, and
/// maintenance removes what it deleted. So the active segment has one source of truth (the
/// machine), and the catalog only lags it by the batch being written.
struct Catalog: Equatable {
    /// Oldest first; at most one is ``SegmentSummary/State/active``.
    private(set) var segments: [SegmentSummary]
    /// The LSN after the last durable event.
    private(set) var durableNextLSN: LSN

    init(segments: [SegmentSummary], durableNextLSN: LSN) {
        self.segments = segments
        self.durableNextLSN = durableNextLSN
    }

    /// Bytes the segment files occupy, preallocation included.
    var walBytes: Int64 { self.segments.reduce(0) { $0 + $1.fileBytes } }

    /// The segment appends go to, if one is open.
    var active: SegmentSummary? { self.segments.last { $0.state == .active } }

    /// A batch is durable: its segment now ends where the machine said it would.
    mutating func applied<Item>(_ batch: GroupCommit<Item>.Batch) {
        self.durableNextLSN = max(self.durableNextLSN, batch.nextLSN)
        guard let index = self.segments.lastIndex(where: { $0.firstLSN == batch.segmentFirstLSN }) else { return }
        let segment = batch.segmentAfter
        self.segments[index].nextLSN = segment.nextLSN
        self.segments[index].dataEnd = segment.dataEnd
        self.segments[index].records = segment.records
        if segment.records > 0 {
            self.segments[index].minTimestampNanos = segment.minTimestampNanos
            self.segments[index].maxTimestampNanos = segment.maxTimestampNanos
        }
    }

    /// A new segment `name` starting at `firstLSN` is durable; the previous active segment is
    /// sealed (trimmed to its data and footer) when `sealed`, and left unsealed otherwise (it
    /// was broken: scanned at the next start-up).
    mutating func rolled(
        sealed: Bool,
        name: String,
        firstLSN: LSN,
        fileBytes: Int64,
        dataStart: Int64 = Int64(SegmentHeader.size),
        keyID: String? = nil
    ) {
        if let index = self.segments.firstIndex(where: { $0.state == .active }) {
            self.segments[index].state = sealed ? .sealed : .unsealed
            if sealed {
                self.segments[index].fileBytes = self.segments[index].dataEnd + Int64(SegmentFooter.frameLength)
            }
        }
        self.segments.append(
            SegmentSummary(
                name: name,
                firstLSN: firstLSN,
                nextLSN: firstLSN,
                records: 0,
                dataEnd: dataStart,
                fileBytes: fileBytes,
                minTimestampNanos: nil,
                maxTimestampNanos: nil,
                state: .active,
                damage: [],
                tornTail: nil,
                keyID: keyID
            )
        )
        if self.durableNextLSN < firstLSN { self.durableNextLSN = firstLSN }
    }

    /// Creating a new segment failed: the previous active one, when it was closed, is
    /// finished without a footer.
    mutating func rollFailed(previousClosed: Bool) {
        guard previousClosed, let index = self.segments.firstIndex(where: { $0.state == .active }) else { return }
        self.segments[index].state = .unsealed
    }

    /// Segments starting at `firstLSNs` were unlinked.
    mutating func deleted(_ firstLSNs: [LSN]) {
        self.segments.removeAll { firstLSNs.contains($0.firstLSN) }
    }
}
