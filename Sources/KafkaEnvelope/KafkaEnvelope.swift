import CLZ4
import COpenSSLCrypto
import Crypto
import Encryption
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The envelope the forwarder puts a Kafka message's value in when `kafka.encryption` has a
/// current key, and the loader takes it out of: brokers, their disks, `kcat` and the
/// dead-letter topics only ever hold ciphertext.
///
/// A sealed message carries two headers, `sluice-enc: v1` and `sluice-kid: <key id>`, and its
/// value is
///
///     hour (4 bytes, big-endian: hours since 1970-01-01T00:00Z)
///     nonce (12 random bytes)
///     AES-256-GCM ciphertext of the body
///     tag (16 bytes)
///
/// where the body is a codec byte (0: stored as is, 1: an LZ4 block), the event's length
/// (4 bytes, big-endian) and the event, compressed or not. Compression comes first because
/// ciphertext does not compress: the producer's own batch compression is useless on it.
///
/// The data key is `HKDF-SHA256(key, salt: "sluice-kafka-v1", info: topic ‖ 0 ‖ hour)`: a new
/// one every hour and topic, derived (nothing to distribute or store), so no single key sees
/// more random nonces than AES-GCM allows (2³² per key; an hour at 100,000 msg/s is 3.6·10⁸).
/// The additional data binds the envelope's headers, the topic and the hour: a message moved
/// to another topic, or relabelled with another key id, fails authentication.
///
/// Headers other than the two above, and the message key (`user_id`, which partitions), stay
/// in plaintext: see docs/security.md.
package enum KafkaEnvelope {
    /// The header that marks a sealed value, and its value.
    package static let versionHeader = "sluice-enc"
    package static let version: StaticString = "v1"
    /// The header that names the key (a `kafka.encryption` key id).
    package static let keyIDHeader = "sluice-kid"
    /// Where the keys are configured, for the errors that name a missing one.
    package static let configurationPrefix = "kafka.encryption"

    static let hourBytes = 4
    static let nonceBytes = 12
    static let tagBytes = 16
    static let bodyHeaderBytes = 5
    /// Bytes a value grows by at most, besides LZ4's own worst case.
    package static let overheadBytes = hourBytes + nonceBytes + tagBytes + bodyHeaderBytes
    /// The largest event the loader decompresses: a bound on what a (key-holding) writer can
    /// make it allocate. The gateway's own limits are far below.
    package static let maximumEventBytes = 64 << 20

    enum Codec: UInt8 {
        case stored = 0
        case lz4 = 1
    }

    /// The current hour, as the envelope stores it.
    package static func currentHour() -> UInt32 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return UInt32(clamping: now.tv_sec / 3600)
    }

    package static func dataKey(_ key: SymmetricKey, topic: String, hour: UInt32) -> SymmetricKey {
        var info = Array(topic.utf8)
        info.append(0)
        Self.appendBigEndian(hour, to: &info)
        return HKDF<SHA256>.deriveKey(
            inputKeyMaterial: key,
            salt: Array("sluice-kafka-v1".utf8),
            info: info,
            outputByteCount: 32
        )
    }

    package static func additionalData(keyID: String, topic: String, hour: UInt32) -> [UInt8] {
        var bytes = Array("\(Self.versionHeader):\(Self.version)\u{0}\(Self.keyIDHeader):\(keyID)\u{0}".utf8)
        bytes += Array(topic.utf8)
        bytes.append(0)
        Self.appendBigEndian(hour, to: &bytes)
        return bytes
    }

    static func appendBigEndian(_ value: UInt32, to bytes: inout [UInt8]) {
        for shift in stride(from: 24, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: value >> shift)) }
    }

    static func bigEndian(_ bytes: some Collection<UInt8>) -> UInt32 {
        bytes.reduce(0) { $0 << 8 | UInt32($1) }
    }
}

/// A derived data key, the additional data that goes with it, and its AES-256-GCM cipher
/// contexts (for one topic and hour).
final class DataKey: Sendable {
    let additionalData: [UInt8]
    private let contexts: GCMContextPool

    init(key: SymmetricKey, additionalData: [UInt8], encrypting: Bool) {
        self.additionalData = additionalData
        self.contexts = GCMContextPool(key: key, encrypting: encrypting)
    }

    /// Runs `body` with a context of this key to itself; nil when OpenSSL cannot make one.
    func withContext<R>(_ body: (GCMContext) throws -> R) rethrows -> R? {
        try self.contexts.withContext(body)
    }
}

