package realcluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nfqpolicy/nfqpolicy/agents"
	"github.com/nfqpolicy/nfqpolicy/cluster"
	"github.com/nfqpolicy/nfqpolicy/filter"
	"github.com/nfqpolicy/nfqpolicy/k8swatch"
	"github.com/nfqpolicy/nfqpolicy/whatif"
)

// TestRealClusterTraceAndExplainLive reaches both nodes' agents from
// outside the cluster, through the API server only (package agents, which
// `nfqpolicy trace --kubeconfig` and `explain --live` use): the trace of a
// pod-to-pod flow from node-1 to node-2 shows both nodes' decisions,
// labelled and in time order, and the destination node's agent explains
// the flow against its live state. Then a default deny cuts the flow, the
// agents log it, and whatif, replaying the agents' own flow logs against
// the live cluster, says deleting that policy would let it through again.
func TestRealClusterTraceAndExplainLive(t *testing.T) {
	c, _ := agentCluster(t)
	ns := testNamespace(t, c)
	ctx := context.Background()
	if err := c.Apply(ctx, agnhostPod(ns, "server", "node-2", map[string]string{"app": "server"}, "netexec", "--http-port=8080")+"\n---\n"+
		agnhostPod(ns, "client", "node-1", map[string]string{"app": "client"}, "pause")); err != nil {
		t.Fatal(err)
	}
	ips := waitPods(t, c, ns, "server", "client")
	addr := ips["server"] + ":8080"
	eventually(t, c, ns, "client", addr, true)

	ac := agents.New(c.Client, agents.NewExecer(c.Config, c.Client), agents.Options{})
	as, err := ac.Find(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(as) != 2 || as[0].Node != "node-1" || as[1].Node != "node-2" {
		t.Fatalf("agents %v, want one on node-1 and one on node-2", as)
	}

	tctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	lines := make(chan agents.Line, 1000)
	done := make(chan error, 1)
	go func() {
		done <- ac.Trace(tctx, as, agents.TraceQuery{To: ips["server"], Port: "8080/TCP"}, agents.DefaultWindow,
			func(l agents.Line) error { lines <- l; return nil },
			func(a agents.Agent, err error) { t.Errorf("trace of %s on %s: %v", a, a.Node, err) })
	}()
	seen := map[string]bool{}
	var last time.Time
	for !(seen["node-1"] && seen["node-2"]) {
		if ok, out := connects(ctx, c, ns, "client", addr); !ok {
			t.Logf("connect: %s", out)
		}
	drain:
		for {
			select {
			case l := <-lines:
				var e struct {
					Node, Src, Verdict string
				}
				if err := json.Unmarshal(l.JSON, &e); err != nil {
					t.Fatalf("line %q: %v", l.JSON, err)
				}
				if e.Node != l.Node {
					t.Errorf("line labelled %s says node %q", l.Node, e.Node)
				}
				if l.Time.Before(last) {
					t.Errorf("%s line at %s printed after one at %s", l.Node, l.Time.Format(time.StampMicro), last.Format(time.StampMicro))
				}
				last = l.Time
				if e.Src == ips["client"] && e.Verdict == "allow" {
					seen[l.Node] = true
				}
			case <-time.After(2 * time.Second):
				break drain
			case <-tctx.Done():
				t.Fatalf("within 90 s the trace showed the client's flow on %v only", seen)
			}
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("trace ended with %v after its context was cancelled", err)
	}

	var buf bytes.Buffer
	err = ac.Run(ctx, as[1], []string{"explain", "--agent", ac.Socket(), "--from", ns + "/client", "--to", ns + "/server", "--port", "8080/TCP", "-o", "json"}, &buf)
	if err != nil {
		t.Fatal(err)
	}
	var e filter.Explanation
	if err := json.Unmarshal(buf.Bytes(), &e); err != nil {
		t.Fatalf("explain answer %q: %v", buf.String(), err)
	}
	if !strings.EqualFold(e.Verdict, "allow") || !strings.Contains(e.Flow, fmt.Sprintf("%s/server (%s)", ns, ips["server"])) {
		t.Errorf("live explanation %+v", e)
	}
	err = ac.Run(ctx, as[1], []string{"explain", "--agent", ac.Socket(), "--from", ns + "/client", "--to", ns + "/nope", "--port", "8080/TCP", "-o", "json"}, &buf)
	if err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("explaining an unknown pod: %v", err)
	}

	// whatif on the flow logs the agents wrote (denied flows, the
	// default selection) on the nodes' hostPath.
	if err := c.Apply(ctx, fmt.Sprintf(defaultDenyIngress, ns)); err != nil {
		t.Fatal(err)
	}
	eventually(t, c, ns, "client", addr, false)
	deadline := time.Now().Add(20 * time.Second)
	for {
		rd := whatif.NewReader()
		files, err := whatif.ExpandFiles([]string{evidenceFile("node-1", "flows.jsonl"), evidenceFile("node-2", "flows.jsonl")})
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			if err := rd.ReadFile(f, nil); err != nil {
				t.Fatal(err)
			}
		}
		current, err := k8swatch.List(ctx, c.Config)
		if err != nil {
			t.Fatal(err)
		}
		del := []cluster.Ref{{Kind: "NetworkPolicy", Namespace: ns, Name: "default-deny-ingress"}}
		proposed, err := cluster.Overlay(current, nil, del)
		if err != nil {
			t.Fatal(err)
		}
		before, err := whatif.NewState(current)
		if err != nil {
			t.Fatal(err)
		}
		after, err := whatif.NewState(proposed)
		if err != nil {
			t.Fatal(err)
		}
		res, err := whatif.Replay(rd.Log(), before, after, whatif.ChangedNames(nil, del))
		if err != nil {
			t.Fatal(err)
		}
		for _, ch := range res.Changes {
			if ch.SrcPod == ns+"/client" && ch.DstPod == ns+"/server" && ch.Port == 8080 {
				if ch.Before != "deny" || ch.After != "allow" || len(ch.Policies) != 1 || ch.Policies[0] != ns+"/default-deny-ingress" {
					t.Errorf("replayed change %+v", ch)
				}
				t.Logf("whatif on the agents' logs (%d records, %d flows): %s -> %s %d/TCP %s -> %s by %v (%d records on %v)",
					rd.Log().Records, len(rd.Log().Flows), ch.SrcPod, ch.DstPod, ch.Port, ch.Before, ch.After, ch.Policies, ch.Count, ch.Nodes)
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agents' flow logs (%v) hold no denied client -> server flow whose verdict deleting the policy flips: %d changes", files, len(res.Changes))
		}
		time.Sleep(time.Second)
	}
}
