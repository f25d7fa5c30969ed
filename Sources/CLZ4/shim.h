// The system liblz4 (liblz4-dev), for the block compression inside Kafka payload envelopes.
#include <lz4.h>
