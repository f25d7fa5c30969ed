import Foundation
import SluiceCommands
import TestSupport
import Testing

/// What the deployment files (ops/image, ops/k8s; docs/deployment.md) rely on in the binary.
@Suite struct DeploymentTests {
    /// `sluice --version` is the first check of a built image (scripts/build-image) and tells
    /// an operator what a container runs; the Kubernetes manifests deploy the image of that
    /// version, so a release that forgets to bump one of them fails here.
    @Test func versionIsPrintedAndMatchesTheManifestsImageTag() async throws {
        let result = try await ChildProcess.run(try sluiceBinary(), ["--version"])
        #expect(result.status == 0, "\(result.standardError)")
        #expect(result.standardOutput == "\(Sluice.version)\n")

        let root = repositoryRoot()
        for kustomization in ["ops/k8s/base/kustomization.yaml", "ops/k8s/drainer/kustomization.yaml"] {
            let text = try String(contentsOf: root.appendingPathComponent(kustomization), encoding: .utf8)
            #expect(text.contains("newTag: \"\(Sluice.version)\""), "\(kustomization) deploys another version")
        }
    }
}
