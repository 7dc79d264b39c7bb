package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/nfqpolicy/nfqpolicy/scenario"
)

// TestClusterNoAgent holds a two-node scenario's topology open with no
// agent: every probe must be allowed, ProbeOnce must refuse a destination
// nothing serves, and Close must delete every namespace.
func TestClusterNoAgent(t *testing.T) {
	requireKernel(t)
	ss, err := scenario.Load(publicCorpus + "/seed-1-docs-test-network-policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s := ss[0]
	ctx := context.Background()
	c, err := NewCluster(ctx, s, "ctest", Options{Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			_ = c.Close()
		}
	}()
	if got := c.Nodes(); len(got) != 2 || got[0] != "node-1" || got[1] != "node-2" {
		t.Errorf("Nodes() = %v, want [node-1 node-2]", got)
	}
	if st := c.State(); len(st.Pods) != len(s.Cluster.Pods) || len(st.Policies) != len(s.Cluster.Policies) {
		t.Errorf("State() has %d pods, %d policies; the scenario %d, %d", len(st.Pods), len(st.Policies), len(s.Cluster.Pods), len(s.Cluster.Policies))
	}
	ns, addr, err := c.Endpoint("node/node-1", 4)
	if err != nil || c.NodeOf(ns) != "node-1" || addr.String() != "192.168.56.1" {
		t.Errorf("Endpoint(node/node-1) = %v %v %v, NodeOf %q", ns, addr, err, c.NodeOf(ns))
	}
	rep := c.Probe(ctx)
	if len(rep.Results) != len(s.Probes) {
		t.Fatalf("%d results for %d probes", len(rep.Results), len(s.Probes))
	}
	for _, r := range rep.Results {
		if r.Got != "allow" {
			t.Errorf("nothing polices the topology, yet: %s", FormatVerdict(r))
		}
	}
	if ok, detail, err := c.ProbeOnce(ctx, s.Probes[0]); !ok || err != nil {
		t.Errorf("ProbeOnce(%v) = %v %s %v, want allowed", s.Probes[0], ok, detail, err)
	}
	unserved := scenario.Probe{From: "myproject/client", To: "default/backend", Port: 18080, Protocol: "TCP", Family: 4}
	if _, _, err := c.ProbeOnce(ctx, unserved); err == nil || !strings.Contains(err.Error(), "no server") {
		t.Errorf("ProbeOnce to a port nothing serves: err %v, want no server", err)
	}
	if err := c.AgentsAlive(); err == nil {
		t.Error("AgentsAlive with no agents started: want an error")
	}
	closed = true
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(netnsDir)
	mine := fmt.Sprintf("%s%d-ctest-", NamePrefix, os.Getpid())
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), mine) {
			t.Errorf("namespace %s left behind", e.Name())
		}
	}
}
