import CoreMetrics
import Dispatch
import Logging
import SluiceCore
import Synchronization

/// Consumers' durable positions: one ``CursorFile`` each under `cursors/`. Moving a cursor
/// lets the writer delete the segments every cursor has passed.
extension WAL {
    /// The durable position of cursor `name`, or nil when it does not exist.
    public func cursor(_ name: String) -> CursorPosition? {
        self.cursors.withLock { $0[name]?.position }
    }

    /// All cursors, by name.
    public var cursorPositions: [CursorPosition] {
        self.cursors.withLock { $0.values.map(\.position) }.sorted { $0.name < $1.name }
    }

    /// Returns cursor `name`, creating it at `initialLSN` (default: the oldest LSN still in
    /// the WAL) when it does not exist yet.
    public func openCursor(_ name: String, at initialLSN: LSN? = nil) async throws -> CursorPosition {
        try CursorFile.validate(name: name)
        if let existing = self.cursor(name) { return existing }
        let start = initialLSN ?? self.oldestLSN
        let directory = self.cursorDirectory
        let fileSystem = self.fileSystem
        let now = self.configuration.wallClock()
        return try await offPool {
            try self.cursors.withLock { cursors in
                if let existing = cursors[name] { return existing.position }
                if initialLSN == nil && start > .zero && start < self.durableNextLSN {
                    // Segments below `start` were deleted, which only a consumer's cursor
                    // allows: this cursor existed and its file is gone. Say so: whatever it had
                    // consumed beyond `start` is read (and sent) again.
                    self.logger.warning(
                        "wal.cursor_missing",
                        metadata: [
                            "wal.cursor": "\(name)", "wal.cursor_lsn": "\(start)",
                            "wal.reason":
                                "no cursor file, but segments below LSN \(start) were deleted, so a consumer existed; starting at the oldest LSN still held, events from there on may be sent again",
                        ]
                    )
                }
                try CursorFile.create(directory: directory, name: name, lsn: start, now: now, fileSystem: fileSystem)
                let file = try CursorFile(
                    path: directory + "/" + name + CursorFile.suffix,
                    name: name,
                    fileSystem: fileSystem
                )
                cursors[name] = file
                return file.position
            }
        }
    }

    /// Durably moves cursor `name` to `lsn` (every event below it is consumed), then lets the
    /// writer delete segments all cursors have passed.
    ///
    /// - Throws: ``WALError/Code/notFound`` for an unknown cursor, and
    ///   ``WALError/Code/invalidArgument`` when `lsn` is behind the cursor or past the
    ///   durable end of the WAL.
    public func commitCursor(_ name: String, to lsn: LSN) async throws {
        let durable = self.durableNextLSN
        guard lsn <= durable else {
            throw WALError(.invalidArgument, "cursor \(name) cannot move to \(lsn), past the durable end \(durable)")
        }
        let now = self.configuration.wallClock()
        guard self.shared.withLock({ $0.halted == nil }) else {
            // The directory may be another writer's now: write nothing into it.
            throw WALError(.locked, "cursor \(name) not stored: \(self.unavailableReason ?? "the WAL stopped")")
        }
        let recreated = try await offPool {
            try self.cursors.withLock { cursors -> String? in
                guard var file = cursors[name] else {
                    throw WALError(.notFound, "no cursor named \(name); open it first")
                }
                guard lsn >= file.position.lsn else {
                    throw WALError(
                        .invalidArgument,
                        "cursor \(name) cannot move back from \(file.position.lsn) to \(lsn)"
                    )
                }
                if lsn == file.position.lsn { return nil }
                let problem = try file.store(lsn: lsn, now: now)
                cursors[name] = file
                return problem
            }
        }
        if let recreated {
            self.logger.warning(
                "wal.cursor_file_recreated",
                metadata: ["wal.cursor": "\(name)", "wal.cursor_lsn": "\(lsn)", "wal.reason": "\(recreated)"]
            )
        }
        self.metrics.cursorLSN(name).record(Int64(lsn.rawValue))
        self.requestMaintenance()
    }
}
