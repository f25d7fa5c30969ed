// Debian's librdkafka (librdkafka-dev): the client API and the built-in mock cluster,
// which tests and `sluice dev` use as a real Kafka-protocol server on loopback.
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
