package agent_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nfqpolicy/nfqpolicy/dataplane/internal/nstest"
	"github.com/nfqpolicy/nfqpolicy/dataplane/iptables"
)

// denyAllSnapshot is snapshot with every pod of the namespace isolated in
// both directions and nothing allowed.
func denyAllSnapshot(r *nstest.Routed) string {
	return snapshot(r, 8080) + `---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: demo}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
`
}

// quickEcho is one round trip with a short deadline, so that a cut
// connection (whose packets the deny verdict now drops) shows in
// a fraction of a second.
func quickEcho(c net.Conn, msg string) error {
	_ = c.SetDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := c.Write([]byte(msg)); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if string(buf) != msg {
		return fmt.Errorf("echo %q, want %q", buf, msg)
	}
	return nil
}

// metricValue reads one unlabelled sample from the agent's /metrics.
func metricValue(t *testing.T, cl *http.Client, name string) float64 {
	t.Helper()
	resp, err := cl.Get("http://127.0.0.1:9901/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(body)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metric %s: %v", name, err)
			}
			return f
		}
	}
	t.Fatalf("no %s in /metrics:\n%s", name, body)
	return 0
}

// TestEstablishedOnPolicyChange: an established connection (IPv4 and IPv6)
// that a policy change denies is cut within two seconds of the snapshot
// changing with --established recheck, and keeps working with keep. In
// both modes the change itself is confirmed by a new connection being
// denied. The deny action is drop, so a cut shows as silence, not a reset.
func TestEstablishedOnPolicyChange(t *testing.T) {
	nstest.Require(t, append(iptables.Tools(iptables.Auto), "go")...)
	nstest.Sweep(t)
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{"recheck", "keep"} {
		t.Run(mode, func(t *testing.T) {
			r := nstest.NewRouted(t)
			snap := filepath.Join(t.TempDir(), "cluster.yaml")
			if err := os.WriteFile(snap, []byte(snapshot(r, 8080)), 0o644); err != nil {
				t.Fatal(err)
			}
			for _, addr := range []netip.Addr{r.B4, r.B6} {
				r.B.ServeEcho(t, addr, 8080)
			}
			ag := startAgent(t, r, bin, "--node-name", "node1", "--snapshot", snap, "--snapshot-poll", "100ms",
				"--queues", "1", "--deny-action", "drop", "--established", mode, "--health-addr", "127.0.0.1:9901")
			waitReady(t, httpInNode(r), ag)

			var conns []net.Conn
			for _, addr := range []netip.Addr{r.B4, r.B6} {
				c, err := r.A.Dial(addr, 8080, 2*time.Second)
				if err != nil {
					t.Fatalf("a -> %s:8080 (allowed): %v", addr, err)
				}
				defer c.Close()
				for i := range 5 {
					if err := quickEcho(c, fmt.Sprint("before", i)); err != nil {
						t.Fatalf("a -> %s:8080 before the change: %v", addr, err)
					}
				}
				conns = append(conns, c)
			}

			changed := time.Now()
			if err := os.WriteFile(snap, []byte(denyAllSnapshot(r)), 0o644); err != nil {
				t.Fatal(err)
			}

			if mode == "recheck" {
				// Exchange on every live connection in rounds (concurrently);
				// a connection counts as cut at the start of its first
				// failing exchange (it broke before that exchange's
				// deadline, and after the previous round).
				cutAt := make([]time.Duration, len(conns))
				errs := make([]error, len(conns))
				for live := len(conns); live > 0 && time.Since(changed) < 5*time.Second; time.Sleep(50 * time.Millisecond) {
					start := time.Since(changed)
					var wg sync.WaitGroup
					for i, c := range conns {
						if errs[i] == nil {
							wg.Go(func() {
								if errs[i] = quickEcho(c, "x"); errs[i] != nil {
									cutAt[i] = start
								}
							})
						}
					}
					wg.Wait()
					live = 0
					for _, err := range errs {
						if err == nil {
							live++
						}
					}
				}
				for i := range conns {
					if errs[i] == nil {
						t.Fatalf("connection %d still flows 5s after the deny-all policy\n%s", i, ag.logs.String())
					}
					t.Logf("connection %d cut within %v of the snapshot change: %v", i, cutAt[i].Round(time.Millisecond), errs[i])
					if cutAt[i] > 2*time.Second {
						t.Errorf("connection %d cut only after %v, want within 2s", i, cutAt[i])
					}
				}
				if !strings.Contains(ag.logs.String(), "established flows rechecked") {
					t.Errorf("agent never logged a recheck:\n%s", ag.logs.String())
				}
				if n := metricValue(t, httpInNode(r), "nfqpolicy_conntrack_cut_total"); n < float64(len(conns)) {
					t.Errorf("nfqpolicy_conntrack_cut_total %v, want at least %d", n, len(conns))
				}
			}

			// The change is in force for new connections, whatever the mode.
			denied := false
			for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
				c, err := r.A.Dial(r.B4, 8080, 300*time.Millisecond)
				if err != nil {
					denied = true
					break
				}
				c.Close()
				time.Sleep(100 * time.Millisecond)
			}
			if !denied {
				t.Fatal("new connections still allowed 5s after the deny-all policy")
			}

			if mode == "keep" {
				for i, c := range conns {
					for j := range 10 {
						if err := quickEcho(c, fmt.Sprint("after", j)); err != nil {
							t.Fatalf("connection %d broke under --established keep: %v", i, err)
						}
					}
				}
				if strings.Contains(ag.logs.String(), "established flows rechecked") {
					t.Errorf("a recheck ran under --established keep")
				}
			}
			if err := ag.stop(t); err != nil {
				t.Errorf("agent exit: %v", err)
			}
		})
	}
}
