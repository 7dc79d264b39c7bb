package debugapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nfqpolicy/nfqpolicy/filter"
	"github.com/nfqpolicy/nfqpolicy/flowlog"
	"github.com/nfqpolicy/nfqpolicy/internal/testcluster"
)

// extraPod sorts before x/a, shifting every pod index after it.
const extraPod = `
apiVersion: v1
kind: Pod
metadata: {name: "0first", namespace: x, labels: {app: z}}
spec: {nodeName: node-1, containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.1.9}
`

// tcp is a flow through testcluster.YAML from src:40000 to dst:dport.
func tcp(src, dst string, dport uint16) filter.Flow {
	return testcluster.Flow(src, dst, 40000, dport, filter.ProtoTCP)
}

func TestRecentRing(t *testing.T) {
	rs := testcluster.Compile(t)
	h := NewHub(4)
	for i := range 10 {
		f := tcp("10.0.1.1", "10.0.1.2", uint16(i+1))
		h.OnVerdict(f, rs.Decide(f), nil, time.Now(), 0)
	}
	var seqs []uint64
	for _, r := range h.Recent(0, nil) {
		seqs = append(seqs, r.Seq)
	}
	if !slices.Equal(seqs, []uint64{7, 8, 9, 10}) {
		t.Errorf("ring holds seqs %v, want the last four 7..10", seqs)
	}
	if got := h.Recent(2, nil); len(got) != 2 || got[1].Seq != 10 {
		t.Errorf("Recent(2) = %d records ending at %d, want 2 ending at 10", len(got), got[len(got)-1].Seq)
	}
	m, _ := ParseFilter("", "", "8")
	if got := h.Recent(0, m); len(got) != 1 || got[0].Flow.DstPort != 8 {
		t.Errorf("Recent with port 8 filter = %+v", got)
	}
}

// TestRingKeepsFewRulesets: records decided by Rulesets older than the
// keptRulesets newest lose their Ruleset (so the ring does not keep every
// recompile's state alive), while the newest ones keep it and render names.
func TestRingKeepsFewRulesets(t *testing.T) {
	h := NewHub(64)
	var rss []*filter.Ruleset
	f := tcp("10.0.1.1", "10.0.1.2", 80)
	for range keptRulesets + 3 {
		rs := testcluster.Compile(t)
		rss = append(rss, rs)
		for range 3 {
			h.OnVerdict(f, rs.Decide(f), nil, time.Now(), 0)
		}
	}
	kept := map[*filter.Ruleset]int{}
	for _, r := range h.Recent(0, nil) {
		kept[r.Verdict.Ruleset]++
	}
	for i, rs := range rss {
		want := 0
		if i >= len(rss)-keptRulesets {
			want = 3
		}
		if kept[rs] != want {
			t.Errorf("Ruleset %d of %d: %d records keep it, want %d", i+1, len(rss), kept[rs], want)
		}
	}
	if kept[nil] != 3*(len(rss)-keptRulesets) {
		t.Errorf("%d records lost their Ruleset, want %d", kept[nil], 3*(len(rss)-keptRulesets))
	}
	newest := h.Recent(1, nil)[0]
	if src, dst := flowlog.PodNames(&newest.Verdict); src != "x/a" || dst != "x/b" {
		t.Errorf("newest record names %q -> %q, want x/a -> x/b", src, dst)
	}
}

