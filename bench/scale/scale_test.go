package scale

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/nfqpolicy/nfqpolicy/internal/apiserver"
	"github.com/nfqpolicy/nfqpolicy/internal/netns"
)

var (
	flagBin      = flag.String("nfqpolicy", "", "the agent binary to run (the harness skips without it)")
	flagLadder   = flag.String("ladder", "1000/100,5000/500,10000/2000", "steps as pods/policies, comma-separated, growing")
	flagChurn    = flag.String("churn", "20,100", "churn rates (changes/s) measured at every step")
	flagNodes    = flag.Int("nodes", 50, "Node objects the pods are spread over")
	flagAgents   = flag.Int("agents", 1, "agents (node namespaces); agent 0 carries the probes, the others only watch")
	flagChanges  = flag.Int("changes", 100, "policy changes (and new pods) measured per churn window, at least")
	flagWindow   = flag.Duration("window-max", 90*time.Second, "longest churn window (fewer samples are reported as such)")
	flagProfile  = flag.String("profile", "", "directory for agent 0's CPU profiles, one per churn window")
	flagAgentArg = flag.String("agent-args", "", "extra arguments for every agent, space-separated")
	flagCNP      = flag.Int("cnp", 20, "ClusterNetworkPolicies per tier (Admin and Baseline) over the generated namespaces, 2% of the churn edits them; 0: none, no CRD")
)

// Probe pods on node 0 (host numbers in its pod CIDR, above the generated
// pods'): a client, servers whose policy flips, a server only new pods of
// the right labels may reach, and the new pods themselves.
const (
	hostClient    = 250
	hostServer0   = 246 // .. 249
	hostNewServer = 245
	hostNewPod0   = 241 // .. 244
	flipPairs     = 4
	newPods       = 4
)

