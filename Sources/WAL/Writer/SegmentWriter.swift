import Dispatch
import Encryption
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The bytes the writer puts on disk: the active segment's descriptor, frame encoding, segment
/// creation and sealing, and the spare segment zero-filled ahead of time.
///
/// It knows files, not appends: ``GroupCommit`` decides what to write where, ``WAL`` reports
/// the outcomes. So this is the one place a frame codec (compression, encryption) would go.
///
/// Thread rules: everything but the spare is touched only by the writer thread (or by
/// ``WAL/open(_:logger:)`` before ``WAL/start()`` starts that thread), hence `@unchecked Sendable`. The spare
/// is filled on its own queue and its state guarded by a mutex.
final class SegmentWriter: @unchecked Sendable {
    static let spareName = "next-segment.spare"

    /// The next segment, zero-filled ahead of time by a background thread.
    ///
    /// Writing into preallocated-but-unwritten extents makes every `fdatasync` also commit
    /// the file system's extent conversion (a journal write): measured here, it halves the
    /// group-commit rate. Filling the file with zeros first (PostgreSQL's `wal_init_zero`)
    /// makes appends plain overwrites; doing it in the background keeps it off the ack path.
    enum SpareState { case none, preparing, ready }

    let fileSystem: any WALFileSystem
    let directory: String
    let segmentBytes: Int64
    private let logger: Logger
    /// The active segment's descriptor; -1 when none is open.
    private(set) var fd: Int32 = -1
    private(set) var path = ""
    /// The `wal.encryption` keys; new segments are encrypted when it has a current key.
    let keyring: Keyring?
    /// The active segment's data key, when its records are encrypted.
    private(set) var cipher: RecordCipher?
    private var buffer: [UInt8] = []
    /// This run's writer tag, stamped into every frame (see ``FrameHeader/writerTag``).
    var tag: UInt16 = 1
    /// Segment creations that failed since the last one that worked, and since the last
    /// log line about them: a full disk fails every append's roll, and one `error` line
    /// per refused request would flood the log.
    var failedRolls = 0
    var failedRollsUnlogged = 0
    var failedRollLoggedAt: UInt64 = 0
    private let spare = Mutex<SpareState>(.none)
    private let preparer = DispatchQueue(label: "sluice.wal.segment-preparer")

    init(fileSystem: any WALFileSystem, directory: String, segmentBytes: Int64, keyring: Keyring? = nil, logger: Logger)
    {
        self.keyring = keyring
        self.fileSystem = fileSystem
        self.directory = directory
        self.segmentBytes = segmentBytes
        self.logger = logger
    }

    var isOpen: Bool { self.fd >= 0 }

    /// Removes a spare an earlier run left behind: it may be half-filled.
    func removeLeftoverSpare() {
        let path = self.directory + "/" + Self.spareName
        if self.fileSystem.fileExists(path) { try? self.fileSystem.unlink(path) }
    }

    /// Bytes a frame adds to its payload: the authentication tag when new segments are
    /// encrypted.
    var payloadOverhead: Int { self.keyring?.current == nil ? 0 : Sealing.tagBytes }

    /// Makes `fd` (recovery reopened and locked it) the active segment, whose records are
    /// sealed under `cipher` when it is encrypted.
    func adopt(fd: Int32, path: String, cipher: RecordCipher?) {
        self.fd = fd
        self.path = path
        self.cipher = cipher
    }

    /// Closes the active segment, after an `fdatasync` when `sync` (a tidy close: every
    /// batch was already synced).
    func closeSegment(sync: Bool = false) {
        guard self.fd >= 0 else { return }
        if sync { try? self.fileSystem.fdatasync(self.fd, path: self.path) }
        self.fileSystem.close(self.fd)
        self.fd = -1
        self.cipher = nil
    }

    /// Encodes `batch` into frames and writes them at its offset of the active segment. Not
    /// durable until ``sync()``.
    func write(_ batch: GroupCommit<WAL.PendingAppend>.Batch) throws {
        let buffer = try self.encode(batch)
        try buffer.withUnsafeBytes { try self.fileSystem.pwrite(self.fd, $0, at: batch.offset, path: self.path) }
    }

    /// `fdatasync` of the active segment.
    func sync() throws {
        try self.fileSystem.fdatasync(self.fd, path: self.path)
    }

