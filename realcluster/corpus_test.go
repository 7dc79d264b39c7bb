package realcluster

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nfqpolicy/nfqpolicy/cluster"
	"github.com/nfqpolicy/nfqpolicy/scenario"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// corpusDefault is the representative handful of public scenarios run
// unless NFQPOLICY_CORPUS_ALL=1: named ports, TCP and UDP, namespace and
// pod selectors combined, default deny, and the seed-2 AND/OR selector
// pair.
var corpusDefault = []string{
	"should-allow-egress-access-on-one-named-port.yaml",
	"should-enforce-policy-based-on-multiple-podselectors-and-namespaceselectors.yaml",
	"should-support-a-default-deny-all-policy.yaml",
	"udp-should-enforce-policy-based-on-ports.yaml",
	"seed-2-and-selector-single-from-element.yaml",
	"seed-2-or-selectors-two-from-elements.yaml",
}

// TestRealClusterCorpus replays public corpus scenarios on the real
// two-node cluster: the scenario's namespaces and pods are created (pods
// spread over both nodes, each an agnhost porter serving every TCP and UDP
// port probed at it), its NetworkPolicies applied, and every probe run
// with agnhost connect from the source pod, so both ends of a cross-node
// flow are decided by two real agents.
func TestRealClusterCorpus(t *testing.T) {
	c, _ := agentCluster(t)
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "testdata", "conformance", "public")
	files := corpusDefault
	if os.Getenv("NFQPOLICY_CORPUS_ALL") == "1" {
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		files = files[:0:0]
		for _, e := range entries {
			if strings.HasSuffix(e.Name(), ".yaml") {
				files = append(files, e.Name())
			}
		}
	}
	start := time.Now()
	var total corpusTally
	var skipped []string
	ran := 0
	for _, f := range files {
		ss, err := scenario.Load(filepath.Join(dir, f))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, s := range ss {
			if why := corpusUnfit(s); why != "" {
				skipped = append(skipped, fmt.Sprintf("%s: %s", s.Name, why))
				continue
			}
			ran++
			tally := runCorpusScenario(t, c, s)
			t.Logf("%s: %d passed, %d failed, %d skipped (SCTP or IPv6) in %v", s.Name, tally.passed, tally.failed, tally.skipped,
				tally.took.Round(time.Second))
			total.add(tally)
		}
	}
	for _, s := range skipped {
		t.Logf("not run, does not fit the real cluster: %s", s)
	}
	t.Logf("corpus on the real cluster: %d scenarios run, %d not fitting; probes: %d passed, %d failed (%d passed only on the retry), %d skipped (SCTP or IPv6); %v",
		ran, len(skipped), total.passed, total.failed, total.retried, total.skipped, time.Since(start).Round(time.Second))
	if ran == 0 {
		t.Fatal("no scenario fits the real cluster")
	}
	if total.failed > 0 {
		t.Fail()
	}
}

type corpusTally struct {
	passed, failed, retried, skipped int
	took                             time.Duration
}

func (a *corpusTally) add(b corpusTally) {
	a.passed += b.passed
	a.failed += b.failed
	a.retried += b.retried
	a.skipped += b.skipped
}

// corpusUnfit says why a scenario cannot run on the real cluster, or "".
func corpusUnfit(s *scenario.Scenario) string {
	for _, p := range s.Cluster.Pods {
		if p.Spec.HostNetwork {
			return "hostNetwork pod " + p.Namespace + "/" + p.Name
		}
	}
	if len(s.Cluster.ClusterPolicies) > 0 {
		return "ClusterNetworkPolicies"
	}
	for _, np := range s.Cluster.Policies {
		var peers []networkingv1.NetworkPolicyPeer
		for _, r := range np.Spec.Ingress {
			peers = append(peers, r.From...)
		}
		for _, r := range np.Spec.Egress {
			peers = append(peers, r.To...)
		}
		for _, p := range peers {
			if p.IPBlock != nil {
				return "policy " + np.Namespace + "/" + np.Name + " has an ipBlock written for the scenario's fixed pod IPs"
			}
		}
	}
	usable := 0
	for _, p := range s.Probes {
		if p.Src.Kind != cluster.EndpointPod || p.Dst.Kind != cluster.EndpointPod {
			return fmt.Sprintf("probe %s has a node or external endpoint", p)
		}
		if corpusProbeRuns(p) {
			usable++
		}
	}
	if usable == 0 {
		return "no TCP or UDP IPv4 probe"
	}
	return ""
}