// TestScaleLadder is the scale harness behind `make bench-scale`: a real
// kube-apiserver, agents in network namespaces, the ladder of cluster
// sizes and churn rates. It prints one `scale ...` line per step.
func TestScaleLadder(t *testing.T) {
	if *flagBin == "" {
		t.Skip("scale harness: run through `make bench-scale` (needs -nfqpolicy BINARY)")
	}
	if os.Geteuid() != 0 {
		t.Skip("scale harness: needs root (network namespaces, iptables, NFQUEUE)")
	}
	steps, err := parseLadder(*flagLadder)
	if err != nil {
		t.Fatal(err)
	}
	rates, err := parseInts(*flagChurn)
	if err != nil {
		t.Fatalf("-churn: %v", err)
	}
	bin, err := filepath.Abs(*flagBin)
	if err != nil {
		t.Fatal(err)
	}
	if deleted, err := netns.Sweep(nsStem); err != nil {
		t.Logf("sweep: %v", err)
	} else if len(deleted) > 0 {
		t.Logf("deleted stale namespaces %v", deleted)
	}
	maxPods := steps[len(steps)-1].pods
	if maxPods > *flagNodes*(lastPodHost-firstPodHost+1)*9/10 {
		t.Fatalf("%d pods do not fit %d nodes' /24 pod CIDRs with room for churn: raise -nodes", maxPods, *flagNodes)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	srv := apiserver.Start(t)
	load := rest.CopyConfig(srv.Config)
	load.QPS, load.Burst = -1, 0 // the harness is the only client; no client-side throttling
	client, err := kubernetes.NewForConfig(load)
	if err != nil {
		t.Fatal(err)
	}
	w := newWorld(client, *flagNodes, 1)
	start := time.Now()
	if *flagCNP > 0 {
		if w.dyn, err = dynamic.NewForConfig(load); err != nil {
			t.Fatal(err)
		}
		if err := installCNPCRD(ctx, w.dyn); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.createNodes(ctx); err != nil {
		t.Fatal(err)
	}
	if err := w.grow(ctx, steps[0].pods, steps[0].policies); err != nil {
		t.Fatal(err)
	}
	if *flagCNP > 0 {
		// Over the namespaces of the last step, which exist from then on.
		if err := w.createCNPs(ctx, *flagCNP, *flagCNP, max(steps[len(steps)-1].pods/podsPerNS, 1)); err != nil {
			t.Fatal(err)
		}
	}
	pods, pols := w.counts()
	t.Logf("created %d nodes, %d pods, %d policies, %d ClusterNetworkPolicies in %v", *flagNodes, pods, pols, 2**flagCNP, time.Since(start).Round(time.Millisecond))

	dir := t.TempDir()
	var extra []string
	if *flagAgentArg != "" {
		extra = strings.Fields(*flagAgentArg)
	}
	var agents []*nodeNS
	for k := range *flagAgents {
		n, err := startNode(ctx, k, bin, dir, srv.Config, extra, t.Cleanup)
		if err != nil {
			t.Fatal(err)
		}
		agents = append(agents, n)
	}
	pr, err := setupProbes(ctx, t, client, agents[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range agents {
		if err := a.waitReady(ctx, 3*time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d agent(s) ready %v after start", len(agents), time.Since(start).Round(time.Millisecond))
	for k, a := range agents {
		// Everything an agent received until ready is its initial list (and
		// the probe objects' events): what a relist of every agent costs.
		fmt.Printf("scale initial sync agent%d: %d pods, %d policies: %.1f MiB received\n", k, pods, pols, float64(a.relay.down.Load())/(1<<20))
	}
	probeCtx, stopProbes := context.WithCancel(ctx)
	defer stopProbes()
	pr.watched = startWatchLog(probeCtx, client)
	pr.start(probeCtx)
	if err := pr.checkStart(ctx); err != nil {
		t.Fatal(err)
	}

	for i, st := range steps {
		if i > 0 {
			start := time.Now()
			if err := w.grow(ctx, st.pods, st.policies); err != nil {
				t.Fatal(err)
			}
			pods, pols := w.counts()
			t.Logf("grew to %d pods, %d policies in %v", pods, pols, time.Since(start).Round(time.Millisecond))
		}
		settle(ctx, t, agents[0])
		idle := measureIdle(t, agents[0], 5*time.Second)
		for _, rate := range rates {
			r := runWindow(ctx, t, w, pr, agents, st, rate, *flagChanges, *flagWindow)
			r.idle = idle
			r.print(t)
			settle(ctx, t, agents[0])
		}
	}
	load1, _ := os.ReadFile("/proc/loadavg")
	fmt.Printf("scale load average at the end: %s", load1)
}

type step struct{ pods, policies int }

func parseLadder(s string) ([]step, error) {
	var out []step
	for _, f := range strings.Split(s, ",") {
		a, b, ok := strings.Cut(strings.TrimSpace(f), "/")
		p, err1 := strconv.Atoi(a)
		q, err2 := strconv.Atoi(b)
		if !ok || err1 != nil || err2 != nil || p < podsPerNS || q < 0 {
			return nil, fmt.Errorf("-ladder step %q: want PODS/POLICIES with at least %d pods", f, podsPerNS)
		}
		if len(out) > 0 && (p < out[len(out)-1].pods || q < out[len(out)-1].policies) {
			return nil, fmt.Errorf("-ladder step %q: steps must grow", f)
		}
		out = append(out, step{p, q})
	}
	return out, nil
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%q: want a positive integer", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// probes are the flows whose verdicts the measured changes flip.
type probes struct {
	client  kubernetes.Interface
	flipped []int     // changes made so far per flip pair: its state, across windows
	flips   []*prober // client -> server i
	newPods []*prober // new pod j -> the new-pod server
	newIPs  []string
	node    *nodeNS
	watched *watchLog
}

func setupProbes(ctx context.Context, t *testing.T, c kubernetes.Interface, node *nodeNS) (*probes, error) {
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: probeNS}}, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	pr := &probes{client: c, node: node, flipped: make([]int, flipPairs)}
	pod := func(h int, name string, labels map[string]string) (*podNS, error) {
		p, err := newPodNS(ctx, node, h, t.Cleanup)
		if err != nil {
			return nil, err
		}
		if name == "" {
			return p, nil
		}
		_, err = writePod(ctx, c, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: probeNS, Name: name, Labels: labels},
			Spec: corev1.PodSpec{NodeName: nodeName(node.index)}}, p.addr.String(), nodeIP(node.index))
		return p, err
	}
	client, err := pod(hostClient, "probe-client", map[string]string{"role": "client"})
	if err != nil {
		return nil, err
	}
	for i := range flipPairs {
		s, err := pod(hostServer0+i, fmt.Sprintf("probe-s%d", i), map[string]string{"probe": fmt.Sprintf("s-%d", i)})
		if err != nil {
			return nil, err
		}
		if err := s.listen(t.Cleanup); err != nil {
			return nil, err
		}
		if i%2 == 0 { // flipped by updates; starts allowing the client
			if _, err := c.NetworkingV1().NetworkPolicies(probeNS).Create(ctx, gatePolicy(i, "client"), metav1.CreateOptions{}); err != nil {
				return nil, err
			}
		} // odd: flipped by create and delete; starts without a policy
		pr.flips = append(pr.flips, newProber(client, s.addr))
	}
	ns, err := pod(hostNewServer, "probe-newpod-server", map[string]string{"probe": "newpod-server"})
	if err != nil {
		return nil, err
	}
	if err := ns.listen(t.Cleanup); err != nil {
		return nil, err
	}
	gate := gatePolicy(0, "newclient")
	gate.Name, gate.Spec.PodSelector.MatchLabels = "newpod-gate", map[string]string{"probe": "newpod-server"}
	if _, err := c.NetworkingV1().NetworkPolicies(probeNS).Create(ctx, gate, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	for j := range newPods {
		p, err := pod(hostNewPod0+j, "", nil) // its Pod object comes and goes
		if err != nil {
			return nil, err
		}
		pr.newPods = append(pr.newPods, newProber(p, ns.addr))
		pr.newIPs = append(pr.newIPs, p.addr.String())
	}
	return pr, nil
}

// gatePolicy isolates probe server i and admits pods labelled role=from.
func gatePolicy(i int, from string) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: probeNS, Name: fmt.Sprintf("gate-%d", i)},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"probe": fmt.Sprintf("s-%d", i)}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{
				PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": from}}}}}},
		},
	}
}

