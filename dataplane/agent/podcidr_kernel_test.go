package agent_test

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nfqpolicy/nfqpolicy/dataplane/internal/nstest"
	"github.com/nfqpolicy/nfqpolicy/dataplane/iptables"
)

// podCIDRSnapshot is a cluster whose node1 hands out pod addresses from
// 10.99.0.0/16 and fd99::/16, which hold both pod namespaces' addresses
// and the node's own addresses on their links (listed as its InternalIPs,
// so that they are the node's, not unknown pods).
// Pod a is always known; pod b only when withB (before that it is a pod
// the CNI has started but the agent has not heard of). No policy exists:
// every known pod may talk to everything.
func podCIDRSnapshot(r *nstest.Routed, withB bool) string {
	s := fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {kubernetes.io/metadata.name: demo}}
---
apiVersion: v1
kind: Node
metadata: {name: node1}
spec: {podCIDR: 10.99.0.0/16, podCIDRs: [10.99.0.0/16, "fd99::/16"]}
status: {addresses: [{type: InternalIP, address: %s}, {type: InternalIP, address: %s}]}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: demo, labels: {app: a}}
spec: {nodeName: node1, containers: [{name: c, image: x}]}
status: {phase: Running, podIP: %s, podIPs: [{ip: %s}, {ip: %s}]}
`, r.GwA4, r.GwB4, r.A4, r.A4, r.A6)
	if withB {
		s += fmt.Sprintf(`---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: demo, labels: {app: b}}
spec: {nodeName: node1, containers: [{name: c, image: x}]}
status: {phase: Running, podIP: %s, podIPs: [{ip: %s}, {ip: %s}]}
`, r.B4, r.B4, r.B6)
	}
	return s
}

// TestAgentUnknownPod: a pod the agent has not synced yet (in the node's
// pod CIDR, absent from the snapshot) can neither reach nor be reached by
// a known pod, nor reach the node (a flow only the pod CIDR set diverts);
// once the snapshot lists it, all of that works.
func TestAgentUnknownPod(t *testing.T) {
	nstest.Require(t, append(iptables.Tools(iptables.Auto), "go")...)
	nstest.Sweep(t)
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	r := nstest.NewRouted(t)
	dir := t.TempDir()
	snap := filepath.Join(dir, "cluster.yaml")
	flowLog := filepath.Join(dir, "flows.log")
	if err := os.WriteFile(snap, []byte(podCIDRSnapshot(r, false)), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, addr := range []netip.Addr{r.B4, r.B6} {
		r.B.ServeEcho(t, addr, 8080)
	}
	for _, addr := range []netip.Addr{r.A4, r.A6} {
		r.A.ServeEcho(t, addr, 9000)
	}
	// The node's own service on its address in b's link (a hostNetwork
	// server): b -> node is neither to nor from a known pod, so only the
	// pod CIDR set diverts it.
	r.Node.ServeEcho(t, r.GwB4, 9100)
	ag := startAgent(t, r, bin, "--node-name", "node1", "--snapshot", snap, "--snapshot-poll", "100ms",
		"--queues", "1", "--deny-action", "reject", "--health-addr", "127.0.0.1:9901",
		"--debug-socket", "", "--flow-log", flowLog, "--flow-log-select", "denied")
	cl := httpInNode(r)
	waitReady(t, cl, ag)

	if st := counters(t, cl); st.LocalPodCIDRs != 2 || st.LocalAddrs != 2 {
		t.Fatalf("local_pod_cidrs %d local_addrs %d, want 2 and 2 (node1's two pod CIDRs, a's two addresses)", st.LocalPodCIDRs, st.LocalAddrs)
	}
	if got := r.Node.Run("ipset", "list", iptables.NetSetName(iptables.IPv4)); !strings.Contains(got, "10.99.0.0/16") {
		t.Fatalf("%s lacks node1's pod CIDR:\n%s", iptables.NetSetName(iptables.IPv4), got)
	}

	type probe struct {
		name string
		from *nstest.Namespace
		to   netip.Addr
		port uint16
	}
	probes := []probe{
		{"a -> unknown b (IPv4)", r.A, r.B4, 8080},
		{"a -> unknown b (IPv6)", r.A, r.B6, 8080},
		{"unknown b -> a (IPv4)", r.B, r.A4, 9000},
		{"unknown b -> a (IPv6)", r.B, r.A6, 9000},
		{"unknown b -> node", r.B, r.GwB4, 9100},
	}
	before := counters(t, cl).Total.Denied
	for _, p := range probes {
		c, err := p.from.Dial(p.to, p.port, 2*time.Second)
		if err == nil {
			c.Close()
			t.Errorf("%s:%d connected; an unsynced pod must be denied", p.name, p.port)
			continue
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("%s:%d: %v, want ECONNREFUSED (denied, --deny-action reject)", p.name, p.port, err)
		}
	}
	// The reader counts a verdict after sending it, so the client can see
	// its reset before the count moves: wait a moment for the last one.
	st := counters(t, cl)
	for deadline := time.Now().Add(2 * time.Second); st.Total.Denied-before < uint64(len(probes)) && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		st = counters(t, cl)
	}
	t.Logf("counters with b unknown: allowed=%d denied=%d (before the probes: %d)", st.Total.Allowed, st.Total.Denied, before)
	if st.Total.Denied-before < uint64(len(probes)) {
		t.Errorf("denied counter grew by %d for %d denied connections", st.Total.Denied-before, len(probes))
	}
	// The flow log names the decision and why.
	var logged string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		b, _ := os.ReadFile(flowLog)
		if logged = string(b); strings.Count(logged, `"unknown-pod"`) >= len(probes) {
			break
		}
	}
	for _, want := range []string{`"unknown-pod"`, "node1's pod CIDR 10.99.0.0/16 but belongs to no known pod (not synced yet): denied", "node1's pod CIDR fd99::/16"} {
		if !strings.Contains(logged, want) {
			t.Errorf("flow log lacks %q:\n%s", want, logged)
		}
	}

	// The snapshot catches up: b is a known pod, nothing isolates it.
	if err := os.WriteFile(snap, []byte(podCIDRSnapshot(r, true)), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range probes {
		var err error
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			var c interface{ Close() error }
			if c, err = p.from.Dial(p.to, p.port, time.Second); err == nil {
				c.Close()
				break
			}
		}
		if err != nil {
			t.Errorf("%s:%d still fails 10s after the snapshot listed b: %v", p.name, p.port, err)
		}
	}
	if st := counters(t, cl); st.LocalAddrs != 4 || st.LocalPodCIDRs != 2 {
		t.Errorf("after the sync local_addrs %d local_pod_cidrs %d, want 4 and 2", st.LocalAddrs, st.LocalPodCIDRs)
	}
	if err := ag.stop(t); err != nil {
		t.Errorf("agent exit: %v", err)
	}
	// Cleanup removes the pod CIDR sets with the rest.
	if _, err := r.Node.Try(bin, "cleanup"); err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	if all := r.Node.Run("iptables-save") + r.Node.Run("ip6tables-save") + r.Node.Run("ipset", "list", "-n"); strings.Contains(all, "NFQPOLICY") {
		t.Errorf("NFQPOLICY left after cleanup:\n%s", all)
	}
}
