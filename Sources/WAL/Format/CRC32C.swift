import CCRC32C

/// CRC32C (Castagnoli), hardware-accelerated where the CPU supports it.
enum CRC32C {
    static func checksum(_ bytes: UnsafeRawBufferPointer, seed: UInt32 = 0) -> UInt32 {
        sluice_crc32c_extend(seed, bytes.baseAddress, bytes.count)
    }

    static func checksum(_ bytes: [UInt8], seed: UInt32 = 0) -> UInt32 {
        bytes.withUnsafeBytes { self.checksum($0, seed: seed) }
    }
}
