package metrics

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/nfqpolicy/nfqpolicy/conntrack"
	"github.com/nfqpolicy/nfqpolicy/filter"
	"github.com/nfqpolicy/nfqpolicy/internal/testcluster"
)

// value returns the value of the metric name whose labels include want
// (a counter's value, a gauge's, or a histogram's sample count), and
// whether it exists.
func value(t *testing.T, m *Metrics, name string, want map[string]string) (float64, bool) {
	t.Helper()
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, mt := range mf.GetMetric() {
			have := map[string]string{}
			for _, l := range mt.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if have[k] != v {
					continue next
				}
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				return mt.GetCounter().GetValue(), true
			case dto.MetricType_GAUGE:
				return mt.GetGauge().GetValue(), true
			case dto.MetricType_HISTOGRAM:
				return float64(mt.GetHistogram().GetSampleCount()), true
			}
		}
	}
	return 0, false
}

func mustValue(t *testing.T, m *Metrics, name string, labels map[string]string, want float64) {
	t.Helper()
	got, ok := value(t, m, name, labels)
	if !ok {
		t.Errorf("%s%v: missing", name, labels)
		return
	}
	if got != want {
		t.Errorf("%s%v = %v, want %v", name, labels, got, want)
	}
}

const sampleQueueStats = `    0  12345     3 2   128     7     2   1000 1
    1  12346     0 2   128     0    11 4294967295 1
`

