# The two commands a newcomer needs: `make run` and `make test`. Both set the machine up first.
SHELL := /bin/bash
SWIFT ?= swift
SLUICE := .build/debug/sluice
SLUICE_RELEASE := .build/release/sluice
DATA ?= ./data

.PHONY: setup build test run bench fuzz lint format clean check-race

# Suites that run whole fleets (gateways in network namespaces behind HAProxy, a live
# Prometheus and Alertmanager): `make test` runs them after the others, so that the start-up
# burst of ~600 parallel tests on two cores does not also carry them (timing bounds of other
# tests failed when it did).
HEAVY_SUITES := ScaleOutTests|MonitoringTests

setup:
	@bash scripts/setup

build: setup
	$(SWIFT) build

lint:
	$(SWIFT) format lint --strict --recursive Package.swift Sources Tests Fuzz

format:
	$(SWIFT) format --in-place --recursive Package.swift Sources Tests Fuzz

# Builds everything (the tests run the `sluice` binary as a child process), checks the
# format and the ops/ files (promtool, dashboard, units), then runs every test. Swift Testing prints the closing count.
test: setup
	$(SWIFT) build --build-tests 2>&1 | tee .build-test.log; test $${PIPESTATUS[0]} -eq 0
	@if grep -E '^/.*(Sources|Tests)/.*warning:' .build-test.log; then echo "build has warnings" >&2; exit 1; fi
	@rm -f .build-test.log
	$(MAKE) lint
	bash scripts/check-ops
	$(SWIFT) test --skip-build --skip '$(HEAVY_SUITES)'
	$(SWIFT) test --skip-build --filter '$(HEAVY_SUITES)'

# The whole pipeline on this host: mock Kafka (3 brokers, in memory), a local ClickHouse,
# the gateway with its forwarder, and the loader. Prints where to send events; Ctrl-C stops
# everything. The WAL and ClickHouse's data stay in $(DATA)/dev.
run: build
	$(SLUICE) dev --state-dir $(DATA)/dev

# Release-mode benchmarks (docs/performance.md; `sluice-bench` and scripts/bench-*) and the
# long crash soak.
bench: setup
	$(SWIFT) build -c release
	@mkdir -p $(DATA)
	@for size in 400 4096; do for c in 1 16 256; do \
		$(SLUICE_RELEASE) wal bench $(DATA) --size $$size --concurrency $$c --seconds 5; echo; \
	done; done
	scripts/bench-gateway 10 64
	scripts/bench-speed 10 64 3
	scripts/bench-auth
	.build/release/sluice-bench forwarder $(DATA) --events 1000000
	scripts/bench-loader 1000000
	scripts/bench-ledger 10 64 2
	scripts/bench-ack 10 64 1
	scripts/latency-curve 10
	.build/release/sluice-bench scale-out --seconds 10 --rounds 3   # root: network namespaces
	$(SWIFT) build
	SLUICE_CRASH_ROUNDS=500 $(SWIFT) test --filter CrashTests

# libFuzzer over the body decoders and the WAL's frame reader, 10 million inputs each, and
# the slower whole-segment reader, 1 million (docs/fuzzing.md).
fuzz: setup
	bash scripts/fuzz bodies 10000000
	bash scripts/fuzz frames 10000000
	bash scripts/fuzz segments 1000000

# ThreadSanitizer over the suites where threads meet (a separate build in .build-tsan; not in
# `make test`: the cold build alone takes ~25 minutes on 2 cores). docs/architecture.md says
# what it can and cannot tell on this toolchain.
check-race: setup
	bash scripts/check-race

# The container image (ops/image/Containerfile): with podman or docker when one can run a
# container here; otherwise its file system from debootstrap, checked with chroot
# (docs/deployment.md). Not in `make test`: the static release build and debootstrap take minutes.
.PHONY: image
image: setup
	bash scripts/build-image

clean:
	rm -rf .build .build-fuzz .build-tsan $(DATA)