/// The last few data keys derived, so that HKDF runs once per topic and hour, not per message.
final class DataKeyCache: Sendable {
    struct Name: Hashable {
        var keyID: String
        var topic: String
        var hour: UInt32
    }

    private let keys = Mutex<[Name: DataKey]>([:])
    /// Topics × hours × key ids in use at once stay far below; a loader replaying a long
    /// backlog just derives again.
    private static let capacity = 1024

    func key(_ name: Name, derive: () -> DataKey) -> DataKey {
        if let key = self.keys.withLock({ $0[name] }) { return key }
        let key = derive()
        self.keys.withLock { keys in
            if keys.count >= Self.capacity { keys.removeAll(keepingCapacity: true) }
            keys[name] = key
        }
        return key
    }
}

/// What one seal needs besides the key, kept between messages: LZ4's hash table (resetting it
/// is cheaper than setting one up per message), a buffer for the body, and random bytes for
/// nonces, drawn from OpenSSL's CSPRNG 4 KiB at a time (one `getrandom` system call per
/// message, swift-crypto's way, cost a fifth of the envelope). Used only under the sealer's
/// lock (hence `@unchecked Sendable`).
final class SealingScratch: @unchecked Sendable {
    private let stream: UnsafeMutablePointer<LZ4_stream_t>
    private var body: UnsafeMutableRawBufferPointer
    private let random: UnsafeMutableRawBufferPointer
    private var randomUsed: Int

    init() {
        self.stream = LZ4_createStream()
        self.body = .allocate(byteCount: 4096, alignment: 16)
        self.random = .allocate(byteCount: 4096, alignment: 16)
        self.randomUsed = 4096
    }

    deinit {
        LZ4_freeStream(self.stream)
        self.body.deallocate()
        // The nonces to come are not left in freed memory.
        self.random.initializeMemory(as: UInt8.self, repeating: 0)
        self.random.deallocate()
    }

    /// Codec byte, length, then the LZ4 block, or the event as it is when LZ4 does not make
    /// it smaller (short or random-looking events). Valid until the next call.
    func body(of event: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
        let length = event.count
        let header = KafkaEnvelope.bodyHeaderBytes
        let bound = Int(LZ4_compressBound(Int32(clamping: length)))
        if self.body.count < header + max(bound, length) {
            self.body.deallocate()
            self.body = .allocate(byteCount: header + max(bound, length), alignment: 16)
        }
        let buffer = self.body.bindMemory(to: UInt8.self)
        buffer[1] = UInt8(truncatingIfNeeded: length >> 24)
        buffer[2] = UInt8(truncatingIfNeeded: length >> 16)
        buffer[3] = UInt8(truncatingIfNeeded: length >> 8)
        buffer[4] = UInt8(truncatingIfNeeded: length)
        var compressed: Int32 = 0
        if let source = event.baseAddress, bound > 0, length <= Int(Int32.max) {
            LZ4_resetStream_fast(self.stream)
            compressed = LZ4_compress_fast_continue(
                self.stream,
                source.assumingMemoryBound(to: CChar.self),
                UnsafeMutableRawPointer(buffer.baseAddress! + header).assumingMemoryBound(to: CChar.self),
                Int32(length),
                Int32(bound),
                1
            )
        }
        if compressed > 0 && Int(compressed) < length {
            buffer[0] = KafkaEnvelope.Codec.lz4.rawValue
            return UnsafeRawBufferPointer(start: buffer.baseAddress, count: header + Int(compressed))
        }
        buffer[0] = KafkaEnvelope.Codec.stored.rawValue
        if let source = event.baseAddress, length > 0 {
            UnsafeMutableRawPointer(buffer.baseAddress! + header).copyMemory(from: source, byteCount: length)
        }
        return UnsafeRawBufferPointer(start: buffer.baseAddress, count: header + length)
    }

    /// Writes 12 fresh random bytes to `nonce`; false when the CSPRNG fails.
    func nonce(into nonce: UnsafeMutablePointer<UInt8>) -> Bool {
        let size = KafkaEnvelope.nonceBytes
        if self.randomUsed + size > self.random.count {
            let bytes = self.random.bindMemory(to: UInt8.self)
            guard RAND_bytes(bytes.baseAddress, Int32(bytes.count)) == 1 else { return false }
            self.randomUsed = 0
        }
        let source = self.random.baseAddress! + self.randomUsed
        nonce.update(from: source.assumingMemoryBound(to: UInt8.self), count: size)
        // A nonce is used once: wipe it from the buffer.
        source.initializeMemory(as: UInt8.self, repeating: 0, count: size)
        self.randomUsed += size
        return true
    }
}

