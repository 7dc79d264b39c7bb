package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/nfqpolicy/nfqpolicy/e2e"
	"github.com/nfqpolicy/nfqpolicy/flowlog"
	"github.com/nfqpolicy/nfqpolicy/internal/apiserver"
	"github.com/nfqpolicy/nfqpolicy/scenario"
)

// apiFaultScenario: x/deny-all isolates x; y may reach x/b on 80 and 9000
// (the long-lived connections). y/c -> x/a:80 is denied until the test
// adds x/allow-a-from-y while the API server is away.
const apiFaultScenario = `
name: fault-apiserver-gone
source: integration/faults_test.go
objects:
  - {apiVersion: v1, kind: Namespace, metadata: {name: x, labels: {ns: x}}}
  - {apiVersion: v1, kind: Namespace, metadata: {name: y, labels: {ns: y}}}
  - {apiVersion: v1, kind: Node, metadata: {name: node-1}, status: {addresses: [{type: InternalIP, address: 192.168.79.1}]}}
  - {apiVersion: v1, kind: Pod, metadata: {name: a, namespace: x, labels: {pod: a}}, spec: {nodeName: node-1, containers: [{name: c, image: x}]}, status: {phase: Running, podIP: 10.244.79.10, podIPs: [{ip: 10.244.79.10}]}}
  - {apiVersion: v1, kind: Pod, metadata: {name: b, namespace: x, labels: {pod: b}}, spec: {nodeName: node-1, containers: [{name: c, image: x}]}, status: {phase: Running, podIP: 10.244.79.11, podIPs: [{ip: 10.244.79.11}]}}
  - {apiVersion: v1, kind: Pod, metadata: {name: c, namespace: y, labels: {pod: c}}, spec: {nodeName: node-1, containers: [{name: c, image: x}]}, status: {phase: Running, podIP: 10.244.79.12, podIPs: [{ip: 10.244.79.12}]}}
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: deny-all, namespace: x}
    spec: {podSelector: {}, policyTypes: [Ingress]}
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: allow-b-from-y, namespace: x}
    spec:
      podSelector: {matchLabels: {pod: b}}
      ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{port: 80}, {port: 9000}]}]
probes:
  - {from: y/c, to: x/a, port: 80, expect: deny}
  - {from: y/c, to: x/b, port: 80, expect: allow}
`

// gate is a forwarder from the node namespace to the API server that the
// test can cut: closed, it drops every connection it holds and refuses
// new ones, so the agent sees the API server gone.
type gate struct {
	open   atomic.Bool
	mu     sync.Mutex
	conns  map[net.Conn]bool
	target string
}

func (g *gate) serve(t *testing.T, l net.Listener) {
	g.conns = map[net.Conn]bool{}
	g.open.Store(true)
	serve(t, l, func(c net.Conn) {
		if !g.open.Load() {
			return // closed at once by serve
		}
		up, err := net.DialTimeout("tcp", g.target, 5*time.Second)
		if err != nil {
			return
		}
		g.mu.Lock()
		g.conns[c], g.conns[up] = true, true
		g.mu.Unlock()
		defer func() {
			g.mu.Lock()
			delete(g.conns, c)
			delete(g.conns, up)
			g.mu.Unlock()
			up.Close()
		}()
		go func() {
			_, _ = io.Copy(up, c)
			up.Close()
		}()
		_, _ = io.Copy(c, up)
	})
}

func (g *gate) cut() {
	g.open.Store(false)
	g.mu.Lock()
	defer g.mu.Unlock()
	for c := range g.conns {
		c.Close()
	}
}