func TestQueueCollector(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	if err := os.WriteFile(good, []byte(sampleQueueStats), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(bad, []byte("0 1 2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		path string
		up   float64
		want map[string]map[string]float64 // metric -> queue -> value
	}{
		{"sample", good, 1, map[string]map[string]float64{
			"nfqpolicy_queue_waiting":            {"0": 3, "1": 0},
			"nfqpolicy_queue_dropped_total":      {"0": 7, "1": 0},
			"nfqpolicy_queue_user_dropped_total": {"0": 2, "1": 11},
			"nfqpolicy_queue_packets_total":      {"0": 1000, "1": 4294967295},
		}},
		{"short line", bad, 0, nil},
		{"missing file", filepath.Join(dir, "none"), 0, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := New(Options{QueueStatsPath: tc.path, NoRuntime: true})
			if err != nil {
				t.Fatal(err)
			}
			mustValue(t, m, "nfqpolicy_queue_stats_up", nil, tc.up)
			for name, byQueue := range tc.want {
				for q, v := range byQueue {
					mustValue(t, m, name, map[string]string{"queue": q}, v)
				}
			}
			if tc.want == nil {
				if _, ok := value(t, m, "nfqpolicy_queue_waiting", nil); ok {
					t.Error("queue metrics exported although the file could not be read")
				}
			}
		})
	}
}

// testCluster is not testcluster.YAML: the counts below need x/a -> x/b on
// TCP 80 denied (testcluster's x/allow-a allows it) and name x/deny-b and
// x/staged-deny-a.
const testCluster = `
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {nodeName: node-1, containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
spec: {nodeName: node-1, containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.1.2}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-b, namespace: x}
spec: {podSelector: {matchLabels: {app: b}}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: staged-deny-a, namespace: x, annotations: {nfqpolicy.io/mode: audit}}
spec: {podSelector: {matchLabels: {app: a}}}
`

func tcp(src, dst string) filter.Flow {
	return testcluster.Flow(src, dst, 1000, 80, filter.ProtoTCP)
}

func TestOnVerdictCounts(t *testing.T) {
	rs := testcluster.CompileDocs(t, testCluster)
	m, err := New(Options{QueueStatsPath: "-", NoRuntime: true, Mode: "enforce"})
	if err != nil {
		t.Fatal(err)
	}
	toB := tcp("10.0.1.1", "10.0.1.2")    // denied by x/deny-b
	toA := tcp("10.0.1.2", "10.0.1.1")    // allowed, x/staged-deny-a would deny
	ext := tcp("203.0.113.1", "10.0.1.2") // denied
	feed := []struct {
		f      filter.Flow
		cached bool
		lat    time.Duration
	}{
		{toB, false, 3 * time.Microsecond},
		{toB, true, 500 * time.Nanosecond},
		{toA, false, 4 * time.Microsecond},
		{toA, true, 800 * time.Nanosecond},
		{toA, true, 2 * time.Millisecond},
		{ext, false, 7 * time.Microsecond},
	}
	for _, in := range feed {
		v := rs.Decide(in.f)
		v.Cached = in.cached
		m.OnVerdict(in.f, v, nil, time.Now(), in.lat)
	}
	m.OnVerdict(filter.Flow{}, filter.Verdict{Egress: filter.Side{Decision: filter.Malformed}, Ingress: filter.Side{Decision: filter.Malformed}}, nil, time.Now(), 0)

	mustValue(t, m, "nfqpolicy_verdicts_total", map[string]string{"verdict": "deny", "mode": "enforce"}, 4)
	mustValue(t, m, "nfqpolicy_verdicts_total", map[string]string{"verdict": "allow", "mode": "enforce"}, 3)
	mustValue(t, m, "nfqpolicy_malformed_packets_total", nil, 1)
	mustValue(t, m, "nfqpolicy_cache_lookups_total", map[string]string{"result": "hit"}, 3)
	mustValue(t, m, "nfqpolicy_cache_lookups_total", map[string]string{"result": "miss"}, 3)
	mustValue(t, m, "nfqpolicy_decision_latency_seconds", map[string]string{"cached": "true"}, 3)
	mustValue(t, m, "nfqpolicy_decision_latency_seconds", map[string]string{"cached": "false"}, 3)
	mustValue(t, m, "nfqpolicy_audit_verdicts_total", map[string]string{"policy": "x/staged-deny-a", "audit_verdict": "would-deny"}, 3)
	if _, ok := value(t, m, "nfqpolicy_audit_verdicts_total", map[string]string{"policy": "x/deny-b"}); ok {
		t.Error("an enforced policy is counted as staged")
	}
	// The 2ms observation must land above the 1ms bucket.
	mfs, _ := m.Registry().Gather()
	for _, mf := range mfs {
		if mf.GetName() != "nfqpolicy_decision_latency_seconds" {
			continue
		}
		for _, mt := range mf.GetMetric() {
			if mt.GetLabel()[0].GetValue() != "true" {
				continue
			}
			for _, b := range mt.GetHistogram().GetBucket() {
				want := map[float64]uint64{1e-6: 2, 1e-3: 2, 2e-3: 3}
				if w, ok := want[b.GetUpperBound()]; ok && b.GetCumulativeCount() != w {
					t.Errorf("cached latency bucket le=%v holds %d, want %d", b.GetUpperBound(), b.GetCumulativeCount(), w)
				}
			}
		}
	}
}

func TestOnVerdictAllocatesNothing(t *testing.T) {
	rs := testcluster.CompileDocs(t, testCluster)
	m, err := New(Options{QueueStatsPath: "-", NoRuntime: true})
	if err != nil {
		t.Fatal(err)
	}
	f := tcp("10.0.1.1", "10.0.1.2")
	v := rs.Decide(f)
	if v.AuditDiffers() {
		t.Fatal("test flow should not be changed by staged policies")
	}
	if n := testing.AllocsPerRun(1000, func() { m.OnVerdict(f, v, nil, time.Now(), time.Microsecond) }); n != 0 {
		t.Errorf("OnVerdict allocates %v per call", n)
	}
}

func TestComponentsAndCompile(t *testing.T) {
	m, err := New(Options{QueueStatsPath: "-", NoRuntime: true,
		FlowLog:        func() Totals { return Totals{Written: 10, Lost: 2, RateLimited: 3} },
		Capture:        func() Totals { return Totals{Written: 5, Lost: 1} },
		InvalidDropped: func() uint64 { return 7 },
	})
	if err != nil {
		t.Fatal(err)
	}
	m.ObserveCompile(20*time.Millisecond, nil)
	m.ObserveCompile(time.Millisecond, errors.New("bad"))
	m.ObserveCompile(time.Millisecond, nil)
	m.ObserveRecheck(conntrack.Stats{Checked: 10, Cut: 2, Duration: 3 * time.Millisecond}, nil)
	m.ObserveRecheck(conntrack.Stats{Checked: 5}, errors.New("netlink"))
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"nfqpolicy_flowlog_records_total", map[string]string{"result": "written"}, 10},
		{"nfqpolicy_flowlog_records_total", map[string]string{"result": "lost"}, 2},
		{"nfqpolicy_flowlog_records_total", map[string]string{"result": "rate_limited"}, 3},
		{"nfqpolicy_capture_packets_total", map[string]string{"result": "written"}, 5},
		{"nfqpolicy_capture_packets_total", map[string]string{"result": "lost"}, 1},
		{"nfqpolicy_invalid_dropped_total", nil, 7},
		{"nfqpolicy_compiles_total", map[string]string{"result": "ok"}, 2},
		{"nfqpolicy_compiles_total", map[string]string{"result": "error"}, 1},
		{"nfqpolicy_compile_duration_seconds", nil, 3},
		{"nfqpolicy_conntrack_rechecked_total", nil, 15},
		{"nfqpolicy_conntrack_cut_total", nil, 2},
		{"nfqpolicy_conntrack_rechecks_total", map[string]string{"result": "ok"}, 1},
		{"nfqpolicy_conntrack_rechecks_total", map[string]string{"result": "error"}, 1},
		{"nfqpolicy_conntrack_recheck_duration_seconds", nil, 2},
	} {
		mustValue(t, m, c.name, c.labels, c.want)
	}
	if _, ok := value(t, m, "nfqpolicy_capture_packets_total", map[string]string{"result": "rate_limited"}); ok {
		t.Error("capture exports a rate_limited count it does not have")
	}
	if _, err := New(Options{Mode: "dry-run"}); err == nil {
		t.Error("unknown mode accepted")
	}
}

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	b, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(b)
}