/// The envelope could not be sealed (OpenSSL or the kernel's random source failed): the event
/// is sent again later, never in plaintext.
package struct SealingFailed: Error, CustomStringConvertible {
    package var description: String { "the payload envelope could not be sealed (AES-GCM or the random source failed)" }
}

/// Seals event values under the current `kafka.encryption` key (the forwarder's side).
package final class PayloadSealer: Sendable {
    /// The `sluice-kid` header's value.
    package let keyID: String
    package let keyIDBytes: [UInt8]
    private let key: SymmetricKey
    private let cache = DataKeyCache()
    private let scratch = Mutex(SealingScratch())

    /// nil when the ring has no current key (encryption off: send plaintext).
    package init?(keyring: Keyring) {
        guard let current = keyring.current else { return nil }
        self.keyID = current.id
        self.keyIDBytes = Array(current.id.utf8)
        self.key = current.key
    }

    /// The envelope of `event` for `topic`, sealed under the data key of `hour`.
    package func seal(_ event: UnsafeRawBufferPointer, topic: String, hour: UInt32) throws -> [UInt8] {
        let dataKey = self.cache.key(.init(keyID: self.keyID, topic: topic, hour: hour)) {
            DataKey(
                key: KafkaEnvelope.dataKey(self.key, topic: topic, hour: hour),
                additionalData: KafkaEnvelope.additionalData(keyID: self.keyID, topic: topic, hour: hour),
                encrypting: true
            )
        }
        let value: [UInt8]? =
            dataKey.withContext { context in
                self.scratch.withLock { scratch -> [UInt8]? in
                    let body = scratch.body(of: event)
                    let prefix = KafkaEnvelope.hourBytes + KafkaEnvelope.nonceBytes
                    let total = prefix + body.count + KafkaEnvelope.tagBytes
                    var sealed = false
                    let value = [UInt8](unsafeUninitializedCapacity: total) { buffer, count in
                        let base = buffer.baseAddress!
                        for index in 0..<KafkaEnvelope.hourBytes {
                            base[index] = UInt8(truncatingIfNeeded: hour >> (24 - 8 * index))
                        }
                        sealed =
                            scratch.nonce(into: base + KafkaEnvelope.hourBytes)
                            && context.seal(
                                nonce: base + KafkaEnvelope.hourBytes,
                                additionalData: dataKey.additionalData,
                                plaintext: body,
                                into: base + prefix
                            )
                        count = sealed ? total : 0
                    }
                    return sealed ? value : nil
                }
            } ?? nil
        guard let value else { throw SealingFailed() }
        return value
    }
}

/// Why a sealed value could not be opened; the `dlq_reason` of its dead letter.
package struct EnvelopeError: Error, Equatable, CustomStringConvertible {
    package enum Kind: String, Sendable, Equatable {
        /// Sealed under a key id the reader was not given.
        case missingKey = "missing_key"
        /// The tag does not match: altered, truncated, moved to another topic, or relabelled.
        case authentication
        /// Not an envelope this version writes (headers, sizes, codec).
        case malformed
    }

    package let kind: Kind
    package let message: String

    package var description: String { self.message }
}