// TestFaultAPIServerGone is row 2 of the fault matrix (see
// e2e/faults_kernel_test.go for the others and the line's fields): the
// agent loses the API server for 60 s — kube-apiserver is stopped, and
// the agent's connections to it cut — while traffic flows; meanwhile a
// policy is added (kube-apiserver restarted behind the cut for that).
// Enforcement of the last state must go on, the metrics and the health
// endpoint must report the outage, and the new policy must be enforced
// soon after the API server is back.
func TestFaultAPIServerGone(t *testing.T) {
	if testing.Short() {
		t.Skip("kernel and kube-apiserver test")
	}
	requireKernel(t)
	outage := 60 * time.Second
	ctx := context.Background()
	srv := apiserver.Start(t)
	client := srv.Client(t)
	ss, err := scenario.Parse("apifault.yaml", []byte(apiFaultScenario))
	if err != nil {
		t.Fatal(err)
	}
	bin, err := e2e.BuildAgent(ctx, "", t.TempDir())
	if err != nil {
		t.Fatalf("build the agent: %v", err)
	}
	log := zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel).With().Timestamp().Logger()
	cl, err := e2e.NewCluster(ctx, ss[0], "fapi", e2e.Options{Log: log, Timeout: time.Second})
	if err != nil {
		t.Fatalf("cluster: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent log, last lines:\n%s", cl.AgentLogTail("node-1"))
		}
		if err := cl.Close(); err != nil {
			t.Errorf("close the cluster: %v", err)
		}
	})
	if err := apiserver.NewLoader(client).Load(ctx, cl.State()); err != nil {
		t.Fatalf("load the scenario into the API server: %v", err)
	}
	dir := t.TempDir()
	flows := filepath.Join(dir, "flows.jsonl")
	const apiInNode = "127.0.0.1:6443"
	kubeconfig := filepath.Join(dir, "kubeconfig")
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: "https://" + apiInNode, CertificateAuthority: srv.Config.TLSClientConfig.CAFile}
	kc.AuthInfos["test"] = &clientcmdapi.AuthInfo{Token: srv.Config.BearerToken}
	kc.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "test"}
	kc.CurrentContext = "test"
	if err := clientcmd.WriteToFile(*kc, kubeconfig); err != nil {
		t.Fatal(err)
	}
	g := &gate{target: strings.TrimPrefix(srv.URL, "https://")}
	err = cl.StartAgents(ctx, bin, func(node string, ns *e2e.NS) ([]string, error) {
		var l net.Listener
		if err := ns.Do(func() (err error) { l, err = net.Listen("tcp", apiInNode); return err }); err != nil {
			return nil, fmt.Errorf("forwarder in %s: %w", ns.Name, err)
		}
		g.serve(t, l)
		return []string{"--kubeconfig", kubeconfig, "--deny-action", "reject", "--flow-log", flows, "--flow-log-rate", "0"}, nil
	})
	if err != nil {
		t.Fatalf("agents: %v", err)
	}

	// Long-lived connections y/c -> x/b:9000.
	clientNS, _, err := cl.Endpoint("y/c", 4)
	if err != nil {
		t.Fatal(err)
	}
	serverNS, serverAddr, err := cl.Endpoint("x/b", 4)
	if err != nil {
		t.Fatal(err)
	}
	target := netip.AddrPortFrom(serverAddr, 9000).String()
	var l net.Listener
	if err := serverNS.Do(func() (err error) { l, err = net.Listen("tcp", target); return err }); err != nil {
		t.Fatalf("echo server on %s: %v", target, err)
	}
	echo(t, l)
	var conns []net.Conn
	for i := range 20 {
		var c net.Conn
		err := clientNS.Do(func() (err error) {
			d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{Port: 33500 + i}}
			c, err = d.DialContext(ctx, "tcp", target)
			return err
		})
		if err != nil {
			t.Fatalf("established connection %d: %v", i, err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	cutCount := func() int {
		n := 0
		for i, c := range conns {
			if err := echoOnce(c, fmt.Sprintf("ping %d\n", i), 10*time.Second); err != nil {
				n++
			}
		}
		return n
	}

	res := struct{ cut, letThrough, refused, recoveredMS, lostUnrep int }{}
	deniedDecided := 0
	// probe sends one connection y/c -> x/a (deny) or x/b (allow) and
	// checks the verdict the current state must give.
	probe := func(to string, wantAllow bool) bool {
		allowed, detail, err := cl.ProbeOnce(ctx, scenario.Probe{From: "y/c", To: to, Port: 80, Protocol: "TCP", Family: 4})
		if err != nil {
			t.Fatalf("probe y/c -> %s: %v", to, err)
		}
		switch {
		case allowed && !wantAllow:
			res.letThrough++
		case !allowed && wantAllow:
			res.refused++
		}
		if !allowed && detail == "refused" {
			deniedDecided++
		}
		return allowed == wantAllow
	}
	probe("x/a", false)
	probe("x/b", true)
	metric := func(name string) string {
		body, code, err := cl.AgentGet(ctx, "node-1", "/metrics")
		if err != nil || code != 200 {
			return ""
		}
		for _, l := range strings.Split(string(body), "\n") {
			if strings.HasPrefix(l, name+" ") {
				return strings.TrimPrefix(l, name+" ")
			}
		}
		return ""
	}
	if v := metric("nfqpolicy_apiserver_connected"); v != "1" {
		t.Fatalf("nfqpolicy_apiserver_connected = %q before the outage, want 1", v)
	}

	// The outage.
	start := time.Now()
	g.cut()
	srv.StopAPIServer()
	reported := time.Duration(0)
	var health string
	restarted, changed := false, false
	for time.Since(start) < outage {
		probe("x/a", false)
		probe("x/b", true)
		if reported == 0 && metric("nfqpolicy_apiserver_connected") == "0" {
			reported = time.Since(start)
			body, code, _ := cl.AgentGet(ctx, "node-1", "/healthz/apiserver")
			health = fmt.Sprintf("HTTP %d %s", code, strings.TrimSpace(string(body)))
		}
		// Ten seconds before the end the API server comes back behind
		// the cut, and the policy changes there.
		if !restarted && time.Since(start) > outage-10*time.Second {
			srv.RestartAPIServer(t)
			restarted = true
			_, err := client.NetworkingV1().NetworkPolicies("x").Create(ctx, &networkingv1.NetworkPolicy{
				ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "allow-a-from-y"},
				Spec: networkingv1.NetworkPolicySpec{
					PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pod": "a"}},
					Ingress: []networkingv1.NetworkPolicyIngressRule{{
						From:  []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"ns": "y"}}}},
						Ports: []networkingv1.NetworkPolicyPort{{Port: ptr(intstr.FromInt32(80))}},
					}},
				},
			}, metav1.CreateOptions{})
			if err != nil {
				t.Fatalf("create the policy while the agent is cut off: %v", err)
			}
			changed = true
		}
		time.Sleep(500 * time.Millisecond)
	}
	if !changed {
		t.Fatal("the policy was not changed during the outage")
	}
	cutDuring := cutCount()
	if err := cl.AgentsAlive(); err != nil {
		t.Fatal(err)
	}
	// Back: the new policy must let y/c into x/a.
	back := time.Now()
	g.open.Store(true)
	recovered := time.Duration(-1)
	for time.Since(back) < 120*time.Second {
		allowed, _, err := cl.ProbeOnce(ctx, scenario.Probe{From: "y/c", To: "x/a", Port: 80, Protocol: "TCP", Family: 4})
		if err != nil {
			t.Fatal(err)
		}
		if allowed {
			recovered = time.Since(back)
			break
		}
		deniedDecided++ // refused by the old state: a record
		time.Sleep(50 * time.Millisecond)
	}
	res.recoveredMS = int(recovered.Milliseconds())
	reconnected := time.Duration(-1)
	for time.Since(back) < 120*time.Second {
		if metric("nfqpolicy_apiserver_connected") == "1" {
			reconnected = time.Since(back)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	res.cut = max(cutDuring, cutCount())
	probe("x/b", true)

	// Every refused probe is one denial the agent decided: one record.
	var records, lost int
	deadline := time.Now().Add(10 * time.Second)
	for {
		records, lost = 0, 0
		if f, err := os.Open(flows); err == nil {
			sc := bufio.NewScanner(f)
			for sc.Scan() {
				var e flowlog.Entry
				if json.Unmarshal(sc.Bytes(), &e) != nil {
					t.Errorf("flow log line %q", sc.Text())
					continue
				}
				lost += int(e.Lost)
				if !e.IsSummary() && e.Verdict == "deny" {
					records++
				}
			}
			f.Close()
		}
		if records+lost >= deniedDecided || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	res.lostUnrep = max(0, deniedDecided-records-lost)
	t.Logf("outage %v: reported by nfqpolicy_apiserver_connected 0 after %v; /healthz/apiserver: %s; the policy added during it enforced %v after the API server was reachable again; the metric back at 1 after %v; %d denials decided, %d records",
		outage, reported.Round(time.Millisecond), health, recovered.Round(time.Millisecond), reconnected.Round(time.Millisecond), deniedDecided, records)
	fmt.Printf("fault apiserver-gone: established_cut=%d new_let_through=%d new_refused=%d recovered_ms=%d records_lost_unreported=%d\n",
		res.cut, res.letThrough, res.refused, res.recoveredMS, res.lostUnrep)
	if res.cut != 0 || res.letThrough != 0 || res.refused != 0 || res.lostUnrep != 0 {
		t.Errorf("during the outage: %d established cut, %d denied let through, %d allowed refused, %d records lost unreported; want all 0",
			res.cut, res.letThrough, res.refused, res.lostUnrep)
	}
	if reported == 0 {
		t.Errorf("nfqpolicy_apiserver_connected never went to 0 during the outage")
	}
	if !strings.HasPrefix(health, "HTTP 503") {
		t.Errorf("/healthz/apiserver during the outage: %q, want 503", health)
	}
	if recovered < 0 {
		t.Errorf("the policy added during the outage was not enforced within 120s of the API server's return")
	}
}

func ptr[T any](v T) *T { return &v }