func TestHandler(t *testing.T) {
	var notReady error = errors.New("no cluster state yet")
	m, err := New(Options{QueueStatsPath: "-", Ready: func() error { return notReady }})
	if err != nil {
		t.Fatal(err)
	}
	m.OnVerdict(filter.Flow{}, filter.Verdict{Allow: true}, nil, time.Now(), time.Microsecond)
	h := m.Handler()
	tests := []struct {
		path string
		code int
		body string
	}{
		{"/metrics", 200, `nfqpolicy_verdicts_total{mode="enforce",verdict="allow"} 1`},
		{"/metrics", 200, "go_goroutines"},
		{"/healthz", 200, "ok"},
		{"/readyz", 503, "not ready: no cluster state yet"},
		{"/debug/pprof/", 404, ""},
	}
	for _, tc := range tests {
		code, body := get(t, h, tc.path)
		if code != tc.code || !strings.Contains(body, tc.body) {
			t.Errorf("GET %s: %d %.200q, want %d containing %q", tc.path, code, body, tc.code, tc.body)
		}
	}
	notReady = nil
	if code, body := get(t, h, "/readyz"); code != 200 || !strings.Contains(body, "ready") {
		t.Errorf("GET /readyz once ready: %d %q", code, body)
	}

	withPprof, _ := New(Options{QueueStatsPath: "-", NoRuntime: true, Pprof: true})
	if code, body := get(t, withPprof.Handler(), "/debug/pprof/"); code != 200 || !strings.Contains(body, "goroutine") {
		t.Errorf("GET /debug/pprof/ with pprof on: %d %.100q", code, body)
	}
}