/// Opens envelopes with any configured `kafka.encryption` key (the loader's side), and passes
/// unsealed values through: data from before encryption was turned on, or after it was
/// turned off, still loads.
package final class PayloadOpener: Sendable {
    private let keyring: Keyring
    private let cache = DataKeyCache()

    /// `keyring` nil: no key configured; every sealed message is then a missing key.
    package init(keyring: Keyring?) {
        self.keyring = keyring ?? Keyring(current: nil, previous: [:], prefix: KafkaEnvelope.configurationPrefix)
    }

    /// The event inside `value`, or nil when the message is not sealed (no `sluice-enc`
    /// header): the value is the event.
    package func open(
        _ value: [UInt8],
        headers: [(name: String, value: [UInt8])],
        topic: String
    ) throws(EnvelopeError) -> [UInt8]? {
        guard let version = headers.first(where: { $0.name == KafkaEnvelope.versionHeader })?.value else {
            return nil
        }
        guard version.elementsEqual(KafkaEnvelope.version.utf8Bytes) else {
            throw EnvelopeError(
                kind: .malformed,
                message:
                    "payload envelope version '\(String(decoding: version.prefix(16), as: UTF8.self))' is not one this loader reads (v1)"
            )
        }
        guard let idBytes = headers.first(where: { $0.name == KafkaEnvelope.keyIDHeader })?.value,
            let id = String(validating: idBytes, as: UTF8.self), Keyring.isValidID(id)
        else {
            throw EnvelopeError(kind: .malformed, message: "payload envelope without a valid sluice-kid header")
        }
        let key: SymmetricKey
        do throws(MissingKey) {
            key = try self.keyring.key(id)
        } catch {
            throw EnvelopeError(kind: .missingKey, message: error.description)
        }
        let minimum = KafkaEnvelope.hourBytes + KafkaEnvelope.nonceBytes + KafkaEnvelope.tagBytes
        guard value.count >= minimum + KafkaEnvelope.bodyHeaderBytes else {
            throw EnvelopeError(
                kind: .malformed,
                message: "payload envelope of \(value.count) bytes is shorter than any sealed event"
            )
        }
        let hour = KafkaEnvelope.bigEndian(value[0..<KafkaEnvelope.hourBytes])
        let dataKey = self.cache.key(.init(keyID: id, topic: topic, hour: hour)) {
            DataKey(
                key: KafkaEnvelope.dataKey(key, topic: topic, hour: hour),
                additionalData: KafkaEnvelope.additionalData(keyID: id, topic: topic, hour: hour),
                encrypting: false
            )
        }
        let prefix = KafkaEnvelope.hourBytes + KafkaEnvelope.nonceBytes
        let length = value.count - prefix - KafkaEnvelope.tagBytes
        let body: [UInt8]? = value.withUnsafeBufferPointer { bytes in
            dataKey.withContext { context in
                var opened = false
                let body = [UInt8](unsafeUninitializedCapacity: length) { buffer, count in
                    opened = context.open(
                        nonce: bytes.baseAddress! + KafkaEnvelope.hourBytes,
                        additionalData: dataKey.additionalData,
                        ciphertext: UnsafeBufferPointer(rebasing: bytes[prefix..<(prefix + length)]),
                        tag: bytes.baseAddress! + prefix + length,
                        into: buffer.baseAddress!
                    )
                    count = opened ? length : 0
                }
                return opened ? body : nil
            } ?? nil
        }
        guard let body else {
            throw EnvelopeError(
                kind: .authentication,
                message:
                    "payload envelope failed authentication under key '\(id)' (altered, or moved from another topic than \(topic))"
            )
        }
        return try Self.decompress(body)
    }

    static func decompress(_ bytes: [UInt8]) throws(EnvelopeError) -> [UInt8] {
        let header = KafkaEnvelope.bodyHeaderBytes
        guard bytes.count >= header, let codec = KafkaEnvelope.Codec(rawValue: bytes[0]) else {
            throw EnvelopeError(kind: .malformed, message: "payload envelope with an unknown codec")
        }
        let length = Int(KafkaEnvelope.bigEndian(bytes[1..<header]))
        switch codec {
        case .stored:
            guard bytes.count - header == length else {
                throw EnvelopeError(kind: .malformed, message: "payload envelope length does not match its content")
            }
            return Array(bytes[header...])
        case .lz4:
            guard length > 0, length <= KafkaEnvelope.maximumEventBytes else {
                throw EnvelopeError(
                    kind: .malformed,
                    message:
                        "payload envelope declares \(length) bytes (1 to \(KafkaEnvelope.maximumEventBytes) expected)"
                )
            }
            let event = bytes.withUnsafeBufferPointer { source in
                [UInt8](unsafeUninitializedCapacity: length) { buffer, count in
                    let written = LZ4_decompress_safe(
                        UnsafeRawPointer(source.baseAddress! + header).assumingMemoryBound(to: CChar.self),
                        UnsafeMutableRawPointer(buffer.baseAddress).map { $0.assumingMemoryBound(to: CChar.self) },
                        Int32(source.count - header),
                        Int32(length)
                    )
                    count = written == Int32(length) ? length : 0
                }
            }
            guard event.count == length else {
                throw EnvelopeError(kind: .malformed, message: "payload envelope's LZ4 block does not decompress")
            }
            return event
        }
    }
}

extension StaticString {
    var utf8Bytes: UnsafeBufferPointer<UInt8> {
        UnsafeBufferPointer(start: self.utf8Start, count: self.utf8CodeUnitCount)
    }
}
