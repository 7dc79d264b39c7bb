package probe_test

import (
	"path/filepath"
	"testing"

	"github.com/nfqpolicy/nfqpolicy/probe"
	"github.com/nfqpolicy/nfqpolicy/scenario"
)

func runFiles(t *testing.T, paths ...string) (passed, failed int) {
	t.Helper()
	scs, err := scenario.LoadAll(paths...)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	for _, sc := range scs {
		res, err := probe.Scenario(sc, probe.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if len(res) != len(sc.Probes) || len(res) == 0 {
			t.Fatalf("%s: %d results for %d probes", sc.Name, len(res), len(sc.Probes))
		}
		for _, r := range res {
			if r.Pass() {
				passed++
				continue
			}
			failed++
			if failed <= 40 {
				t.Errorf("%s:%d %s: %s -> %s %d/%s v%d: expect %s, got %s (%s)", filepath.Base(r.File), r.Line, r.Scenario, r.From, r.To, r.Port, r.Protocol, r.Family, r.Expect, r.Got, r.Reason)
			}
		}
	}
	return passed, failed
}

// Every public conformance scenario, through packet serialization, decode,
// cache and verdict.
func TestPublicConformance(t *testing.T) {
	p, f := runFiles(t, "../testdata/conformance/public")
	t.Logf("%d passed, %d failed", p, f)
	if p < 19000 {
		t.Errorf("only %d probes ran; the public corpus has about 20,000", p+f)
	}
}

// The shared benchmark workload, whose expectations are the verdicts of
// kube-network-policies, cross-checked by an independent evaluator.
func TestKNPWorkload(t *testing.T) {
	p, f := runFiles(t, "../testdata/bench/knp-workload.yaml")
	t.Logf("%d passed, %d failed", p, f)
	if p+f != 10000 {
		t.Errorf("%d probes ran, want 10000", p+f)
	}
}

// Every public ClusterNetworkPolicy scenario (81 files, 22,778 probes):
// Admin and Baseline tiers around NetworkPolicy, through the same path.
func TestPublicClusterNetworkPolicyConformance(t *testing.T) {
	p, f := runFiles(t, "../testdata/conformance/public-cnp")
	t.Logf("%d passed, %d failed", p, f)
	if p+f != 22778 {
		t.Errorf("%d probes ran, want the corpus' 22,778", p+f)
	}
}