const probeInterval = 20 * time.Millisecond

func (pr *probes) start(ctx context.Context) {
	for _, p := range append(append([]*prober{}, pr.flips...), pr.newPods...) {
		go p.run(ctx, probeInterval)
	}
}

// checkStart proves the probes see what the policies say before anything
// is measured: every flip server allows the client, and the new pods (not
// in the API yet) are denied as unknown pods.
func (pr *probes) checkStart(ctx context.Context) error {
	now := time.Now()
	for i, p := range pr.flips {
		if _, err := p.waitFor(ctx, allowed, now, 20*time.Second); err != nil {
			return fmt.Errorf("flip probe %d before any change: %w", i, err)
		}
	}
	for j, p := range pr.newPods {
		if _, err := p.waitFor(ctx, denied, now, 20*time.Second); err != nil {
			return fmt.Errorf("new-pod probe %d before its pod exists: %w", j, err)
		}
	}
	return nil
}

// flip makes change n of probe pair i: even pairs swap the admitted label
// by updating their policy, odd pairs create and delete theirs. It returns
// the verdict the probe must now see and when the API server accepted the
// change.
func (pr *probes) flip(ctx context.Context, i, n int) (verdict, time.Time, error) {
	api := pr.client.NetworkingV1().NetworkPolicies(probeNS)
	deny := n%2 == 0
	var err error
	if i%2 == 0 {
		from := "client"
		if deny {
			from = "nobody"
		}
		_, err = api.Update(ctx, gatePolicy(i, from), metav1.UpdateOptions{})
	} else if deny {
		_, err = api.Create(ctx, gatePolicy(i, "nobody"), metav1.CreateOptions{})
	} else {
		err = api.Delete(ctx, fmt.Sprintf("gate-%d", i), metav1.DeleteOptions{})
	}
	at := time.Now()
	if deny {
		return denied, at, err
	}
	return allowed, at, err
}

// samples collects delays from several goroutines.
type samples struct {
	mu       sync.Mutex
	d        []time.Duration
	api      []time.Duration
	watch    []time.Duration // the API server's delivery to a watcher, of the changes in d
	timeouts int
	errs     []string
}

func (s *samples) add(d, api time.Duration, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.timeouts++
		if len(s.errs) < 3 {
			s.errs = append(s.errs, err.Error())
		}
		return
	}
	s.d = append(s.d, d)
	s.api = append(s.api, api)
}