func TestFilter(t *testing.T) {
	rs := testcluster.Compile(t)
	aToB := tcp("10.0.1.1", "10.0.1.2", 80)
	cToB := tcp("10.0.1.3", "10.0.1.2", 80)
	extToA := tcp("203.0.113.5", "10.0.1.1", 443)
	udp := testcluster.Flow("10.0.1.3", "10.0.1.1", 0, 53, filter.ProtoUDP)
	flows := []filter.Flow{aToB, cToB, extToA, udp}
	tests := []struct {
		from, to, port string
		want           []int // indexes into flows that match
		err            bool
	}{
		{"", "", "", []int{0, 1, 2, 3}, false},
		{"x/a", "", "", []int{0}, false},
		{"", "x/b", "", []int{0, 1}, false},
		{"y/c", "x/b", "80/TCP", []int{1}, false},
		{"", "x/a", "", []int{2, 3}, false},
		{"", "", "53/UDP", []int{3}, false},
		{"", "", "/udp", []int{3}, false},
		{"", "", "443", []int{2}, false},
		{"203.0.113.0/24", "", "", []int{2}, false},
		{"10.0.1.3", "", "", []int{1, 3}, false},
		{"x/nobody", "", "", nil, false},
		{"nonsense", "", "", nil, true},
		{"", "", "http", nil, true},
		{"", "", "80/GRE", nil, true},
		{"", "a/b/c", "", nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.from+">"+tc.to+":"+tc.port, func(t *testing.T) {
			m, err := ParseFilter(tc.from, tc.to, tc.port)
			if (err != nil) != tc.err {
				t.Fatalf("ParseFilter error %v, want error %v", err, tc.err)
			}
			if err != nil {
				return
			}
			var got []int
			for i, f := range flows {
				v := rs.Decide(f)
				if m.Matches(&f, &v) {
					got = append(got, i)
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("matched %v, want %v", got, tc.want)
			}
		})
	}
}

func TestFilterFollowsNewRuleset(t *testing.T) {
	old := testcluster.Compile(t)
	shifted := testcluster.Compile(t, extraPod)
	m, _ := ParseFilter("x/a", "", "")
	f := tcp("10.0.1.1", "10.0.1.2", 80)
	for _, rs := range []*filter.Ruleset{old, shifted, old} {
		v := rs.Decide(f)
		if !m.Matches(&f, &v) {
			t.Fatalf("x/a's flow does not match from=x/a (pod index %d)", v.Egress.Pod)
		}
		g := tcp("10.0.1.9", "10.0.1.2", 80)
		if w := rs.Decide(g); m.Matches(&g, &w) {
			t.Fatal("another pod matches from=x/a after the index shift")
		}
	}
}

func TestSubscriptionCountsLoss(t *testing.T) {
	rs := testcluster.Compile(t)
	h := NewHub(16)
	m, _ := ParseFilter("", "", "80")
	s := h.Subscribe(m, 4)
	defer s.Close()
	f, other := tcp("10.0.1.1", "10.0.1.2", 80), tcp("10.0.1.1", "10.0.1.2", 81)
	v, ov := rs.Decide(f), rs.Decide(other)
	for range 100 {
		h.OnVerdict(f, v, nil, time.Now(), 0)
		h.OnVerdict(other, ov, nil, time.Now(), 0) // filtered out: neither delivered nor lost
	}
	for range 4 {
		if r := <-s.C(); r.Lost != 0 || r.Flow.DstPort != 80 {
			t.Fatalf("buffered record: lost %d port %d", r.Lost, r.Flow.DstPort)
		}
	}
	h.OnVerdict(f, v, nil, time.Now(), 0)
	if r := <-s.C(); r.Lost != 96 {
		t.Errorf("next record reports %d lost, want 96", r.Lost)
	}
	if s.Lost() != 96 || s.TakeLost() != 0 {
		t.Errorf("subscription lost %d", s.Lost())
	}
	s.Close()
	if h.Subscribers() != 0 {
		t.Errorf("%d subscribers after Close", h.Subscribers())
	}
}

func TestHubAllocatesNothing(t *testing.T) {
	rs := testcluster.Compile(t)
	h := NewHub(64)
	byIP, _ := ParseFilter("10.0.1.1", "", "80/TCP")
	byPod, _ := ParseFilter("x/a", "x/b", "")
	s1, s2 := h.Subscribe(byIP, 1), h.Subscribe(byPod, 1)
	defer s1.Close()
	defer s2.Close()
	f := tcp("10.0.1.1", "10.0.1.2", 80)
	v := rs.Decide(f)
	h.OnVerdict(f, v, nil, time.Now(), 0) // resolves x/a and x/b once for this Ruleset
	if n := testing.AllocsPerRun(1000, func() { h.OnVerdict(f, v, nil, time.Now(), time.Microsecond) }); n != 0 {
		t.Errorf("OnVerdict allocates %v per call", n)
	}
	if s1.Lost() == 0 || s2.Lost() == 0 {
		t.Error("subscribers with a one-record buffer lost nothing: they did not match")
	}
}

// serve starts the API on a unix socket in a temp dir.
func serve(t *testing.T, o Options) (socket string, h *Hub) {
	t.Helper()
	if o.Hub == nil {
		o.Hub = NewHub(128)
	}
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	socket = filepath.Join(t.TempDir(), "debug.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeUnix(ctx, socket, s.Handler()) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeUnix: %v", err)
		}
		if _, err := os.Stat(socket); err == nil {
			t.Error("socket left behind")
		}
	})
	for i := 0; ; i++ {
		if _, err := os.Stat(socket); err == nil {
			break
		}
		if i > 200 {
			t.Fatal("socket never appeared")
		}
		time.Sleep(10 * time.Millisecond)
	}
	st, _ := os.Stat(socket)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want 0600", st.Mode().Perm())
	}
	return socket, o.Hub
}

