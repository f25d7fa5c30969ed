#if canImport(Glibc)
import Glibc
#endif

/// One cursor file: two 64-byte slots, written alternately, each with its own CRC32C.
///
/// A store overwrites the slot holding the older generation and `fdatasync`s; a torn write
/// can only damage that slot, so the other still holds the previous position. This needs no
/// rename or directory fsync on the hot path. The file itself is created through a temporary
/// file, `rename` and a directory fsync: once, and again whenever a store finds that the file
/// it holds open is no longer the one at its path (deleted or replaced while running), so a
/// lost cursor file costs at most one commit interval, not a resend of the whole WAL.
///
/// ```
/// 0 magic "SLCURSOR"  8 version u16  10 reserved (6)  16 generation u64  24 LSN u64
/// 32 updated (unix ns) u64  40 reserved (20)  60 CRC32C of bytes 0..<60
/// ```
struct CursorFile {
    static let slotSize = 64
    static let magic: [UInt8] = Array("SLCURSOR".utf8)
    static let suffix = ".cursor"

    /// Cursor names become file names: keep them boring.
    static func validate(name: String) throws {
        let allowed = name.utf8.allSatisfy { byte in
            (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
                || byte == 0x2D || byte == 0x5F
        }
        guard !name.isEmpty, name.utf8.count <= 64, allowed else {
            throw WALError(
                .invalidArgument,
                "cursor name '\(name)' must be 1-64 characters of A-Z, a-z, 0-9, '-' or '_'"
            )
        }
    }

    static func encodeSlot(generation: UInt64, lsn: LSN, updatedNanos: UInt64) -> [UInt8] {
        var slot = [UInt8](repeating: 0, count: Self.slotSize)
        for (index, byte) in Self.magic.enumerated() { slot[index] = byte }
        slot.store(UInt16(1), at: 8)
        slot.store(generation, at: 16)
        slot.store(lsn.rawValue, at: 24)
        slot.store(updatedNanos, at: 32)
        slot.store(CRC32C.checksum(Array(slot[0..<60])), at: 60)
        return slot
    }

    static func decodeSlot(_ slot: ArraySlice<UInt8>, name: String) -> CursorPosition? {
        guard slot.count == Self.slotSize else { return nil }
        let bytes = Array(slot)
        guard Array(bytes[0..<8]) == Self.magic else { return nil }
        return bytes.withUnsafeBytes { raw in
            guard CRC32C.checksum(UnsafeRawBufferPointer(rebasing: raw[0..<60])) == raw.load(UInt32.self, at: 60),
                raw.load(UInt16.self, at: 8) == 1
            else { return nil }
            return CursorPosition(
                name: name,
                lsn: LSN(raw.load(UInt64.self, at: 24)),
                generation: raw.load(UInt64.self, at: 16),
                updatedNanos: raw.load(UInt64.self, at: 32)
            )
        }
    }

    /// The position held by a cursor file's bytes: the valid slot with the highest generation.
    static func decode(_ bytes: [UInt8], name: String) -> CursorPosition? {
        let slots = [0, 1].compactMap { index -> CursorPosition? in
            let start = index * Self.slotSize
            guard bytes.count >= start + Self.slotSize else { return nil }
            return Self.decodeSlot(bytes[start..<start + Self.slotSize], name: name)
        }
        return slots.max(by: { $0.generation < $1.generation })
    }

    /// Reads a cursor without opening it for writing (safe beside a live writer).
    static func read(path: String, name: String, fileSystem: any WALFileSystem) throws -> CursorPosition {
        let fd = try fileSystem.open(path, flags: O_RDONLY, mode: 0)
        defer { fileSystem.close(fd) }
        var bytes = [UInt8](repeating: 0, count: 2 * Self.slotSize)
        let count = try bytes.withUnsafeMutableBytes { try fileSystem.pread(fd, into: $0, at: 0, path: path) }
        guard let position = Self.decode(Array(bytes[0..<count]), name: name) else {
            throw WALError(.corruptSegment, "cursor file \(path) has no valid slot")
        }
        return position
    }

    /// Creates a cursor file atomically: temp file, fdatasync, rename, directory fsync.
    static func create(
        directory: String,
        name: String,
        lsn: LSN,
        now: UInt64,
        generation: UInt64 = 1,
        fileSystem: any WALFileSystem
    ) throws {
        // Generation g lives in slot (g + 1) % 2, as in ``store(lsn:now:)``.
        let slot = Self.encodeSlot(generation: generation, lsn: lsn, updatedNanos: now)
        let empty = [UInt8](repeating: 0, count: Self.slotSize)
        try fileSystem.replaceFile(
            directory + "/" + name + Self.suffix,
            with: generation % 2 == 1 ? slot + empty : empty + slot,
            in: directory,
            durable: true
        )
    }

    let path: String
    private(set) var fd: Int32
    private(set) var position: CursorPosition
    private let fileSystem: any WALFileSystem

    /// Opens an existing cursor file for updates.
    init(path: String, name: String, fileSystem: any WALFileSystem) throws {
        self.position = try Self.read(path: path, name: name, fileSystem: fileSystem)
        self.fd = try fileSystem.open(path, flags: O_RDWR, mode: 0)
        self.path = path
        self.fileSystem = fileSystem
    }

    /// Durably moves the cursor to `lsn`; on error the previous position still holds.
    ///
    /// - Returns: nil normally; when the file at ``path`` was not the one held open (deleted
    ///   or replaced), why, after writing a new file there holding `lsn`.
    @discardableResult
    mutating func store(lsn: LSN, now: UInt64) throws -> String? {
        let generation = self.position.generation + 1
        if let problem = self.pathProblem() {
            let directory = String(self.path[..<(self.path.lastIndex(of: "/") ?? self.path.startIndex)])
            try Self.create(
                directory: directory.isEmpty ? "." : directory,
                name: self.position.name,
                lsn: lsn,
                now: now,
                generation: generation,
                fileSystem: self.fileSystem
            )
            let fd = try self.fileSystem.open(self.path, flags: O_RDWR, mode: 0)
            self.fileSystem.close(self.fd)
            self.fd = fd
            self.position.generation = generation
            self.position.lsn = lsn
            self.position.updatedNanos = now
            return problem
        }
        let slot = Self.encodeSlot(generation: generation, lsn: lsn, updatedNanos: now)
        // Generation g lives in slot (g + 1) % 2: the new one never overwrites the current one.
        let offset = Int64(((generation + 1) % 2) * UInt64(Self.slotSize))
        try slot.withUnsafeBytes { try self.fileSystem.pwrite(self.fd, $0, at: offset, path: self.path) }
        try self.fileSystem.fdatasync(self.fd, path: self.path)
        self.position.generation = generation
        self.position.lsn = lsn
        self.position.updatedNanos = now
        return nil
    }

    /// Why the descriptor no longer backs the path (an `fstat` and a `stat`, once per store,
    /// which the forwarder makes every commit interval), or nil.
    private func pathProblem() -> String? {
        guard let held = try? self.fileSystem.identity(of: self.fd, path: self.path) else { return nil }
        guard let current = try? self.fileSystem.identity(atPath: self.path) else {
            return "\(self.path) was deleted while in use"
        }
        if !current.isSameFile(as: held) { return "\(self.path) was replaced by another file while in use" }
        if held.links == 0 { return "\(self.path) was deleted while in use" }
        return nil
    }

    func close() { self.fileSystem.close(self.fd) }
}
