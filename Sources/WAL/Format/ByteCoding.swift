// The on-disk format. docs/wal.md describes it for people writing a second reader; keep the
// two in step. All integers are little-endian; every frame starts on an 8-byte boundary.

extension [UInt8] {
    @inline(__always)
    mutating func store<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        Swift.withUnsafeBytes(of: value.littleEndian) { source in
            for index in 0..<source.count { self[offset + index] = source[index] }
        }
    }
}

extension UnsafeRawBufferPointer {
    @inline(__always)
    func load<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
        T(littleEndian: self.loadUnaligned(fromByteOffset: offset, as: T.self))
    }
}

@inline(__always)
func alignedTo8(_ value: Int) -> Int { (value + 7) & ~7 }