    private func encode(_ batch: GroupCommit<WAL.PendingAppend>.Batch) throws -> [UInt8] {
        var buffer = self.buffer
        buffer.removeAll(keepingCapacity: true)
        buffer.reserveCapacity(batch.length)
        if let cipher = self.cipher {
            try self.seal(batch, with: cipher, into: &buffer)
            self.buffer = buffer
            return buffer
        }
        for record in batch.records {
            let payload = record.item.payload
            let header = FrameHeader(
                payloadLength: UInt32(payload.count),
                payloadCRC: record.item.payloadCRC,
                lsn: record.lsn,
                timestampNanos: batch.timestampNanos,
                eventCount: record.eventCount,
                type: .data,
                writerTag: self.tag
            )
            let start = buffer.count
            buffer.append(contentsOf: repeatElement(0, count: FrameHeader.size))
            buffer.withUnsafeMutableBytes { raw in
                header.write(into: UnsafeMutableRawBufferPointer(rebasing: raw[start..<start + FrameHeader.size]))
            }
            buffer.append(contentsOf: payload)
            buffer.append(contentsOf: repeatElement(0, count: record.frameLength - FrameHeader.size - payload.count))
        }
        self.buffer = buffer
        return buffer
    }

    /// Batches of at least this many payload bytes are sealed on every core: AES-GCM and the
    /// CRC are the writer thread's serial work, and the appenders wait for this batch anyway.
    static let parallelSealingBytes = 256 << 10

    /// Every record of `batch` sealed straight into its frame in `buffer`.
    ///
    /// The header's LSN, time, count and tag are bound in (and give the nonce); the frame's
    /// length and CRC then describe the sealed bytes, which is what a reader checks for torn
    /// writes before it decrypts. Each record touches only its own frame, so a large batch is
    /// sealed on every core.
    private func seal(
        _ batch: GroupCommit<WAL.PendingAppend>.Batch,
        with cipher: RecordCipher,
        into buffer: inout [UInt8]
    ) throws {
        let records = batch.records
        var starts: [Int] = []
        starts.reserveCapacity(records.count)
        var total = 0
        var payloadBytes = 0
        for record in records {
            starts.append(total)
            total += record.frameLength
            payloadBytes += record.item.payload.count
        }
        buffer.append(contentsOf: repeatElement(0, count: total))
        let offsets = starts
        let (timestamp, tag) = (batch.timestampNanos, self.tag)
        let payloads = records.map(\.item.payload)
        let lsns = records.map(\.lsn)
        let counts = records.map(\.eventCount)
        let failed = Atomic<Int>(-1)
        buffer.withUnsafeMutableBytes { raw in
            nonisolated(unsafe) let base = raw.baseAddress!
            let sealOne: @Sendable (Int) -> Void = { index in
                var header = FrameHeader(
                    payloadLength: 0,
                    payloadCRC: 0,
                    lsn: lsns[index],
                    timestampNanos: timestamp,
                    eventCount: counts[index],
                    type: .data,
                    writerTag: tag
                )
                let frame = base + offsets[index]
                let body = (frame + FrameHeader.size).assumingMemoryBound(to: UInt8.self)
                let sealedCount = payloads[index].count + Sealing.tagBytes
                guard payloads[index].withUnsafeBytes({ cipher.seal($0, header: header, into: body) }) else {
                    failed.store(index, ordering: .relaxed)
                    return
                }
                header.payloadLength = UInt32(sealedCount)
                header.payloadCRC = CRC32C.checksum(UnsafeRawBufferPointer(start: body, count: sealedCount))
                header.write(into: UnsafeMutableRawBufferPointer(start: frame, count: FrameHeader.size))
            }
            if records.count < 2 || payloadBytes < Self.parallelSealingBytes {
                for index in records.indices { sealOne(index) }
            } else {
                DispatchQueue.concurrentPerform(iterations: records.count, execute: sealOne)
            }
        }
        let index = failed.load(ordering: .relaxed)
        guard index < 0 else { throw WALError(.io, "encrypting the record at LSN \(lsns[index]) failed") }
    }

    /// Writes the footer of the active segment and trims the preallocated space. A failure
    /// leaves the segment unsealed, which costs one scan at the next start-up and nothing else.
    func seal(_ segment: GroupCommit<WAL.PendingAppend>.ActiveSegment) throws {
        let footer = segment.footer.encodedFrame()
        try footer.withUnsafeBytes { try self.fileSystem.pwrite(self.fd, $0, at: segment.dataEnd, path: self.path) }
        try self.fileSystem.truncate(self.fd, to: segment.dataEnd + Int64(footer.count), path: self.path)
        try self.fileSystem.fdatasync(self.fd, path: self.path)
    }

