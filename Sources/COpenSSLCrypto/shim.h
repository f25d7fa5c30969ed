// The system OpenSSL libcrypto (libssl-dev; librdkafka already links it): AES-256-GCM with a
// cipher context kept per data key, and its CSPRNG for nonces, for the Kafka payload
// envelope's per-message sealing.
#include <openssl/evp.h>
#include <openssl/rand.h>
