// The system zlib (zlib1g-dev), for request bodies sent with Content-Encoding gzip or deflate.
#include <zlib.h>

// inflateInit2 is a macro that passes the header's version and struct size; Swift cannot call
// macros with arguments.
static inline int sluice_inflate_init2(z_streamp stream, int window_bits) {
    return inflateInit2(stream, window_bits);
}
