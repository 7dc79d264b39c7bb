package realcluster

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nfqpolicy/nfqpolicy/internal/netns"
)

// attempt is one new connection a prober made.
type attempt struct {
	start     time.Time
	localPort int
	ok        bool
}

// prober opens a new connection from ns to addr every interval until
// stopped, each with a 1 s timeout, and records every attempt.
type prober struct {
	mu       sync.Mutex
	attempts []attempt
	// nextPort, when set, is the local port of the next attempt: each
	// attempt binds its own, so a flow log record can be matched to it
	// even when the connection never completes.
	nextPort atomic.Int32
}

func (p *prober) run(ctx context.Context, ns *netns.NS, addr string, interval time.Duration, wg *sync.WaitGroup) {
	defer wg.Done()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := attempt{start: time.Now()}
			dctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			// The socket is bound first so that its port is known even
			// when the connection never completes.
			var c net.Conn
			d := net.Dialer{}
			if p.nextPort.Load() != 0 {
				a.localPort = int(p.nextPort.Add(1))
				d.LocalAddr = &net.TCPAddr{Port: a.localPort}
			}
			err := ns.Do(func() error {
				var err error
				c, err = d.DialContext(dctx, "tcp", addr)
				return err
			})
			if err == nil {
				a.ok = true
				c.Close()
			}
			p.mu.Lock()
			p.attempts = append(p.attempts, a)
			p.mu.Unlock()
		}()
	}
}

