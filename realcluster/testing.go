package realcluster

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Required reports whether a cluster that cannot run must fail tests
// instead of skipping them (NFQPOLICY_REQUIRE_CLUSTER=1).
func Required() bool { return os.Getenv("NFQPOLICY_REQUIRE_CLUSTER") == "1" }

// NFQPolicyImage is the reference `make image` tags the agent image with,
// and NFQPolicyImageTar where it writes it, relative to the repository.
const (
	NFQPolicyImage    = "ghcr.io/nfqpolicy/nfqpolicy:dev"
	NFQPolicyImageTar = "bin/nfqpolicy-image.tar"
)

// CanRun returns why a cluster cannot run here (not root, a binary or
// image missing), or nil.
func CanRun() error {
	if os.Geteuid() != 0 {
		return errNotRoot
	}
	if _, err := FindBinaries(); err != nil {
		return err
	}
	_, err := ImageTarballs()
	return err
}

type constErr string

func (e constErr) Error() string { return string(e) }

const errNotRoot = constErr("the cluster needs root (network namespaces, cgroups, mounts)")

// Start brings a cluster up for a test with the pause and agnhost images
// on both nodes, plus o.Images, and removes it when the test ends. It skips
// the test, saying why, when the cluster cannot run here, and fails it
// instead when Required.
func Start(t testing.TB, o Options) *Cluster {
	t.Helper()
	if err := CanRun(); err != nil {
		if Required() {
			t.Fatalf("realcluster: %v (NFQPOLICY_REQUIRE_CLUSTER=1)", err)
		}
		t.Skipf("SKIPPED, NO REAL CLUSTER: %v", err)
	}
	images, _ := ImageTarballs()
	o.Images = append(images, o.Images...)
	if o.Logf == nil {
		o.Logf = t.Logf
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, err := Up(ctx, o)
	if err != nil {
		t.Fatalf("realcluster: %v", err)
	}
	t.Cleanup(func() {
		if err := errors.Join(c.Down(), RemoveBase()); err != nil {
			t.Errorf("realcluster: teardown: %v", err)
		}
	})
	return c
}

// RepoRoot finds the repository root (the folder holding go.mod) from the
// working directory up.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", os.ErrNotExist
		}
		dir = parent
	}
}