// corpusProbeRuns: the cluster is IPv4 only and its kernel has no SCTP.
func corpusProbeRuns(p scenario.Probe) bool {
	return p.Family == 4 && (p.Protocol == "TCP" || p.Protocol == "UDP")
}

// runCorpusScenario creates s's objects, runs its probes and deletes its
// namespaces.
func runCorpusScenario(t *testing.T, c *Cluster, s *scenario.Scenario) corpusTally {
	t.Helper()
	start := time.Now()
	ctx := context.Background()
	var nss []string
	for _, ns := range s.Cluster.Namespaces {
		nss = append(nss, ns.Name)
	}
	for _, p := range s.Cluster.Pods {
		if !contains(nss, p.Namespace) {
			nss = append(nss, p.Namespace)
		}
	}
	deleteNamespaces := func() {
		if len(nss) == 0 {
			return
		}
		dctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		args := append([]string{"delete", "namespace", "--ignore-not-found", "--wait=true", "--timeout=110s"}, nss...)
		if _, err := c.Kubectl(dctx, args...); err != nil {
			t.Errorf("%s: %v", s.Name, err)
		}
	}
	deleteNamespaces() // a previous run's leftovers
	defer deleteNamespaces()

	for _, name := range nss {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
		for _, n := range s.Cluster.Namespaces {
			if n.Name == name {
				ns.Labels = n.Labels
			}
		}
		if _, err := c.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
			t.Fatalf("%s: namespace %s: %v", s.Name, name, err)
		}
	}
	// The API server's service account controller must make the default
	// account before pods may be created in a namespace.
	waitCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for _, name := range nss {
		for {
			_, err := c.Client.CoreV1().ServiceAccounts(name).Get(waitCtx, "default", metav1.GetOptions{})
			if err == nil {
				break
			}
			if !apierrors.IsNotFound(err) || waitCtx.Err() != nil {
				t.Fatalf("%s: service account %s/default: %v", s.Name, name, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}

	served := corpusServed(s)

	for i, p := range s.Cluster.Pods {
		pod := corpusPod(p, c.Nodes[i%len(c.Nodes)].Name, c, served[p.Namespace+"/"+p.Name])
		if _, err := c.Client.CoreV1().Pods(p.Namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatalf("%s: pod %s/%s: %v", s.Name, p.Namespace, p.Name, err)
		}
	}
	ips := map[string]string{}
	for _, ns := range nss {
		var names []string
		for _, p := range s.Cluster.Pods {
			if p.Namespace == ns {
				names = append(names, p.Name)
			}
		}
		if len(names) == 0 {
			continue
		}
		for n, ip := range waitPods(t, c, ns, names...) {
			ips[ns+"/"+n] = ip
		}
	}
	for _, np := range s.Cluster.Policies {
		p := &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: np.Name, Namespace: np.Namespace, Labels: np.Labels},
			Spec:       np.Spec,
		}
		if _, err := c.Client.NetworkingV1().NetworkPolicies(np.Namespace).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatalf("%s: policy %s/%s: %v", s.Name, np.Namespace, np.Name, err)
		}
	}

	var probes []scenario.Probe
	tally := corpusTally{}
	for _, p := range s.Probes {
		if corpusProbeRuns(p) {
			probes = append(probes, p)
		} else {
			tally.skipped++
		}
	}
	addr := func(p scenario.Probe) string {
		return net.JoinHostPort(ips[p.To], strconv.Itoa(p.Port))
	}
	// The agents compile policies and pods asynchronously: wait until a
	// probe expected denied is denied (or 2 s when none is).
	settled := false
	for _, p := range probes {
		if p.Expect != scenario.Deny {
			continue
		}
		deadline := time.Now().Add(20 * time.Second)
		for time.Now().Before(deadline) {
			if ok, _, err := corpusConnect(ctx, c, p, addr(p)); err == nil && !ok {
				settled = true
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
		if !settled {
			t.Errorf("%s: %s still connects 20 s after the policies were created", s.Name, p)
		}
		break
	}
	if !settled {
		time.Sleep(2 * time.Second)
	}

	type result struct {
		ok  bool
		out string
		err error
	}
	run := func(ps []scenario.Probe) []result {
		res := make([]result, len(ps))
		sem := make(chan struct{}, 8)
		var wg sync.WaitGroup
		for i, p := range ps {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				ok, out, err := corpusConnect(ctx, c, p, addr(p))
				res[i] = result{ok, out, err}
			}()
		}
		wg.Wait()
		return res
	}
	mismatch := func(p scenario.Probe, r result) bool {
		return r.err != nil || r.ok != (p.Expect == scenario.Allow)
	}
	first := run(probes)
	var again []scenario.Probe
	for i, p := range probes {
		if mismatch(p, first[i]) {
			again = append(again, p)
		} else {
			tally.passed++
		}
	}
	// A mismatch is probed once more after a pause, so that a probe racing
	// an agent's compile or a loaded API server's exec is not a failure;
	// one that persists is.
	if len(again) > 0 {
		time.Sleep(3 * time.Second)
		second := run(again)
		for i, p := range again {
			if mismatch(p, second[i]) {
				tally.failed++
				r := second[i]
				t.Errorf("%s: MISMATCH %s (%s:%d, %s -> %s): connected=%v err=%v output %q", s.Name, p, filepath.Base(s.File), p.Line,
					ips[p.From], addr(p), r.ok, r.err, r.out)
			} else {
				tally.passed++
				tally.retried++
			}
		}
	}
	tally.took = time.Since(start)
	return tally
}

