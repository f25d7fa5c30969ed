/// What start-up does with each segment file it found, decided from the scans alone.
///
/// The rules live here, apart from the system calls, so each case (a creation cut short, an
/// unreadable file, a torn tail, damage in the middle, a damaged header or footer on the last
/// segment) is checked from hand-built scans; ``WAL`` then carries the plan out in order:
/// unlink, quarantine, copy damage aside, truncate and reopen the active segment.
struct RecoveryPlan: Equatable {
    /// One segment file as start-up read it.
    struct Scanned: Equatable {
        var name: String
        var summary: SegmentSummary
        /// When the segment was created, from its header (zero when the header is damaged).
        var createdNanos: UInt64
        /// Writer tags of the frames read.
        var writerTags: Set<UInt16>
        /// Whether the file is nothing but zeros. Start-up reads this only for a file with an
        /// unreadable header and no intact frame (nil otherwise): the one case it decides.
        var allZeros: Bool?
    }

    /// What happens to one segment file.
    enum Disposition: Equatable {
        /// An unreadable header, no intact frame, nothing but zeros: a segment whose creation
        /// was cut short before any record could be acknowledged in it. Unlinked.
        case removeIncomplete
        /// An unreadable header and no intact frame, but not zeros: moved whole to
        /// `quarantine/`, never read again.
        case quarantine(reason: String)
        /// Kept as it is: sealed, or finished without a footer.
        case keep
        /// The last segment, unsealed, with a damaged header or footer: its records stay
        /// readable where they are, but nothing is appended to it again.
        case closeDamaged
        /// The last segment, unsealed and sound: appends continue in it (see ``active``).
        case reopen
    }

    struct Decision: Equatable {
        var name: String
        var disposition: Disposition
        /// Damaged stretches to copy into `quarantine/` before anything else happens to them.
        var damage: [Damage]
        /// How the segment is listed afterwards; nil when it is removed or quarantined.
        var summary: SegmentSummary?
    }

    /// Bytes after the last whole frame of the active segment: a write cut short by a crash,
    /// never acknowledged, cut off before appending resumes.
    struct TornTail: Equatable {
        var offset: Int64
        var bytes: Int64
        var reason: String
    }

    /// The segment appends continue in.
    struct Active: Equatable {
        var name: String
        /// As listed once reopened (state ``SegmentSummary/State/active``, no torn tail). Its
        /// `fileBytes` is the size before truncation; the truncation and preallocation set it.
        var summary: SegmentSummary
        var createdNanos: UInt64
        /// Tags already used in the segment: this run must stamp another.
        var writerTags: Set<UInt16>
        var tornTail: TornTail?
    }

    /// One per file, oldest first.
    private(set) var decisions: [Decision] = []
    private(set) var active: Active?

    init(_ scans: [Scanned]) {
        for (index, scan) in scans.enumerated() {
            let isLast = index == scans.count - 1
            var summary = scan.summary
            if let headerDamage = summary.headerDamage, summary.records == 0 {
                let disposition: Disposition =
                    scan.allZeros == true ? .removeIncomplete : .quarantine(reason: headerDamage)
                self.decisions.append(Decision(name: scan.name, disposition: disposition, damage: [], summary: nil))
                continue
            }
            let damagedEnds = summary.headerDamage != nil || summary.footerDamage != nil
            let disposition: Disposition
            if !isLast || summary.state == .sealed {
                disposition = .keep
            } else if damagedEnds {
                disposition = .closeDamaged
            } else {
                disposition = .reopen
                let torn = summary.tornTail.map {
                    TornTail(offset: summary.dataEnd, bytes: summary.fileBytes - summary.dataEnd, reason: $0)
                }
                summary.tornTail = nil
                summary.state = .active
                self.active = Active(
                    name: scan.name,
                    summary: summary,
                    createdNanos: scan.createdNanos,
                    writerTags: scan.writerTags,
                    tornTail: torn
                )
            }
            self.decisions.append(
                Decision(name: scan.name, disposition: disposition, damage: scan.summary.damage, summary: summary)
            )
        }
    }

    /// The segments listed after recovery, oldest first.
    var segments: [SegmentSummary] { self.decisions.compactMap(\.summary) }

    /// The LSN after the last event of the segments kept.
    var nextLSN: LSN { self.segments.last?.nextLSN ?? .zero }

    /// Segments read entirely (no footer, or damage found): ``RecoveryReport/scannedSegments``.
    var scannedSegments: [String] {
        self.decisions.compactMap { decision in
            guard let summary = decision.summary else { return nil }
            return summary.state != .sealed || !summary.damage.isEmpty ? decision.name : nil
        }
    }

    /// Segments kept despite a damaged header or footer: ``RecoveryReport/damagedSegments``.
    var damagedSegments: [String] {
        self.decisions.compactMap { decision in
            guard let summary = decision.summary, summary.headerDamage != nil || summary.footerDamage != nil
            else { return nil }
            return decision.name
        }
    }

    /// Files moved whole to `quarantine/`: ``RecoveryReport/quarantinedSegments``.
    var quarantinedSegments: [String] {
        self.decisions.compactMap { decision in
            if case .quarantine = decision.disposition { return decision.name }
            return nil
        }
    }

    /// Every damaged stretch to copy aside, in file order.
    var damage: [Damage] { self.decisions.flatMap(\.damage) }
}