func TestExplainOverSocket(t *testing.T) {
	type call struct {
		From, To string
		Port     int
		Proto    string
		Family   int
	}
	socket, _ := serve(t, Options{Explain: func(from, to string, port int, proto string, family int) (any, error) {
		if from == "x/missing" {
			return nil, errors.New(`unknown pod "x/missing"`)
		}
		return call{from, to, port, proto, family}, nil
	}})
	ctx := context.Background()
	tests := []struct {
		from, to, port string
		family         int
		want           call
		err            string
	}{
		{"x/a", "x/b", "80/TCP", 4, call{"x/a", "x/b", 80, "TCP", 4}, ""},
		{"x/a", "10.0.0.1", "53/udp", 6, call{"x/a", "10.0.0.1", 53, "UDP", 6}, ""},
		{"x/a", "x/b", "", 4, call{"x/a", "x/b", 80, "TCP", 4}, ""},
		{"x/missing", "x/b", "80", 4, call{}, `unknown pod "x/missing"`},
		{"x/a", "x/b", "99999", 4, call{}, "want a number 1-65535"},
		{"x/a", "x/b", "80", 5, call{}, "want 4 or 6"},
		{"", "x/b", "80", 4, call{}, "from and to are required"},
	}
	for _, tc := range tests {
		raw, err := Explain(ctx, socket, tc.from, tc.to, tc.port, tc.family)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("Explain(%s, %s, %s, %d) error %v, want %q", tc.from, tc.to, tc.port, tc.family, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("Explain(%s, %s, %s): %v", tc.from, tc.to, tc.port, err)
			continue
		}
		var got call
		if err := json.Unmarshal(raw, &got); err != nil || got != tc.want {
			t.Errorf("explain answered %s (%v), want %+v", raw, err, tc.want)
		}
	}
	if _, err := Explain(ctx, filepath.Join(t.TempDir(), "none.sock"), "a/b", "c/d", "80", 4); err == nil {
		t.Error("Explain against a missing socket succeeded")
	}
}

func TestPoliciesAndFlowsOverSocket(t *testing.T) {
	rs := testcluster.Compile(t)
	socket, h := serve(t, Options{State: func() *filter.Ruleset { return rs }, Renderer: flowlog.Renderer{Node: "node-1"}})
	for _, f := range []filter.Flow{tcp("10.0.1.1", "10.0.1.2", 80), tcp("10.0.1.3", "10.0.1.2", 80), tcp("10.0.1.3", "10.0.1.1", 22)} {
		h.OnVerdict(f, rs.Decide(f), nil, time.Now(), time.Microsecond)
	}
	out, err := Flows(context.Background(), socket, TraceQuery{To: "x/b"}, 10)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var e flowlog.Entry
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		got = append(got, e.SrcPod+">"+e.DstPod+":"+e.Verdict+":"+e.Node)
	}
	if want := []string{"x/a>x/b:allow:node-1", "y/c>x/b:deny:node-1"}; !slices.Equal(got, want) {
		t.Errorf("/flows?to=x/b = %v, want %v", got, want)
	}

	resp, err := get(context.Background(), socket, "/policies", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st State
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	if st.Pods != 3 || !st.Staged || len(st.Policies) != 2 {
		t.Errorf("state: %d pods, staged %v, %d policies; want 3, true, 2", st.Pods, st.Staged, len(st.Policies))
	}
	pods := map[string]PodState{}
	for _, p := range st.Isolated {
		pods[p.Name] = p
	}
	if b := pods["x/b"]; !slices.Equal(b.Ingress, []string{"x/allow-a"}) || b.Labels["app"] != "b" {
		t.Errorf("x/b: %+v, want ingress isolated by x/allow-a", b)
	}
	if a := pods["x/a"]; len(a.Ingress) != 0 || !slices.Equal(a.AuditIngress, []string{"x/staged-deny"}) {
		t.Errorf("x/a: %+v, want only audit isolation by x/staged-deny", a)
	}
	if _, ok := pods["y/c"]; ok {
		t.Error("y/c is listed as isolated")
	}
}