func BenchmarkOnVerdict(b *testing.B) {
	rs := testcluster.CompileDocs(b, testCluster)
	m, _ := New(Options{QueueStatsPath: "-", NoRuntime: true})
	f := tcp("10.0.1.1", "10.0.1.2")
	v := rs.Decide(f)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.OnVerdict(f, v, nil, time.Now(), time.Microsecond)
		}
	})
}

// TestClusterPolicyRules counts the ClusterNetworkPolicy rules that decide
// or pass each side, by policy, tier and action, without allocating.
func TestClusterPolicyRules(t *testing.T) {
	rs := testcluster.CompileCNP(t, testcluster.CNP)
	m, err := New(Options{QueueStatsPath: "-", NoRuntime: true})
	if err != nil {
		t.Fatal(err)
	}
	accept := testcluster.Flow("10.0.1.3", "10.0.1.2", 4000, 8080, filter.ProtoTCP) // y/c -> x/b: Accept
	pass := testcluster.Flow("10.0.1.3", "10.0.1.2", 4000, 80, filter.ProtoTCP)     // y/c -> x/b: Pass, then x/allow-a denies
	deny := testcluster.Flow("10.0.1.2", "203.0.113.9", 4000, 443, filter.ProtoTCP) // x/b -> network: Deny
	for _, f := range []filter.Flow{accept, accept, pass, deny} {
		m.OnVerdict(f, rs.Decide(f), nil, time.Now(), time.Microsecond)
	}
	name := "nfqpolicy_cluster_policy_rules_total"
	guard := "ClusterNetworkPolicy/guard"
	mustValue(t, m, name, map[string]string{"policy": guard, "tier": "Admin", "action": "Accept"}, 2)
	mustValue(t, m, name, map[string]string{"policy": guard, "tier": "Admin", "action": "Pass"}, 1)
	mustValue(t, m, name, map[string]string{"policy": guard, "tier": "Admin", "action": "Deny"}, 1)
	v := rs.Decide(pass)
	if n := testing.AllocsPerRun(1000, func() { m.OnVerdict(pass, v, nil, time.Now(), time.Microsecond) }); n != 0 {
		t.Errorf("OnVerdict of a ClusterNetworkPolicy verdict allocates %v per call", n)
	}
}

// TestDomainNameRules exports, at scrape time, the ClusterNetworkPolicy
// rules with domainNames peers (not enforced), by policy, tier and action;
// nothing before the first compile.
func TestDomainNameRules(t *testing.T) {
	var rs *filter.Ruleset
	m, err := New(Options{QueueStatsPath: "-", NoRuntime: true, Ruleset: func() *filter.Ruleset { return rs }})
	if err != nil {
		t.Fatal(err)
	}
	name := "nfqpolicy_cluster_policy_domain_name_rules"
	if _, ok := value(t, m, name, nil); ok {
		t.Fatal("domainNames metric exported before any compile")
	}
	rs = testcluster.CompileCNP(t, `apiVersion: policy.networking.k8s.io/v1beta1
kind: ClusterNetworkPolicy
metadata: {name: fqdn}
spec:
  tier: Admin
  priority: 3
  subject: {namespaces: {}}
  egress:
  - {name: a, action: Accept, to: [{domainNames: [example.com]}]}
  - {name: b, action: Accept, to: [{domainNames: ["*.example.org"]}, {networks: [10.0.0.0/8]}]}
  - {name: c, action: Deny, to: [{networks: [0.0.0.0/0]}]}
`)
	mustValue(t, m, name, map[string]string{"policy": "ClusterNetworkPolicy/fqdn", "tier": "Admin", "action": "Accept", "staged": "false"}, 2)
	if _, ok := value(t, m, name, map[string]string{"action": "Deny"}); ok {
		t.Error("a rule without domainNames is counted")
	}
}