// TestRealClusterRollingUpdate: `kubectl rollout restart` of the nfqpolicy
// DaemonSet while long-lived connections carry requests, allowed clients
// open new connections and a denied client keeps trying. Prints the
// fault-matrix line (issue 14, row rolling-update); no established
// connection may be cut, no denied flow let through, and every denied flow
// an agent decided must be in the node's flow log or counted as lost.
func TestRealClusterRollingUpdate(t *testing.T) {
	c, dep := agentCluster(t)
	ns := testNamespace(t, c)
	ctx := context.Background()
	cp := ControlPlaneIP.String() + "/32"
	if err := c.Apply(ctx, agnhostPod(ns, "server", "node-2", map[string]string{"app": "server"}, "netexec", "--http-port=8080")+"\n---\n"+
		fmt.Sprintf(defaultDenyIngress, ns)+"---\n"+ingressFromIPBlock(ns, "allow-cp", cp, 8080)); err != nil {
		t.Fatal(err)
	}
	ip := waitPods(t, c, ns, "server")["server"]
	addr := net.JoinHostPort(ip, "8080")
	node1 := c.Nodes[0].NS
	eventuallyFrom(t, "allowed from the control plane", c.CP, addr, true)
	eventuallyFrom(t, "denied from node-1", node1, addr, false)

	// 20 long-lived keep-alive connections, one request every 200 ms each.
	const established = 20
	var cut atomic.Int32
	var requests atomic.Int64
	stop := make(chan struct{})
	var estWG sync.WaitGroup
	for i := range established {
		conn, err := DialFrom(ctx, c.CP, addr)
		if err != nil {
			t.Fatalf("established connection %d: %v", i, err)
		}
		estWG.Add(1)
		go func() {
			defer estWG.Done()
			defer conn.Close()
			r := bufio.NewReader(conn)
			for {
				select {
				case <-stop:
					return
				case <-time.After(200 * time.Millisecond):
				}
				_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := io.WriteString(conn, "GET /hostname HTTP/1.1\r\nHost: server\r\n\r\n"); err != nil {
					t.Logf("established connection %d cut: %v", i, err)
					cut.Add(1)
					return
				}
				resp, err := http.ReadResponse(r, nil)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				if err != nil {
					t.Logf("established connection %d cut: %v", i, err)
					cut.Add(1)
					return
				}
				requests.Add(1)
			}
		}()
	}

	// Watch node-2's agent pods: when the old one got SIGTERM and when the
	// new one became ready bound the window in which no agent decides.
	type podTimes struct{ term, ready time.Time }
	var pmu sync.Mutex
	agents := map[string]*podTimes{}
	pctx, pcancel := context.WithCancel(ctx)
	var pwg sync.WaitGroup
	pwg.Add(1)
	go func() {
		defer pwg.Done()
		for pctx.Err() == nil {
			list, err := c.Client.CoreV1().Pods(AgentNamespace).List(pctx, metav1.ListOptions{LabelSelector: AgentLabel, FieldSelector: "spec.nodeName=node-2"})
			if err == nil {
				pmu.Lock()
				for _, p := range list.Items {
					pt := agents[p.Name]
					if pt == nil {
						pt = &podTimes{}
						agents[p.Name] = pt
					}
					if p.DeletionTimestamp != nil && pt.term.IsZero() {
						grace := int64(30)
						if p.DeletionGracePeriodSeconds != nil {
							grace = *p.DeletionGracePeriodSeconds
						}
						pt.term = p.DeletionTimestamp.Add(-time.Duration(grace) * time.Second)
					}
					for _, cond := range p.Status.Conditions {
						if cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue && pt.ready.IsZero() {
							pt.ready = cond.LastTransitionTime.Time
						}
					}
				}
				pmu.Unlock()
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()

	var allowed, denied prober
	denied.nextPort.Store(20000)
	probeCtx, probeCancel := context.WithCancel(ctx)
	var probeWG sync.WaitGroup
	probeWG.Add(2)
	go allowed.run(probeCtx, c.CP, addr, 100*time.Millisecond, &probeWG)
	go denied.run(probeCtx, node1, addr, 100*time.Millisecond, &probeWG)

	time.Sleep(2 * time.Second)
	testStart := time.Now().Add(-2 * time.Second)
	if _, err := c.Kubectl(ctx, "-n", AgentNamespace, "rollout", "restart", "daemonset/"+AgentDaemonSet); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Kubectl(ctx, "-n", AgentNamespace, "rollout", "status", "daemonset/"+AgentDaemonSet, "--timeout=4m"); err != nil {
		t.Fatal(err)
	}
	faultEnd := time.Now()
	time.Sleep(3 * time.Second)
	probeCancel()
	probeWG.Wait()
	close(stop)
	estWG.Wait()
	pcancel()
	pwg.Wait()
	if err := dep.WaitReady(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}

	letThrough, refused := 0, 0
	for _, a := range denied.attempts {
		if a.ok {
			letThrough++
		}
	}
	recovered := time.Duration(-1)
	for _, a := range allowed.attempts {
		if !a.ok {
			refused++
		} else if !a.start.Before(faultEnd) && (recovered < 0 || a.start.Sub(faultEnd) < recovered) {
			recovered = a.start.Sub(faultEnd)
		}
	}
	if recovered < 0 {
		t.Fatalf("no allowed connection succeeded after the rollout (%d attempts)", len(allowed.attempts))
	}

	// Denied attempts an agent decided must each have a flow log record,
	// unless the log reports records lost or rate-limited. Attempts made
	// while no agent ran on node-2 (old one terminating to new one ready,
	// widened by a second for the API's second-resolution times) were
	// never decided and have none.
	pmu.Lock()
	var windows [][2]time.Time
	var termOld, readyNew time.Time
	for _, pt := range agents {
		if !pt.term.IsZero() {
			termOld = pt.term
		}
	}
	for _, pt := range agents {
		if pt.term.IsZero() && pt.ready.After(termOld) {
			readyNew = pt.ready
		}
	}
	pmu.Unlock()
	if termOld.IsZero() || readyNew.IsZero() {
		t.Fatalf("did not see node-2's agent replaced (pods seen: %d)", len(agents))
	}
	windows = append(windows, [2]time.Time{termOld.Add(-time.Second), readyNew.Add(time.Second)})
	logData, err := os.ReadFile(evidenceFile("node-2", "flows.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	logText := string(logData)
	logged := map[int]bool{}
	var reported uint64
	for _, line := range strings.Split(logText, "\n") {
		var r struct {
			Time        time.Time `json:"time"`
			Verdict     string    `json:"verdict"`
			Src         string    `json:"src"`
			SrcPort     int       `json:"src_port"`
			Dst         string    `json:"dst"`
			DstPort     int       `json:"dst_port"`
			Lost        uint64    `json:"lost"`
			RateLimited uint64    `json:"rate_limited"`
		}
		if json.Unmarshal([]byte(line), &r) != nil || r.Time.Before(testStart) {
			continue
		}
		reported += r.Lost + r.RateLimited
		if r.Verdict == "deny" && r.Src == c.Nodes[0].IP.String() && r.Dst == ip && r.DstPort == 8080 {
			logged[r.SrcPort] = true
		}
	}
	var missing uint64
	for _, a := range denied.attempts {
		if a.localPort == 0 || logged[a.localPort] {
			continue
		}
		inWindow := false
		for _, w := range windows {
			if !a.start.Before(w[0]) && !a.start.After(w[1]) {
				inWindow = true
			}
		}
		if !inWindow {
			missing++
		}
	}
	unreported := uint64(0)
	if missing > reported {
		unreported = missing - reported
	}
	line := fmt.Sprintf("fault rolling-update: established_cut=%d new_let_through=%d new_refused=%d recovered_ms=%d records_lost_unreported=%d",
		cut.Load(), letThrough, refused, recovered.Milliseconds(), unreported)
	fmt.Println(line)
	t.Logf("%s (%d requests on %d established connections; %d allowed and %d denied new connections tried; node-2 had no agent %v..%v)",
		line, requests.Load(), established, len(allowed.attempts), len(denied.attempts), termOld.Format("15:04:05"), readyNew.Format("15:04:05"))
	if cut.Load() != 0 || letThrough != 0 || unreported != 0 {
		t.Fatalf("rolling update: %s", line)
	}
}
