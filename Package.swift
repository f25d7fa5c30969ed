// swift-tools-version:6.1
import PackageDescription

let strict: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

let package = Package(
    name: "sluice",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "sluice", targets: ["sluice"]),
        .executable(name: "sluice-bench", targets: ["sluice-bench"]),
        .library(name: "WAL", targets: ["WAL"]),
        .library(name: "Gateway", targets: ["Gateway"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/adam-fowler/compress-nio", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/vapor/jwt-kit", from: "5.8.0"),
        .package(url: "https://github.com/apple/swift-crypto", "4.1.0"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-certificates", from: "1.21.1"),
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.2"),
    ],
    targets: [
        // CRC32C (Castagnoli) with SSE4.2 / ARMv8 CRC instructions when the CPU has them.
        .target(name: "CCRC32C"),
        // What several modules would otherwise each write: Duration units, the off-pool
        // runner, the shutdown check. Internal to the package (`package` access only).
        .target(
            name: "SluiceCore",
            dependencies: [.product(name: "ServiceLifecycle", package: "swift-service-lifecycle")],
            swiftSettings: strict
        ),
        // AES-256-GCM with per-unit data keys wrapped by configured key-encryption keys: the
        // WAL's records and the Kafka payload envelopes (docs/security.md, "At rest").
        .target(
            name: "Encryption",
            dependencies: ["SluiceCore", "COpenSSLCrypto", .product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: strict
        ),
        // Debian's liblz4 (liblz4-dev): events are compressed before they are encrypted.
        .systemLibrary(name: "CLZ4", pkgConfig: "liblz4", providers: [.apt(["liblz4-dev"])]),
        // Debian's OpenSSL libcrypto (libssl-dev): AES-GCM with a cipher context kept per data
        // key (swift-crypto's one-shot API sets the key up again for every message).
        .systemLibrary(name: "COpenSSLCrypto", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
        // The Kafka payload envelope: LZ4, then AES-256-GCM under a per-topic-hour data key
        // derived from a `kafka.encryption` key; sealed by the forwarder, opened by the loader.
        .target(
            name: "KafkaEnvelope",
            dependencies: ["Encryption", "CLZ4", "COpenSSLCrypto", .product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: strict
        ),
        .target(
            name: "WAL",
            dependencies: [
                "SluiceCore", "CCRC32C", "Encryption",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        // Debian's librdkafka (librdkafka-dev), with the mock cluster header.
        .systemLibrary(
            name: "Crdkafka",
            pkgConfig: "rdkafka",
            providers: [.apt(["librdkafka-dev"])]
        ),
        // A small Swift layer over librdkafka: producer with a poll thread, mock cluster, errors.
        .target(
            name: "Kafka",
            dependencies: [
                "SluiceCore", "Crdkafka", .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
            ],
            swiftSettings: strict
        ),
        // The conservation ledger: what each hop took and handed on, by identity (gateway,
        // WAL LSN), published to a Kafka topic that receipts and `sluice audit` follow.
        .target(
            name: "Ledger",
            dependencies: [
                "SluiceCore", "Kafka",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
            ],
            swiftSettings: strict
        ),
        // Drains the WAL into Kafka and moves the WAL cursor over what Kafka acknowledged.
        .target(
            name: "Forwarder",
            dependencies: [
                "SluiceCore", "WAL", "Kafka", "EventModel", "Encryption", "KafkaEnvelope", "Ledger",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        // The system zlib, for request bodies sent with Content-Encoding gzip or deflate.
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        // The event model: JSON, validation, normalization, body decoding. No I/O.
        .target(name: "EventModel", dependencies: ["CZlib"], swiftSettings: strict),
        // ECS JSON logs and Prometheus metrics, shared by every role.
        .target(
            name: "Telemetry",
            dependencies: [
                "EventModel",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: strict
        ),
        // Who may write and how much: API keys, OAuth 2.0 access tokens (JWT) and their issuers'
        // key sets, the built-in authorization server, per-principal rate limits. No HTTP server.
        .target(
            name: "Auth",
            dependencies: [
                "SluiceCore", .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "Gateway",
            dependencies: [
                "SluiceCore", "WAL", "EventModel", "Telemetry", "Auth", "ClickHouse", "Ledger",
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: strict
        ),
        // ClickHouse over its HTTP interface: queries, bulk inserts, errors told apart.
        .target(
            name: "ClickHouse",
            dependencies: [
                "SluiceCore", .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "CompressNIO", package: "compress-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        // Kafka → ClickHouse: routes, batches, offsets committed after confirmed inserts.
        .target(
            name: "Loader",
            dependencies: [
                "SluiceCore", "Kafka", "ClickHouse", "EventModel", "Encryption", "KafkaEnvelope", "Ledger",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        // Debian's clickhouse-server as a child process on loopback: for `sluice dev` and tests.
        .target(name: "LocalClickHouse", dependencies: ["SluiceCore"], swiftSettings: strict),
        // Every `sluice` command, as a library: the `sluice` executable is its main, and
        // `sluice-bench` starts the same gateway with a stub in place of the WAL.
        .target(
            name: "SluiceCommands",
            dependencies: [
                "SluiceCore", "WAL", "Gateway", "Telemetry", "EventModel", "Kafka", "Forwarder", "Loader", "ClickHouse",
                "Ledger",
                "LocalClickHouse", "Auth", "Encryption",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Yams", package: "Yams"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(name: "sluice", dependencies: ["SluiceCommands"], swiftSettings: strict),
        // The benchmarks of docs/performance.md and the crash tests' child: out of the product.
        .executableTarget(
            name: "sluice-bench",
            dependencies: [
                "SluiceCommands", "WAL", "Gateway", "EventModel", "Kafka", "Forwarder", "Loader", "ClickHouse",
                "LocalClickHouse", "SluiceTestKit", "Encryption", "KafkaEnvelope", "Ledger",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        // Fuzzing harnesses for what clients and disks hand Sluice: the body decoders and the
        // WAL's frame and segment readers. scripts/fuzz builds them with libFuzzer; a plain build replays a
        // corpus (docs/fuzzing.md). Not part of the product.
        .executableTarget(
            name: "sluice-fuzz",
            dependencies: ["EventModel", "WAL", "CCRC32C", "CZlib", .product(name: "Logging", package: "swift-log")],
            path: "Fuzz",
            swiftSettings: strict
        ),
        // Shared by the test targets: temporary directories, the built binary, off-pool waits.
        // Child processes (sluice, openssl, PostgreSQL…), event posters and a steady load, free
        // and reserved ports, captured logs, temporary directories: for the tests and the
        // benchmarks, never for the product.
        .target(
            name: "SluiceTestKit",
            dependencies: [
                "SluiceCore", "LocalClickHouse",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Yams", package: "Yams"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "TestSupport",
            dependencies: [
                "SluiceTestKit", "ClickHouse", "Encryption", "LocalClickHouse",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
            ],
            path: "Tests/Support",
            swiftSettings: strict
        ),
        .testTarget(
            name: "WALTests",
            dependencies: [
                "WAL", "Encryption", "TestSupport",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: strict
        ),
        .testTarget(name: "EventModelTests", dependencies: ["EventModel"], swiftSettings: strict),
        .testTarget(
            name: "AuthTests",
            dependencies: [
                "Auth", "TestSupport",
                .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
            ],
            // Run by JWTCrossImplementationTests with python3: tokens minted by PyJWT.
            exclude: ["mint_token.py"],
            swiftSettings: strict
        ),
        .testTarget(name: "KafkaTests", dependencies: ["Kafka", "TestSupport"], swiftSettings: strict),
        .testTarget(name: "LedgerTests", dependencies: ["Ledger", "Kafka", "TestSupport"], swiftSettings: strict),
        .testTarget(
            name: "ClickHouseTests",
            dependencies: [
                "ClickHouse", "TestSupport", "LocalClickHouse",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "LoaderTests",
            dependencies: [
                "Loader", "Kafka", "ClickHouse", "EventModel", "TestSupport", "LocalClickHouse", "Encryption",
                "KafkaEnvelope",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            exclude: ["chdb_run.py"],
            swiftSettings: strict
        ),
        // The pipeline as it is deployed: sluice processes, the mock cluster, real ClickHouse.
        .testTarget(
            name: "EndToEndTests",
            dependencies: [
                "Kafka", "ClickHouse", "LocalClickHouse", "TestSupport", "SluiceCommands", "Encryption",
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        // The browser tracker in headless Chromium (Selenium) against the real pipeline.
        .testTarget(
            name: "BrowserTests",
            dependencies: [
                "ClickHouse", "Kafka", "LocalClickHouse", "TestSupport",
                .product(name: "Logging", package: "swift-log"),
            ],
            // Run by BrowserTests with Debian's python3 and python3-selenium.
            exclude: ["browser_scenarios.py"],
            swiftSettings: strict
        ),
        .testTarget(
            name: "ForwarderTests",
            dependencies: [
                "Forwarder", "Kafka", "WAL", "EventModel", "TestSupport", "Encryption", "KafkaEnvelope", "SluiceCore",
                "LocalClickHouse",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "GatewayTests",
            dependencies: [
                "Gateway", "WAL", "EventModel", "Telemetry", "TestSupport", "Forwarder", "Kafka", "Auth",
                "LocalClickHouse", "ClickHouse", "Loader",
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "CompressNIO", package: "compress-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
    ],
    swiftLanguageModes: [.v6]
)