func TestUnwiredEndpoints(t *testing.T) {
	socket, _ := serve(t, Options{State: func() *filter.Ruleset { return nil }})
	ctx := context.Background()
	if _, err := get(ctx, socket, "/policies", nil); err == nil || !strings.Contains(err.Error(), "no policies compiled yet") {
		t.Errorf("/policies before compile: %v", err)
	}
	if _, err := Explain(ctx, socket, "a/b", "c/d", "80", 4); err == nil || !strings.Contains(err.Error(), "not wired") {
		t.Errorf("/explain unwired: %v", err)
	}
	if _, err := Flows(ctx, socket, TraceQuery{From: "bad"}, 1); err == nil {
		t.Error("/flows accepted a bad filter")
	}
}

func TestTraceStreams(t *testing.T) {
	rs := testcluster.Compile(t)
	socket, h := serve(t, Options{TraceReport: 20 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	var lines []flowlog.Entry
	done := make(chan error, 1)
	go func() {
		done <- Trace(ctx, socket, TraceQuery{From: "y/c", Port: "80"}, func(b []byte) error {
			var e flowlog.Entry
			if err := json.Unmarshal(b, &e); err != nil {
				return fmt.Errorf("line %q: %w", b, err)
			}
			mu.Lock()
			lines = append(lines, e)
			mu.Unlock()
			return nil
		})
	}()
	for h.Subscribers() == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	match, other := tcp("10.0.1.3", "10.0.1.2", 80), tcp("10.0.1.1", "10.0.1.2", 80)
	const sent = 500
	for range sent {
		h.OnVerdict(match, rs.Decide(match), nil, time.Now(), 0)
		h.OnVerdict(other, rs.Decide(other), nil, time.Now(), 0)
	}
	// Every matching record arrives or is reported lost, exactly once.
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		var n, lost uint64
		for _, e := range lines {
			lost += e.Lost
			if !e.IsSummary() {
				n++
				if e.SrcPod != "y/c" || e.DstPort != 80 {
					t.Fatalf("trace delivered %s -> %s:%d, not matching from=y/c port=80", e.SrcPod, e.DstPod, e.DstPort)
				}
			}
		}
		mu.Unlock()
		if n+lost == sent {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 10s: %d delivered + %d lost != %d sent", n, lost, sent)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Trace after cancel: %v", err)
	}
	for i := 0; h.Subscribers() != 0; i++ {
		if i > 200 {
			t.Fatal("subscription outlived its client")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestServeUnixRefusesNonSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "file")
	os.WriteFile(path, []byte("x"), 0o600)
	if err := ServeUnix(context.Background(), path, nil); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("ServeUnix over a regular file: %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "x" {
		t.Error("the regular file was touched")
	}
}

func TestServeUnixReplacesStaleSocket(t *testing.T) {
	// A killed agent leaves its socket file behind: make one that nobody
	// listens on.
	stale := filepath.Join(t.TempDir(), "stale.sock")
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	if _, err := os.Stat(stale); err != nil {
		t.Fatalf("stale socket not left behind: %v", err)
	}
	s, _ := New(Options{Hub: NewHub(1)})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- ServeUnix(ctx, stale, s.Handler()) }()
	for i := 0; ; i++ {
		if _, err := Flows(context.Background(), stale, TraceQuery{}, 1); err == nil {
			break
		}
		if i > 200 {
			t.Fatal("serving over a stale socket never answered")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("ServeUnix: %v", err)
	}
}

func BenchmarkHubOnVerdict(b *testing.B) {
	rs := testcluster.Compile(b)
	h := NewHub(1024)
	f := tcp("10.0.1.1", "10.0.1.2", 80)
	v := rs.Decide(f)
	m, _ := ParseFilter("x/a", "", "80")
	s := h.Subscribe(m, 64)
	defer s.Close()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			h.OnVerdict(f, v, nil, time.Now(), time.Microsecond)
		}
	})
}

// /policies lists the agent's own node's pods; ?all=1 the whole cluster.
func TestDescribeLocalNode(t *testing.T) {
	rs := testcluster.Compile(t)
	for _, tc := range []struct {
		node string
		all  bool
		want int
	}{
		{"node-1", false, 2}, // x/a (staged isolation) and x/b
		{"node-2", false, 0},
		{"node-2", true, 3},
		{"", false, 2},
	} {
		st := Describe(rs, tc.node, tc.all)
		if len(st.Isolated) != tc.want {
			t.Errorf("Describe(node %q, all %v): %d pods %+v, want %d", tc.node, tc.all, len(st.Isolated), st.Isolated, tc.want)
		}
		for _, p := range st.Isolated {
			if p.Node != "node-1" {
				t.Errorf("pod %s: node %q, want node-1", p.Name, p.Node)
			}
		}
	}
}
