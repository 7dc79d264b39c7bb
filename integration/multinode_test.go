package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/nfqpolicy/nfqpolicy/e2e"
	"github.com/nfqpolicy/nfqpolicy/internal/apiserver"
	"github.com/nfqpolicy/nfqpolicy/scenario"
)

// The multi-node test's scenario and the roles it plays in it: client
// (node-2) may reach backend (node-1) on any port, since no policy
// selects either; a deny-all ingress in backend's namespace "default"
// cuts that, while db (also in "default") stays reachable from client on
// 6379 through the scenario's own policy, which deny-all does not narrow.
const (
	multiNodeScenario = "../testdata/conformance/public/seed-1-docs-test-network-policy.yaml"
	mnClient          = "myproject/client"
	mnServer          = "default/backend"
	mnServerNS        = "default"
	// mnPort is served by the test's echo server on backend; no probe of
	// the scenario uses it.
	mnPort = 18080
	// mnFirstSourcePort starts the source ports of the test's own
	// connections, below the range e2e's probes bind (40000 up), so the
	// two never collide.
	mnFirstSourcePort = 33000
	// mnCutWithin bounds how long the established connection may live on
	// after the policy was created.
	mnCutWithin = 5 * time.Second
)

// TestFullStackMultiNode runs the multi-node netns cluster of a public
// scenario (2 nodes, 5 pods, external addresses) with one `nfqpolicy run
// --kubeconfig --established recheck` per node, fed by a real
// kube-apiserver that holds the scenario's objects (pods with their status,
// as a kubelet writes it). Every probe of the scenario must get its
// expected verdict from the kernel. Then a NetworkPolicy created through
// the API must cut a live cross-node TCP connection within seconds (the
// destination agent's recheck counts the cut) while the scenario's probes
// all keep their verdicts, and deleting it must let new connections
// through again.
func TestFullStackMultiNode(t *testing.T) {
	if testing.Short() {
		t.Skip("kernel and kube-apiserver test")
	}
	requireKernel(t, "conntrack")
	t0 := time.Now()
	ctx := context.Background()
	srv := apiserver.Start(t)
	client := srv.Client(t)

	ss, err := scenario.Load(multiNodeScenario)
	if err != nil {
		t.Fatal(err)
	}
	s := ss[0]
	bin, err := e2e.BuildAgent(ctx, "", t.TempDir())
	if err != nil {
		t.Fatalf("build the agent: %v", err)
	}

	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel).With().Timestamp().Logger()
	cl, err := e2e.NewCluster(ctx, s, "fsmn", e2e.Options{Log: log})
	if err != nil {
		t.Fatalf("cluster: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range cl.Nodes() {
				t.Logf("agent of %s (log %s), last lines:\n%s", n, cl.AgentLog(n), cl.AgentLogTail(n))
			}
		}
		if err := cl.Close(); err != nil {
			t.Errorf("close the cluster: %v", err)
		}
		mine := fmt.Sprintf("%s%d-fsmn-", e2e.NamePrefix, os.Getpid())
		entries, _ := os.ReadDir("/run/netns")
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), mine) {
				t.Errorf("namespace %s left behind", e.Name())
			}
		}
	})
	state := cl.State()
	if len(cl.Nodes()) < 2 {
		t.Fatalf("scenario has nodes %v, want at least 2", cl.Nodes())
	}
	podsOn := map[string]int{}
	podNode := map[string]string{}
	for _, p := range state.Pods {
		podsOn[p.Spec.NodeName]++
		podNode[p.Namespace+"/"+p.Name] = p.Spec.NodeName
	}
	for _, n := range cl.Nodes() {
		if podsOn[n] == 0 {
			t.Fatalf("node %s has no pod; the test needs pods on every node", n)
		}
	}
	if podNode[mnClient] == podNode[mnServer] {
		t.Fatalf("%s and %s are both on %s: the live connection must cross nodes", mnClient, mnServer, podNode[mnClient])
	}

	// The API server holds the whole state before any agent starts, so
	// each agent's informers list it complete: the first state they
	// compile is the scenario's, never a partial one.
	loader := apiserver.NewLoader(client)
	if err := loader.Load(ctx, state); err != nil {
		t.Fatalf("load the scenario into the API server: %v", err)
	}

	// Every node namespace gets a forwarder on its loopback to the API
	// server on the root namespace's: one kubeconfig serves all agents.
	const apiInNode = "127.0.0.1:6443"
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: "https://" + apiInNode, CertificateAuthority: srv.Config.TLSClientConfig.CAFile}
	kc.AuthInfos["test"] = &clientcmdapi.AuthInfo{Token: srv.Config.BearerToken}
	kc.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "test"}
	kc.CurrentContext = "test"
	if err := clientcmd.WriteToFile(*kc, kubeconfig); err != nil {
		t.Fatal(err)
	}
	apiTarget := strings.TrimPrefix(srv.URL, "https://")
	tAgents := time.Now()
	err = cl.StartAgents(ctx, bin, func(node string, ns *e2e.NS) ([]string, error) {
		var l net.Listener
		if err := ns.Do(func() (err error) { l, err = net.Listen("tcp", apiInNode); return err }); err != nil {
			return nil, fmt.Errorf("forwarder in %s: %w", ns.Name, err)
		}
		forward(t, l, apiTarget)
		return []string{"--kubeconfig", kubeconfig, "--established", "recheck"}, nil
	})
	if err != nil {
		t.Fatalf("agents: %v", err)
	}
	compiled := waitCompiledStable(t, cl, nil)
	t.Logf("%d agents ready and compiled after %v (compiles %v)", len(compiled), time.Since(tAgents).Round(time.Millisecond), compiled)

	// 1. Every probe of the scenario, as real traffic.
	rep := cl.Probe(ctx)
	checkReport(t, rep, "loaded from the API server")
	if a := rep.Agents; a.Allowed == 0 || a.Denied == 0 || a.VerdictErrors != 0 || a.NoBufs != 0 {
		t.Errorf("agents' counters %+v: want allowed and denied first packets, no verdict errors or ENOBUFS", a)
	}
	// All probes met the state compiled from the API server, not a later one.
	if now := readCompiles(t, cl); !equalCounts(now, compiled) {
		t.Errorf("compile counters moved during the probes with no API change: %v, then %v", compiled, now)
	}
	if t.Failed() {
		t.FailNow()
	}

	// 2. A live connection across nodes, then a policy through the API.
	clientNS, _, err := cl.Endpoint(mnClient, 4)
	if err != nil {
		t.Fatal(err)
	}
	serverNS, serverAddr, err := cl.Endpoint(mnServer, 4)
	if err != nil {
		t.Fatal(err)
	}
	target := netip.AddrPortFrom(serverAddr, mnPort).String()
	var l net.Listener
	if err := serverNS.Do(func() (err error) { l, err = net.Listen("tcp", target); return err }); err != nil {
		t.Fatalf("echo server on %s: %v", target, err)
	}
	echo(t, l)
	var sport atomic.Uint32
	sport.Store(mnFirstSourcePort)
	dial := func(timeout time.Duration) (net.Conn, error) {
		var c net.Conn
		err := clientNS.Do(func() (err error) {
			d := net.Dialer{Timeout: timeout, LocalAddr: &net.TCPAddr{Port: int(sport.Add(1))}}
			c, err = d.DialContext(ctx, "tcp", target)
			return err
		})
		return c, err
	}
	conn, err := dial(time.Second)
	if err != nil {
		t.Fatalf("%s -> %s %s: no connection before any change: %v", mnClient, mnServer, target, err)
	}
	defer conn.Close()
	for i := range 3 {
		if err := echoOnce(conn, fmt.Sprintf("before %d\n", i), time.Second); err != nil {
			t.Fatalf("live connection %s -> %s before the policy: %v", mnClient, target, err)
		}
	}
	serverNode := podNode[mnServer]
	cutsBefore := agentMetric(t, cl, serverNode, "nfqpolicy_conntrack_cut_total")

	tCreate := time.Now()
	_, err = client.NetworkingV1().NetworkPolicies(mnServerNS).Create(ctx, &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: mnServerNS, Name: "deny-all-ingress"},
		Spec:       networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create the policy: %v", err)
	}
	var cutAfter time.Duration
	for i := 0; ; i++ {
		if err := echoOnce(conn, fmt.Sprintf("after %d\n", i), 300*time.Millisecond); err != nil {
			cutAfter = time.Since(tCreate)
			t.Logf("live connection cut %v after the policy was created, including the 300ms read deadline (%v)", cutAfter.Round(time.Millisecond), err)
			break
		}
		if time.Since(tCreate) > mnCutWithin {
			t.Fatalf("live connection %s -> %s still works %v after deny-all was created in %s", mnClient, target, mnCutWithin, mnServerNS)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Every agent saw the change through its informers, not only the one
	// that cut.
	waitCompiledStable(t, cl, compiled)
	// Cut, not merely delayed: it stays dead.
	time.Sleep(time.Second)
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	_, _ = conn.Write([]byte("still there?\n"))
	if n, err := conn.Read(make([]byte, 64)); n > 0 {
		t.Fatalf("the connection delivered %d bytes (%v) after it was cut", n, err)
	}
	if cuts := agentMetric(t, cl, serverNode, "nfqpolicy_conntrack_cut_total"); cuts <= cutsBefore {
		t.Errorf("agent of %s: nfqpolicy_conntrack_cut_total %v, was %v: the recheck did not cut the connection", serverNode, cuts, cutsBefore)
	}
	if c, err := dial(time.Second); err == nil {
		c.Close()
		t.Fatalf("new connection %s -> %s allowed with deny-all in %s", mnClient, target, mnServerNS)
	}
	// What other policies allow still passes: deny-all narrows nothing any
	// probe of the scenario expects, so the whole scenario holds again.
	rep2 := cl.Probe(ctx)
	checkReport(t, rep2, "with deny-all-ingress in "+mnServerNS)
	if t.Failed() {
		t.FailNow()
	}

	// 3. Delete it: new connections work again.
	if err := client.NetworkingV1().NetworkPolicies(mnServerNS).Delete(ctx, "deny-all-ingress", metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete the policy: %v", err)
	}
	tDelete := time.Now()
	for {
		// A short timeout: a dropped SYN is not retried before 1s, so
		// each attempt is one SYN and the time measured is the agents'.
		c, err := dial(300 * time.Millisecond)
		if err == nil {
			err = echoOnce(c, "again\n", time.Second)
			c.Close()
			if err == nil {
				t.Logf("new connections allowed %v after the policy was deleted", time.Since(tDelete).Round(time.Millisecond))
				break
			}
		}
		if time.Since(tDelete) > 10*time.Second {
			t.Fatalf("new connection %s -> %s still fails 10s after the policy was deleted: %v", mnClient, target, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := cl.AgentsAlive(); err != nil {
		t.Fatal(err)
	}
	t.Logf("multi-node full stack: %d+%d probes, cut after %v, total %v",
		rep.Passed, rep2.Passed, cutAfter.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
}

// checkReport fails the test for every probe whose kernel verdict differs
// from the scenario's, and logs every verdict.
func checkReport(t *testing.T, rep *e2e.Report, when string) {
	t.Helper()
	for _, r := range rep.Results {
		switch {
		case r.Skipped():
			t.Log(e2e.FormatMismatch(r))
		case !r.Pass():
			t.Error(e2e.FormatMismatch(r))
		default:
			t.Log(e2e.FormatVerdict(r))
		}
	}
	if rep.Passed == 0 {
		t.Errorf("%s: no probe passed", when)
	}
	t.Logf("%s: %d passed, %d failed, %d skipped in %v", when, rep.Passed, rep.Failed, rep.Skipped, rep.Elapsed.Round(time.Millisecond))
}

// echoOnce sends one line and wants it back within timeout.
func echoOnce(c net.Conn, msg string, timeout time.Duration) error {
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte(msg)); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if got != msg {
		return fmt.Errorf("read %q, want %q", got, msg)
	}
	return nil
}

// agentCounters is the part of an agent's /debug/counters this test reads.
type agentCounters struct {
	Ready         bool   `json:"ready"`
	Compiles      uint64 `json:"compiles"`
	CompileErrors uint64 `json:"compile_errors"`
}

func readCounters(t *testing.T, cl *e2e.Cluster, node string) agentCounters {
	t.Helper()
	body, code, err := cl.AgentGet(context.Background(), node, "/debug/counters")
	if err != nil || code != 200 {
		t.Fatalf("agent of %s: /debug/counters: HTTP %d, %v", node, code, err)
	}
	var c agentCounters
	if err := json.Unmarshal(body, &c); err != nil {
		t.Fatalf("agent of %s: /debug/counters: %v", node, err)
	}
	return c
}

func readCompiles(t *testing.T, cl *e2e.Cluster) map[string]uint64 {
	t.Helper()
	out := map[string]uint64{}
	for _, n := range cl.Nodes() {
		c := readCounters(t, cl, n)
		if c.CompileErrors != 0 {
			t.Fatalf("agent of %s: %d compile errors", n, c.CompileErrors)
		}
		out[n] = c.Compiles
	}
	return out
}

func equalCounts(a, b map[string]uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// waitCompiledStable waits until every agent is ready, has compiled more
// often than before (nil: at least once), and its compile counter has
// stood still for half a second, i.e. the informers have delivered
// everything the API server changed. It returns the counters.
func waitCompiledStable(t *testing.T, cl *e2e.Cluster, before map[string]uint64) map[string]uint64 {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	var last map[string]uint64
	stableSince := time.Now()
	for {
		now := map[string]uint64{}
		moved := true
		for _, n := range cl.Nodes() {
			c := readCounters(t, cl, n)
			if c.CompileErrors != 0 {
				t.Fatalf("agent of %s: %d compile errors", n, c.CompileErrors)
			}
			now[n] = c.Compiles
			if !c.Ready || c.Compiles == 0 || c.Compiles <= before[n] {
				moved = false
			}
		}
		if !equalCounts(now, last) {
			last, stableSince = now, time.Now()
		}
		if moved && time.Since(stableSince) >= 500*time.Millisecond {
			return now
		}
		if time.Now().After(deadline) {
			t.Fatalf("agents did not compile a new state and settle within 15s: compiles %v, before %v", now, before)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// agentMetric reads one unlabelled sample from node's agent's /metrics.
func agentMetric(t *testing.T, cl *e2e.Cluster, node, name string) float64 {
	t.Helper()
	body, code, err := cl.AgentGet(context.Background(), node, "/metrics")
	if err != nil || code != 200 {
		t.Fatalf("agent of %s: /metrics: HTTP %d, %v", node, code, err)
	}
	for line := range strings.Lines(string(body)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("agent of %s: metric %s: %v", node, name, err)
			}
			return f
		}
	}
	t.Fatalf("agent of %s: no %s in /metrics", node, name)
	return 0
}
