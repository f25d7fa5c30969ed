// The test targets import TestSupport; what they use lives in SluiceTestKit (Sources/), which
// the benchmarks (sluice-bench) share.
@_exported import SluiceTestKit