// addWatch records when the change behind the last sample reached a
// watcher, from the API server's answer at.
func (s *samples) addWatch(l *watchLog, key string, sent, at time.Time) {
	if got, ok := l.after(key, sent); ok {
		s.mu.Lock()
		s.watch = append(s.watch, max(got.Sub(at), 0))
		s.mu.Unlock()
	}
}

func (s *samples) n() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.d) + s.timeouts
}

const enforceTimeout = 10 * time.Second

// flipLoop flips pair i until ctx ends, measuring each change.
func (pr *probes) flipLoop(ctx context.Context, i int, s *samples, rnd *rand.Rand) {
	for ctx.Err() == nil {
		sent := time.Now()
		// A write cut short by the window's end may still have been
		// applied, so the context of the write is not the window's.
		want, at, err := pr.flip(context.WithoutCancel(ctx), i, pr.flipped[i])
		if err != nil {
			s.add(0, 0, err)
			sleep(ctx, time.Second)
			continue
		}
		pr.flipped[i]++
		d, err := pr.flips[i].waitFor(ctx, want, at, enforceTimeout)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			d = enforceTimeout // counted in the percentiles as what it is: at least this
			s.add(d, at.Sub(sent), nil)
			// Wait until the state caught up, or the next flip's measure is wrong.
			_, _ = pr.flips[i].waitFor(ctx, want, at, time.Minute)
		} else {
			s.add(d, at.Sub(sent), nil)
		}
		s.addWatch(pr.watched, fmt.Sprintf("np/gate-%d", i), sent, at)
		pause(ctx, rnd)
	}
}

// pause waits a random 0.1-1.1 s between changes: changes made at a fixed
// time after the previous one was enforced would fall at the same point
// of the agent's coalescing window every time (and measure that point,
// not the spread a user's changes see).
func pause(ctx context.Context, rnd *rand.Rand) {
	sleep(ctx, time.Duration(100+rnd.IntN(1000))*time.Millisecond)
}

// newPodLoop creates new pod j (its status with its IP is the moment the
// API server knows it), measures until its first flow is decided with its
// labels (allowed by newpod-gate, not denied as an unknown pod), deletes
// it and waits until it is unknown again.
func (pr *probes) newPodLoop(ctx context.Context, j int, s *samples, rnd *rand.Rand) {
	name := fmt.Sprintf("probe-new-%d", j)
	for ctx.Err() == nil {
		sent := time.Now()
		at, err := writePod(context.WithoutCancel(ctx), pr.client, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: probeNS, Name: name,
			Labels: map[string]string{"role": "newclient"}}, Spec: corev1.PodSpec{NodeName: nodeName(pr.node.index)}},
			pr.newIPs[j], nodeIP(pr.node.index))
		if err != nil {
			if ctx.Err() == nil {
				s.add(0, 0, err)
				_, _ = deletePod(ctx, pr.client, probeNS, name)
				sleep(ctx, time.Second)
			}
			continue
		}
		d, err := pr.newPods[j].waitFor(ctx, allowed, at, enforceTimeout)
		if ctx.Err() != nil {
			_, _ = deletePod(context.Background(), pr.client, probeNS, name)
			return
		}
		if err != nil {
			d = enforceTimeout
		}
		s.add(d, at.Sub(sent), nil)
		s.addWatch(pr.watched, "pod/"+name, sent, at)
		gone, err := deletePod(ctx, pr.client, probeNS, name)
		if err == nil {
			_, _ = pr.newPods[j].waitFor(ctx, denied, gone, time.Minute)
		}
		pause(ctx, rnd)
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// settle waits until agent 0 has caught up: no rebuild for 3 s.
func settle(ctx context.Context, t *testing.T, a *nodeNS) {
	deadline := time.Now().Add(3 * time.Minute)
	last, since := -1.0, time.Now()
	for time.Now().Before(deadline) && ctx.Err() == nil {
		m, err := a.metrics()
		if err == nil {
			if r := m["nfqpolicy_cluster_rebuilds_total"]; r != last {
				last, since = r, time.Now()
			} else if time.Since(since) >= 3*time.Second {
				return
			}
		}
		sleep(ctx, 250*time.Millisecond)
	}
	t.Logf("agent did not settle within 3 minutes")
}

