import Foundation

extension LedgerBook.Missing {
    /// `gw-a LSN 1200..<1205 (5 events): events/1 offsets 300..<305`.
    public var description: String {
        let lsns = self.lsns.map(LedgerBook.text).joined(separator: ", ")
        let places = self.offsets.keys.sorted().map { place in
            "\(place.description) offsets \((self.offsets[place] ?? []).map(LedgerBook.text).joined(separator: ", "))"
        }
        let gateway = self.gateway.isEmpty ? "(no gateway id)" : self.gateway
        return
            "\(gateway) LSN \(lsns) (\(self.count) event\(self.count == 1 ? "" : "s")): \(places.joined(separator: "; "))"
    }
}

extension LedgerBook {
    static func text<Bound: FixedWidthInteger>(_ run: Range<Bound>) -> String {
        run.count == 1 ? "\(run.lowerBound)" : "\(run.lowerBound)..<\(run.upperBound)"
    }

    /// What `sluice audit` prints: each hop's counts, then what does not add up.
    public func report(_ reconciliation: Reconciliation, topic: String) -> String {
        var lines: [String] = []
        let span: String
        if let first = self.firstMillis, let last = self.lastMillis {
            span = "from \(Self.iso(first)) to \(Self.iso(last))"
        } else {
            span = "none yet"
        }
        lines.append("ledger \(topic): \(self.records) records, \(span)")
        lines.append("")
        lines.append("WAL -> Kafka (each gateway's forwarder):")
        if self.gateways.isEmpty { lines.append("  no gateway has recorded anything in this window") }
        for gateway in self.gateways.keys.sorted() {
            guard let hop = self.gateways[gateway] else { continue }
            let inWAL = reconciliation.inWAL[gateway] ?? 0
            lines.append(
                "  \(gateway.isEmpty ? "(no gateway id)" : gateway): accepted \(hop.accepted.count) LSNs"
                    + " · forwarded over \(hop.forwarded.count) · placed \(hop.placed) messages"
                    + " · dead-lettered \(hop.deadLettered) · quarantined \(hop.quarantined.count)"
                    + " · still in the WAL ≤ \(inWAL)"
            )
        }
        lines.append("")
        lines.append("Kafka -> ClickHouse (the loaders):")
        if self.partitions.isEmpty { lines.append("  no partition has recorded anything in this window") }
        for place in self.partitions.keys.sorted() {
            guard let hop = self.partitions[place] else { continue }
            let gaps = hop.gaps
            let gapText =
                gaps.isEmpty
                ? "no gaps"
                : "gaps at offsets \(gaps.runs.map(Self.text).joined(separator: ", ")) (\(gaps.count))"
            lines.append(
                "  \(place.description): placed \(hop.placed) · rows \(hop.rows)"
                    + (hop.tables.isEmpty ? "" : " into \(hop.tables.sorted().joined(separator: ", "))")
                    + " · dead letters \(hop.deadLetters) · erased \(hop.erased)"
                    + " · loaded to offset \(hop.loadedTo) · \(gapText)"
            )
        }
        lines.append("")
        lines.append("on their way: \(reconciliation.inKafka) events in Kafka not loaded yet")
        if self.foundInClickHouse > 0 {
            lines.append(
                "found in ClickHouse by identity: \(self.foundInClickHouse) events no loaded record lists"
                    + " (a loader stopped between its offset commit and the ledger's delivery)"
            )
        }
        if reconciliation.unaccounted == 0 {
            lines.append("unaccounted: 0 events")
        } else {
            lines.append(
                "UNACCOUNTED: \(reconciliation.unaccounted) events acknowledged to clients are neither in ClickHouse,"
                    + " nor in a dead-letter topic, nor on their way (the loaders moved past them):"
            )
            for missing in reconciliation.missing { lines.append("  \(missing.description)") }
        }
        return lines.joined(separator: "\n")
    }

    static func iso(_ millis: Int64) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.string(from: Date(timeIntervalSince1970: Double(millis) / 1000))
    }
}
