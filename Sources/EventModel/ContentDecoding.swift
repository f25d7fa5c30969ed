internal import CZlib

/// A `Content-Encoding` the gateway undoes before reading a body.
public enum ContentEncoding: Sendable, Equatable {
    /// RFC 1952 gzip (`gzip`, `x-gzip`). Every member of a multi-member body is read, as
    /// `gzip -d` does for `cat a.gz b.gz`.
    case gzip
    /// HTTP `deflate`: zlib-wrapped (RFC 1950), as RFC 9110 defines it, or raw deflate
    /// (RFC 1951), as some clients send it.
    case deflate

    /// The encoding for a `Content-Encoding` value (`gzip`, `x-gzip`, `deflate`, any case);
    /// nil for anything else, including `identity`.
    public init?(header: String) {
        switch header.lowercased().trimmingSpaces() {
        case "gzip", "x-gzip": self = .gzip
        case "deflate": self = .deflate
        default: return nil
        }
    }
}

/// Why a compressed body was refused.
public struct ContentDecodingError: Error, Sendable, Equatable {
    public enum Reason: Sendable, Equatable {
        /// It decompresses to more than the limit (answered 413).
        case tooLarge
        /// It is not complete, well-formed compressed data (answered 400).
        case malformed
    }

    public var reason: Reason
    /// What is wrong, for the problem document: "it ends before the compressed data does".
    public var detail: String

    public init(_ reason: Reason, _ detail: String) {
        self.reason = reason
        self.detail = detail
    }
}

/// Undoes `Content-Encoding`, all or nothing: a body that does not decompress completely —
/// cut off, with a bad checksum or length, or with bytes after the end of the compressed
/// data — is an error, never a prefix of what the client meant to send.
public enum ContentDecoding {
    /// The decompressed body. A pure function of its arguments (for fuzzing as well as the
    /// gateway).
    ///
    /// - Parameter maxBytes: more output than this is ``ContentDecodingError/Reason/tooLarge``;
    ///   at most `maxBytes + 1` bytes are ever allocated for the output, whatever the input.
    public static func decode(
        _ body: [UInt8],
        encoding: ContentEncoding,
        maxBytes: Int
    ) throws(ContentDecodingError) -> [UInt8] {
        try body.withUnsafeBufferPointer { input throws(ContentDecodingError) in
            switch encoding {
            case .gzip:
                // 16 + 15: gzip framing only (no zlib auto-detection), the largest window.
                return try Self.inflate(input, windowBits: 16 + 15, gzipMembers: true, maxBytes: maxBytes)
            case .deflate:
                guard Self.hasZlibHeader(input) else {
                    return try Self.inflate(input, windowBits: -15, gzipMembers: false, maxBytes: maxBytes)
                }
                do throws(ContentDecodingError) {
                    return try Self.inflate(input, windowBits: 15, gzipMembers: false, maxBytes: maxBytes)
                } catch  where error.reason == .malformed {
                    // One raw deflate stream in 31×16 starts with bytes that pass the zlib header
                    // check; give it its chance, but report the zlib error if it fails too.
                    if let raw = try? Self.inflate(input, windowBits: -15, gzipMembers: false, maxBytes: maxBytes) {
                        return raw
                    }
                    throw error
                }
            }
        }
    }

    /// RFC 1950: method 8 (deflate), a window of at most 32 KiB, and a header checksum.
    static func hasZlibHeader(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        guard bytes.count >= 2 else { return false }
        return bytes[0] & 0x0F == 8 && bytes[0] >> 4 <= 7 && (UInt16(bytes[0]) << 8 | UInt16(bytes[1])) % 31 == 0
    }

    private static func inflate(
        _ input: UnsafeBufferPointer<UInt8>,
        windowBits: Int32,
        gzipMembers: Bool,
        maxBytes: Int
    ) throws(ContentDecodingError) -> [UInt8] {
        guard input.count < Int(UInt32.max) else { throw ContentDecodingError(.tooLarge, "the body is too large") }
        // zlib keeps a pointer back to its z_stream: it must not move while in use.
        let stream = UnsafeMutablePointer<z_stream>.allocate(capacity: 1)
        stream.initialize(to: z_stream())
        defer {
            stream.deinitialize(count: 1)
            stream.deallocate()
        }
        guard sluice_inflate_init2(stream, windowBits) == Z_OK else {
            throw ContentDecodingError(.malformed, "zlib could not start (out of memory)")
        }
        defer { inflateEnd(stream) }
        // zlib only reads through next_in; its C type is not const.
        stream.pointee.next_in = UnsafeMutablePointer(mutating: input.baseAddress)
        stream.pointee.avail_in = UInt32(input.count)

        // Raw memory rather than an array: it grows without zero-filling (zlib writes every
        // byte before it is read), and the array is made once, of the final size.
        var capacity = min(maxBytes + 1, max(1 << 16, input.count * 4))
        var output = UnsafeMutablePointer<UInt8>.allocate(capacity: capacity)
        defer { output.deallocate() }
        var produced = 0
        while true {
            if produced == capacity {
                // The output holds maxBytes + 1 bytes at most: one more than allowed is enough to know.
                guard produced <= maxBytes else { throw Self.tooLarge(maxBytes) }
                capacity = min(maxBytes + 1, capacity * 2)
                let grown = UnsafeMutablePointer<UInt8>.allocate(capacity: capacity)
                grown.initialize(from: output, count: produced)
                output.deallocate()
                output = grown
            }
            stream.pointee.next_out = output + produced
            stream.pointee.avail_out = UInt32(capacity - produced)
            let code = CZlib.inflate(stream, Z_NO_FLUSH)
            produced = capacity - Int(stream.pointee.avail_out)
            guard produced <= maxBytes else { throw Self.tooLarge(maxBytes) }
            switch code {
            case Z_OK:
                continue
            case Z_STREAM_END:
                // The end of a stream; zlib has checked gzip's CRC-32 and ISIZE or zlib's Adler-32.
                let left = Int(stream.pointee.avail_in)
                if left == 0 { return Array(UnsafeBufferPointer(start: output, count: produced)) }
                if gzipMembers, left >= 2, let next = stream.pointee.next_in, next[0] == 0x1F, next[1] == 0x8B {
                    inflateReset(stream)
                    continue
                }
                throw ContentDecodingError(
                    .malformed,
                    "\(left) byte(s) follow the end of the compressed data"
                )
            case Z_BUF_ERROR:
                // No progress with room to write: the input ran out before the stream ended.
                throw ContentDecodingError(
                    .malformed,
                    "it ends before the compressed data does (cut off, or the compressor was not finished)"
                )
            case Z_NEED_DICT:
                throw ContentDecodingError(.malformed, "it needs a preset dictionary")
            case Z_MEM_ERROR:
                throw ContentDecodingError(.malformed, "zlib ran out of memory")
            default:
                let message = stream.pointee.msg.map { String(cString: $0) } ?? "corrupt data"
                throw ContentDecodingError(.malformed, message)
            }
        }
    }

    private static func tooLarge(_ maxBytes: Int) -> ContentDecodingError {
        ContentDecodingError(.tooLarge, "the body decompresses to more than \(maxBytes) bytes")
    }
}
