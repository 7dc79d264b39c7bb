// Package cnpconformance builds network-policy-api v0.3.0's conformance
// suite (its conformance package's tests) into a test binary that runs
// against this project's two-node test cluster. It is a separate module so
// the main module never depends on controller-runtime.
//
// base/ is not in git: tools/kubernetes/build.sh cnp-conformance fills it
// with patch.sh from the module's own conformance/base before building.
package cnpconformance

import "embed"

// Manifests holds the (patched) base manifests under the same paths the
// upstream tests name them by ("base/...").
//
//go:embed base
var Manifests embed.FS