    /// Creates the segment starting at `firstLSN` (from the spare when one is ready),
    /// preallocated, with its header and directory entry durable, and makes it the active one.
    /// Returns its name and where its frames start (after a longer header when it is
    /// encrypted). On failure nothing is left behind and no segment is open.
    func create(firstLSN: LSN, now: UInt64) throws -> (name: String, dataStart: Int64) {
        let name = SegmentName.make(firstLSN)
        let path = self.directory + "/" + name
        var created = false
        do {
            let fd: Int32
            if self.takeSpare() {
                try self.fileSystem.rename(self.directory + "/" + Self.spareName, to: path)
                created = true
                fd = try self.fileSystem.open(path, flags: O_RDWR, mode: 0)
            } else {
                fd = try self.fileSystem.open(path, flags: O_RDWR | O_CREAT | O_EXCL, mode: 0o600)
                created = true
                // Preallocating moves ENOSPC to this clean point, before any append depends on it.
                try self.fileSystem.allocate(fd, offset: 0, length: self.segmentBytes, path: path)
            }
            self.fd = fd
            self.path = path
            try self.fileSystem.tryLock(fd, path: path)
            let writerID = UInt64.random(in: 1...UInt64.max)
            let encryption: (RecordCipher, SegmentHeader.KeyBlock)?
            do {
                encryption = try RecordCipher.forNewSegment(
                    keyring: self.keyring,
                    firstLSN: firstLSN,
                    writerID: writerID
                )
            } catch {
                throw WALError(.io, "making the data key of \(name) failed")
            }
            let header = SegmentHeader(
                firstLSN: firstLSN,
                createdNanos: now,
                writerID: writerID,
                keyBlock: encryption?.1
            )
            try header.encoded().withUnsafeBytes { try self.fileSystem.pwrite(fd, $0, at: 0, path: path) }
            try self.fileSystem.fdatasync(fd, path: path)
            try self.fileSystem.syncDirectory(self.directory)
            self.cipher = encryption?.0
            return (name, Int64(header.dataStart))
        } catch {
            self.closeSegment()
            if created { try? self.fileSystem.unlink(path) }
            throw (error as? WALError) ?? WALError(.io, "creating \(path) failed")
        }
    }

    // MARK: - The spare segment

    /// Disk the spare takes (or is about to): it counts against the budget.
    var spareBytes: Int64 {
        self.spare.withLock { if case .none = $0 { 0 } else { self.segmentBytes } }
    }

    private func takeSpare() -> Bool {
        self.spare.withLock { state in
            guard case .ready = state else { return false }
            state = .none
            return true
        }
    }

    /// Starts zero-filling the next segment in the background unless one is ready or under
    /// way. The caller decides whether there is room for one.
    func requestSpare() {
        let start = self.spare.withLock { state -> Bool in
            guard case .none = state else { return false }
            state = .preparing
            return true
        }
        guard start else { return }
        self.preparer.async { self.prepareSpare() }
    }

    /// Returns once no spare is being prepared.
    func waitForSpare() {
        self.preparer.sync {}
    }

    private func prepareSpare() {
        let path = self.directory + "/" + Self.spareName
        let size = self.segmentBytes
        let chunk = 1 << 20
        let zeros = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        zeros.initializeMemory(as: UInt8.self, repeating: 0)
        defer { zeros.deallocate() }
        var fd: Int32 = -1
        do {
            if self.fileSystem.fileExists(path) { try self.fileSystem.unlink(path) }
            // Buffered on purpose: O_DIRECT zeros were measured slower, because the appends'
            // partial-page writes then read the pages back from disk first.
            fd = try self.fileSystem.open(path, flags: O_RDWR | O_CREAT | O_EXCL, mode: 0o600)
            try self.fileSystem.allocate(fd, offset: 0, length: size, path: path)
            var offset: Int64 = 0
            while offset < size {
                let count = Int(min(Int64(chunk), size - offset))
                try self.fileSystem.pwrite(
                    fd,
                    UnsafeRawBufferPointer(rebasing: zeros[0..<count]),
                    at: offset,
                    path: path
                )
                offset += Int64(count)
            }
            try self.fileSystem.fdatasync(fd, path: path)
            self.fileSystem.close(fd)
            self.spare.withLock { $0 = .ready }
        } catch {
            if fd >= 0 { self.fileSystem.close(fd) }
            try? self.fileSystem.unlink(path)
            self.spare.withLock { $0 = .none }
            self.logger.debug("wal.spare_segment_failed", metadata: ["error": "\(error)"])
        }
    }
}