type idleFigures struct {
	cores float64
	rss   int64
}

func measureIdle(t *testing.T, a *nodeNS, d time.Duration) idleFigures {
	u0, err := procUsage(a.agent.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(d)
	u1, err := procUsage(a.agent.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	return idleFigures{cores: cores(u0, u1), rss: u1.rss}
}

// window is one churn window's figures.
type window struct {
	st           step
	rate         int
	achieved     float64
	skipped      int64
	kinds        map[string]int64
	apiErrors    int64
	lastAPIErr   string
	enforce      Percentiles
	enforceAPI   Percentiles
	enforceWatch Percentiles
	podWatch     Percentiles
	enforceOut   int
	enforceErrs  []string
	pod          Percentiles
	podOut       int
	idle         idleFigures
	cores        float64
	rssMax       int64
	events       float64 // per second, agent 0
	relevant     float64
	rebuilds     float64
	compiles     float64
	compileMean  time.Duration
	bytesDown    float64 // per second, agent 0
	bytesDownAll float64 // all agents
	others       []string
	wall         time.Duration
	pods, pols   int
	cnps         int
	load         string
}

func runWindow(ctx context.Context, t *testing.T, w *world, pr *probes, agents []*nodeNS, st step, rate, changes int, maxWall time.Duration) *window {
	r := &window{st: st, rate: rate}
	a := agents[0]
	pid := a.agent.Process.Pid
	u0, err := procUsage(pid)
	if err != nil {
		t.Fatal(err)
	}
	m0, err := a.metrics()
	if err != nil {
		t.Fatal(err)
	}
	var down0 []int64
	var others0 []usage
	for _, n := range agents {
		down0 = append(down0, n.relay.down.Load())
		u, _ := procUsage(n.agent.Process.Pid)
		others0 = append(others0, u)
	}
	errs0 := w.apiErrors.Load()
	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var churned, skipped int64
	var kinds map[string]int64
	wg.Add(1)
	go func() { defer wg.Done(); churned, skipped, kinds = w.churn(wctx, rate) }()
	pol, pod := &samples{}, &samples{}
	for i := range pr.flips {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pr.flipLoop(wctx, i, pol, rand.New(rand.NewPCG(uint64(i), uint64(rate))))
		}()
	}
	for j := range pr.newPods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pr.newPodLoop(wctx, j, pod, rand.New(rand.NewPCG(uint64(j)+100, uint64(rate))))
		}()
	}
	if *flagProfile != "" {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sleep(wctx, 2*time.Second)
			path := filepath.Join(*flagProfile, fmt.Sprintf("agent-cpu-%dpods-%dpol-%dps.pprof", st.pods, st.policies, rate))
			if err := a.profile(15*time.Second, path); err != nil {
				t.Logf("profile: %v", err)
			}
		}()
	}
	start := time.Now()
	var rssMax int64
	for {
		sleep(ctx, time.Second)
		if u, err := procUsage(pid); err == nil && u.rss > rssMax {
			rssMax = u.rss
		}
		if (pol.n() >= changes && pod.n() >= changes) || time.Since(start) >= maxWall {
			break
		}
	}
	if *flagProfile != "" {
		path := filepath.Join(*flagProfile, fmt.Sprintf("agent-heap-%dpods-%dpol-%dps.pprof", st.pods, st.policies, rate))
		if err := a.save("/debug/pprof/heap", path); err != nil {
			t.Logf("heap profile: %v", err)
		}
	}
	u1, err := procUsage(pid)
	if err != nil {
		t.Fatal(err)
	}
	m1, err := a.metrics()
	if err != nil {
		t.Fatal(err)
	}
	r.wall = u1.at.Sub(u0.at)
	for k, n := range agents {
		r.bytesDownAll += float64(n.relay.down.Load()-down0[k]) / r.wall.Seconds()
		if k == 0 {
			r.bytesDown = float64(n.relay.down.Load()-down0[k]) / r.wall.Seconds()
			continue
		}
		u, err := procUsage(n.agent.Process.Pid)
		if err == nil {
			r.others = append(r.others, fmt.Sprintf("agent%d: cpu_cores=%.3f rss_mib=%d bytes_per_s=%.0f", k,
				cores(others0[k], u), u.rss>>20, float64(n.relay.down.Load()-down0[k])/r.wall.Seconds()))
		}
	}
	stop()
	wg.Wait()
	r.achieved = float64(churned) / time.Since(start).Seconds()
	r.skipped, r.kinds = skipped, kinds
	r.apiErrors = w.apiErrors.Load() - errs0
	if e := w.lastErr.Load(); e != nil && r.apiErrors > 0 {
		r.lastAPIErr = (*e).Error()
	}
	r.cores = cores(u0, u1)
	r.rssMax = max(rssMax, u1.rss)
	sec := r.wall.Seconds()
	d := func(k string) float64 { return m1[k] - m0[k] }
	r.events = d("nfqpolicy_watch_events_total") / sec
	r.relevant = d("nfqpolicy_watch_events_relevant_total")
	r.rebuilds = d("nfqpolicy_cluster_rebuilds_total")
	r.compiles = d("nfqpolicy_compile_duration_seconds_count")
	if r.compiles > 0 {
		r.compileMean = time.Duration(d("nfqpolicy_compile_duration_seconds_sum") / r.compiles * float64(time.Second))
	}
	r.enforce = Summarize(pol.d)
	r.enforceAPI = Summarize(pol.api)
	r.enforceWatch, r.podWatch = Summarize(pol.watch), Summarize(pod.watch)
	r.enforceOut, r.enforceErrs = pol.timeouts, pol.errs
	r.pod = Summarize(pod.d)
	r.podOut = pod.timeouts
	r.pods, r.pols = w.counts()
	w.mu.Lock()
	r.cnps = len(w.cnpNames)
	w.mu.Unlock()
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		r.load = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	return r
}

