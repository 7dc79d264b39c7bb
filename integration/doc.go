// Package integration holds tests that need more than one package: the
// deploy/ manifests against a real kube-apiserver (internal/apiserver) and
// the agent's flags. It has no non-test code.
package integration