// corpusConnect runs agnhost connect in p's source pod. ok is whether it
// connected; err is a failure to run the probe at all (kubectl exec or the
// API server failing), told apart by agnhost's fixed error prefixes.
func corpusConnect(ctx context.Context, c *Cluster, p scenario.Probe, addr string) (ok bool, out string, err error) {
	ns, pod, _ := strings.Cut(p.From, "/")
	for attempt := 0; ; attempt++ {
		pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		out, err = c.Exec(pctx, ns, pod, "/agnhost", "connect", addr, "--timeout=3s", "--protocol="+strings.ToLower(p.Protocol))
		cancel()
		out = strings.TrimSpace(out)
		if err == nil {
			return true, out, nil
		}
		for _, prefix := range []string{"TIMEOUT", "REFUSED", "OTHER", "UNKNOWN"} {
			if strings.Contains(out, prefix) {
				return false, out, nil
			}
		}
		if attempt == 2 {
			return false, out, err
		}
		time.Sleep(time.Second)
	}
}

type servedPort struct {
	port     int
	protocol corev1.Protocol
}

// corpusServed lists, per pod, every TCP and UDP port the pod's servers
// must listen on: its declared container ports and every probed port.
func corpusServed(s *scenario.Scenario) map[string][]servedPort {
	set := map[string]map[servedPort]bool{}
	addPort := func(pod string, sp servedPort) {
		if sp.protocol != corev1.ProtocolTCP && sp.protocol != corev1.ProtocolUDP {
			return
		}
		if set[pod] == nil {
			set[pod] = map[servedPort]bool{}
		}
		set[pod][sp] = true
	}
	for _, p := range s.Cluster.Pods {
		for _, ctr := range p.Spec.Containers {
			for _, cp := range ctr.Ports {
				proto := cp.Protocol
				if proto == "" {
					proto = corev1.ProtocolTCP
				}
				addPort(p.Namespace+"/"+p.Name, servedPort{int(cp.ContainerPort), proto})
			}
		}
	}
	for _, p := range s.Probes {
		if corpusProbeRuns(p) {
			addPort(p.To, servedPort{p.Port, corev1.Protocol(p.Protocol)})
		}
	}
	out := map[string][]servedPort{}
	for pod, ports := range set {
		for sp := range ports {
			out[pod] = append(out[pod], sp)
		}
		sort.Slice(out[pod], func(i, j int) bool {
			a, b := out[pod][i], out[pod][j]
			return a.port < b.port || a.port == b.port && a.protocol < b.protocol
		})
	}
	return out
}