func (r *window) print(t *testing.T) {
	fmt.Printf("scale pods=%d policies=%d churn=%d/s: enforce_ms p50=%s p99=%s max=%s pod_ready_ms p99=%s rss_mib=%d cpu_cores=%.2f events_per_s=%.0f\n",
		r.st.pods, r.st.policies, r.rate, ms(r.enforce.P50), ms(r.enforce.P99), ms(r.enforce.Max), ms(r.pod.P99),
		r.rssMax>>20, r.cores, r.events)
	fmt.Printf("  samples: %d policy changes (%d failed), %d new pods (p50=%sms max=%sms, %d failed); API write p99 %sms\n",
		r.enforce.N, r.enforceOut, r.pod.N, ms(r.pod.P50), ms(r.pod.Max), r.podOut, ms(r.enforceAPI.P99))
	fmt.Printf("  churn: %.1f/s achieved over %v (%d ticks skipped, %d API errors) %v; cluster now %d pods, %d policies, %d ClusterNetworkPolicies\n",
		r.achieved, r.wall.Round(time.Second), r.skipped, r.apiErrors, r.kinds, r.pods, r.pols, r.cnps)
	fmt.Printf("  API server to a watcher (of the same changes): policies p50=%sms p99=%sms max=%sms, new pods p50=%sms p99=%sms max=%sms (%d, %d seen)\n",
		ms(r.enforceWatch.P50), ms(r.enforceWatch.P99), ms(r.enforceWatch.Max), ms(r.podWatch.P50), ms(r.podWatch.P99), ms(r.podWatch.Max), r.enforceWatch.N, r.podWatch.N)
	if r.lastAPIErr != "" {
		fmt.Printf("  last API error: %s\n", r.lastAPIErr)
	}
	saved := r.relevant - r.rebuilds
	fmt.Printf("  agent0: steady rss_mib=%d cpu_cores=%.3f; churn rss_mib=%d cpu_cores=%.3f; compiles=%.0f mean=%v; relevant events=%.0f rebuilds=%.0f saved=%.0f; watch bytes/s=%.0f (all agents %.0f)\n",
		r.idle.rss>>20, r.idle.cores, r.rssMax>>20, r.cores, r.compiles, r.compileMean.Round(time.Millisecond),
		r.relevant, r.rebuilds, saved, r.bytesDown, r.bytesDownAll)
	for _, o := range r.others {
		fmt.Printf("  %s\n", o)
	}
	fmt.Printf("  load average %s\n", r.load)
	for _, e := range r.enforceErrs {
		t.Logf("policy change error: %s", e)
	}
}
