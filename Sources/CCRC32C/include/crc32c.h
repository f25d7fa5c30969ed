#ifndef SLUICE_CRC32C_H
#define SLUICE_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/// Extends a CRC32C (Castagnoli, reflected, as used by iSCSI, ext4 and Kafka) over `length` bytes.
/// Start with crc = 0; the function applies the usual pre- and post-inversion itself, so
/// sluice_crc32c_extend(sluice_crc32c_extend(0, a), b) == CRC32C(a ‖ b).
uint32_t sluice_crc32c_extend(uint32_t crc, const void *data, size_t length);

/// 1 when the hardware instruction path is in use, 0 for the portable table path.
int sluice_crc32c_is_hardware(void);

#endif