// corpusPod is the real pod for scenario pod p: its labels and named
// container ports (so policies' named ports resolve), on the node the
// scenario names when the cluster has it (else fallback), running agnhost
// porter on every port of served.
func corpusPod(p *corev1.Pod, fallback string, c *Cluster, served []servedPort) *corev1.Pod {
	node := fallback
	for _, n := range c.Nodes {
		if n.Name == p.Spec.NodeName {
			node = n.Name
		}
	}
	ctr := corev1.Container{
		Name:            "c",
		Image:           AgnhostImage,
		ImagePullPolicy: corev1.PullIfNotPresent,
		Args:            []string{"porter"},
	}
	seen := map[servedPort]bool{}
	for _, pc := range p.Spec.Containers {
		for _, cp := range pc.Ports {
			proto := cp.Protocol
			if proto == "" {
				proto = corev1.ProtocolTCP
			}
			sp := servedPort{int(cp.ContainerPort), proto}
			if seen[sp] {
				continue
			}
			seen[sp] = true
			ctr.Ports = append(ctr.Ports, corev1.ContainerPort{Name: cp.Name, ContainerPort: cp.ContainerPort, Protocol: proto})
		}
	}
	firstTCP := 0
	for _, sp := range served {
		key := "SERVE_PORT_"
		if sp.protocol == corev1.ProtocolUDP {
			key = "SERVE_UDP_PORT_"
		} else if firstTCP == 0 {
			firstTCP = sp.port
		}
		ctr.Env = append(ctr.Env, corev1.EnvVar{Name: key + strconv.Itoa(sp.port), Value: "foo"})
	}
	if len(served) == 0 {
		// porter exits without a port to serve; keep the pod running.
		ctr.Args = []string{"pause"}
	}
	if firstTCP > 0 {
		// Ready once it listens (kubelet probes from the node, which
		// policies never cut).
		ctr.ReadinessProbe = &corev1.Probe{
			ProbeHandler:  corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(int32(firstTCP))}},
			PeriodSeconds: 1,
		}
	}
	grace := int64(1)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, Labels: p.Labels},
		Spec: corev1.PodSpec{
			NodeName:                      node,
			TerminationGracePeriodSeconds: &grace,
			Containers:                    []corev1.Container{ctr},
		},
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestCorpusDefaultFits keeps the default selection runnable: a corpus
// change that makes one of them unfit (or removes it) would silently
// shrink what TestRealClusterCorpus checks.
func TestCorpusDefaultFits(t *testing.T) {
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	fit := 0
	for _, f := range corpusDefault {
		ss, err := scenario.Load(filepath.Join(root, "testdata", "conformance", "public", f))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, s := range ss {
			if why := corpusUnfit(s); why != "" {
				t.Errorf("%s does not fit the real cluster: %s", s.Name, why)
			} else {
				fit++
			}
		}
	}
	if fit != len(corpusDefault) {
		t.Errorf("%d of %d default scenarios fit", fit, len(corpusDefault))
	}
	// The filter must reject what the real cluster cannot run.
	ss, err := scenario.Load(filepath.Join(root, "testdata", "conformance", "public", "seed-6-hostnetwork-and-node-traffic.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if why := corpusUnfit(ss[0]); !strings.Contains(why, "hostNetwork") {
		t.Errorf("seed-6: unfit reason %q, want a hostNetwork pod", why)
	}
}
