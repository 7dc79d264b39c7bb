package e2e

import (
	"context"

	"github.com/nfqpolicy/nfqpolicy/internal/netns"
)

// netnsDir is where `ip netns add` bind-mounts named namespaces.
const netnsDir = netns.Dir

// NamePrefix starts the name of every namespace this package creates; the
// pid that follows it lets a sweep tell a dead run's leftovers from a live
// run's namespaces.
const NamePrefix = "nfqp-"

// NS is a named network namespace created by this package. Do runs a
// function on a thread inside it; Name is its `ip netns` name.
type NS struct {
	*netns.NS
}

// addNS creates the named namespace and opens it.
func addNS(ctx context.Context, name string) (*NS, error) {
	n, err := netns.Create(ctx, name)
	if err != nil {
		return nil, err
	}
	return &NS{n}, nil
}

// del kills whatever still runs in the namespace (agents of a run that was
// killed before it could stop them) and deletes it.
func (n *NS) del() error { return n.Delete() }

// SweepStale deletes namespaces named NamePrefix+"<pid>-..." whose pid is
// no longer running: the leftovers of a run that was killed. It returns the
// names it deleted.
func SweepStale() ([]string, error) { return netns.Sweep(NamePrefix) }

// ipBatch runs iproute2 commands (one per line, `ip -batch` syntax) inside
// the namespace with a single fork.
func (n *NS) ipBatch(ctx context.Context, lines []string) error { return n.IPBatch(ctx, lines) }

// sysctl sets net.* kernel parameters inside the namespace without a fork
// per namespace: a thousand-pod topology saves a thousand.
func (n *NS) sysctl(kv ...string) error { return n.Sysctl(kv...) }
