package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/nfqpolicy/nfqpolicy/internal/netns"
)

// namePrefix starts every namespace this harness creates. It differs from
// the e2e package's "nfqp-" so that neither sweep touches the other's
// namespaces; the pid after it tells a dead run's leftovers from a live
// run's.
const namePrefix = "nfqbench-"

// netNS is a named network namespace the harness created.
type netNS = netns.NS

func addNS(ctx context.Context, name string) (*netNS, error) {
	return netns.Create(ctx, name)
}

// sweepStale deletes namespaces a killed run of this harness left behind.
func sweepStale() ([]string, error) { return netns.Sweep(namePrefix) }

// sweepStaleDirs removes the temporary directories (snapshot copy, agent
// binary, logs) that killed runs left in dir; they are named like the
// namespaces.
func sweepStaleDirs(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("sweep stale directories: %w", err)
	}
	var deleted []string
	var errs []error
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		pid, ok := netns.Owner(namePrefix, e.Name())
		if !ok || netns.Alive(pid) {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, fmt.Errorf("sweep stale directories: %w", err))
			continue
		}
		deleted = append(deleted, p)
	}
	return deleted, errors.Join(errs...)
}

// execIn runs a setup command inside ns; like every setup command of the
// harness it gets 30 seconds, so a wedged tool fails the run instead of
// hanging it.
func execIn(ctx context.Context, ns *netNS, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err := ns.Exec(ctx, name, args...)
	return err
}
