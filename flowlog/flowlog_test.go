package flowlog

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nfqpolicy/nfqpolicy/filter"
	"github.com/nfqpolicy/nfqpolicy/internal/testcluster"
)

var (
	denyVerdict = filter.Verdict{
		Egress:  filter.Side{Decision: filter.NotIsolated, Pod: -1, Policy: -1, Rule: -1, Peer: -1},
		Ingress: filter.Side{Decision: filter.DeniedIsolated, Pod: -1, Policy: -1, Rule: -1, Peer: -1},
	}
	allowVerdict = filter.Verdict{
		Allow:   true,
		Cached:  true,
		Egress:  filter.Side{Decision: filter.NotPoliced, Pod: -1, Policy: -1, Rule: -1, Peer: -1},
		Ingress: filter.Side{Decision: filter.AllowedByRule, Pod: -1, Policy: 3, Rule: 1, Peer: 0},
		Audit:   filter.AuditVerdict{Allow: true},
	}
	// wouldDenyVerdict is allowed but staged policies would deny it.
	wouldDenyVerdict = filter.Verdict{
		Allow:   true,
		Egress:  filter.Side{Decision: filter.NotPoliced, Pod: -1, Policy: -1, Rule: -1, Peer: -1},
		Ingress: filter.Side{Decision: filter.NotIsolated, Pod: -1, Policy: -1, Rule: -1, Peer: -1},
		Audit:   filter.AuditVerdict{Allow: false},
	}
)

// syncBuffer is a bytes.Buffer safe to read after the writer goroutine
// has written to it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) entries(t *testing.T) []Entry {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	return parseEntries(t, s.b.Bytes())
}

func parseEntries(t *testing.T, data []byte) []Entry {
	t.Helper()
	var out []Entry
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		var e Entry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("line %q is not JSON: %v", sc.Text(), err)
		}
		out = append(out, e)
	}
	return out
}

func TestFields(t *testing.T) {
	tests := []struct {
		name   string
		f      filter.Flow
		v      filter.Verdict
		want   Entry
		policy bool
	}{
		{
			name: "ipv4 tcp deny",
			f:    testcluster.Flow("10.0.0.1", "10.0.0.2", 40000, 80, filter.ProtoTCP),
			v:    denyVerdict,
			want: Entry{Node: "n1", Verdict: "deny", Mode: "enforce", Proto: "tcp", Family: 4,
				Src: "10.0.0.1", SrcPort: 40000, Dst: "10.0.0.2", DstPort: 80,
				Egress: &SideEntry{Decision: "not-isolated"}, Ingress: &SideEntry{Decision: "denied-isolated"}},
		},
		{
			name: "ipv6 udp allow cached",
			f:    testcluster.Flow("fd00::1", "fd00::2", 5353, 53, filter.ProtoUDP),
			v:    allowVerdict,
			want: Entry{Node: "n1", Verdict: "allow", Mode: "enforce", Proto: "udp", Family: 6,
				Src: "fd00::1", SrcPort: 5353, Dst: "fd00::2", DstPort: 53, Cached: true,
				Egress: &SideEntry{Decision: "not-policed"}, Ingress: &SideEntry{Decision: "allowed-by-rule"}},
			policy: true,
		},
		{
			name: "sctp",
			f:    testcluster.Flow("10.1.0.1", "10.1.0.2", 1, 9999, filter.ProtoSCTP),
			v:    denyVerdict,
			want: Entry{Node: "n1", Verdict: "deny", Mode: "enforce", Proto: "sctp", Family: 4,
				Src: "10.1.0.1", SrcPort: 1, Dst: "10.1.0.2", DstPort: 9999,
				Egress: &SideEntry{Decision: "not-isolated"}, Ingress: &SideEntry{Decision: "denied-isolated"}},
		},
		{
			name: "icmp has no ports",
			f:    testcluster.Flow("10.1.0.1", "10.1.0.2", 0, 0, filter.ProtoICMP),
			v:    denyVerdict,
			want: Entry{Node: "n1", Verdict: "deny", Mode: "enforce", Proto: "icmp", Family: 4,
				Src: "10.1.0.1", Dst: "10.1.0.2",
				Egress: &SideEntry{Decision: "not-isolated"}, Ingress: &SideEntry{Decision: "denied-isolated"}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf syncBuffer
			l, err := New(Options{Out: &buf, Select: SelectAll, Renderer: Renderer{Node: "n1"}})
			if err != nil {
				t.Fatal(err)
			}
			before := time.Now()
			l.OnVerdict(tc.f, tc.v, nil, time.Now(), 1500*time.Nanosecond)
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			es := buf.entries(t)
			if len(es) != 1 {
				t.Fatalf("got %d lines, want 1", len(es))
			}
			got := es[0]
			if got.Time.Before(before.Add(-time.Second)) || got.Time.After(time.Now().Add(time.Second)) {
				t.Errorf("time %v not around now", got.Time)
			}
			if got.Seq != 1 {
				t.Errorf("seq %d, want 1", got.Seq)
			}
			if got.LatencyUS != 1.5 {
				t.Errorf("latency_us %v, want 1.5", got.LatencyUS)
			}
			if tc.policy {
				if got.Ingress.PolicyIndex == nil || *got.Ingress.PolicyIndex != 3 || *got.Ingress.Rule != 1 || *got.Ingress.Peer != 0 {
					t.Errorf("ingress rule fields %+v, want policy_index 3 rule 1 peer 0", got.Ingress)
				}
				got.Ingress.PolicyIndex, got.Ingress.Rule, got.Ingress.Peer = nil, nil, nil
			}
			got.Time, got.Seq, got.LatencyUS = time.Time{}, 0, 0
			gj, _ := json.Marshal(got)
			wj, _ := json.Marshal(tc.want)
			if string(gj) != string(wj) {
				t.Errorf("entry\n got %s\nwant %s", gj, wj)
			}
		})
	}
}

func TestSelect(t *testing.T) {
	tests := []struct {
		sel  Select
		want []string // verdicts logged, in order: deny, allow, would-deny
	}{
		{SelectAll, []string{"deny", "allow", "allow"}},
		{SelectDenied, []string{"deny", "allow"}},
		{SelectAuditDiff, []string{"allow"}},
	}
	for _, tc := range tests {
		t.Run(tc.sel.String(), func(t *testing.T) {
			var buf syncBuffer
			l, err := New(Options{Out: &buf, Select: tc.sel})
			if err != nil {
				t.Fatal(err)
			}
			f := testcluster.Flow("10.0.0.1", "10.0.0.2", 1, 2, filter.ProtoTCP)
			l.OnVerdict(f, denyVerdict, nil, time.Now(), 0)
			l.OnVerdict(f, allowVerdict, nil, time.Now(), 0)
			l.OnVerdict(f, wouldDenyVerdict, nil, time.Now(), 0)
			l.Close()
			var got []string
			for _, e := range buf.entries(t) {
				got = append(got, e.Verdict)
			}
			if strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Errorf("logged %v, want %v", got, tc.want)
			}
		})
	}
}

func TestParseSelect(t *testing.T) {
	for in, want := range map[string]Select{"denied": SelectDenied, "all": SelectAll, "audit-diff": SelectAuditDiff, "ALL": SelectAll} {
		got, err := ParseSelect(in)
		if err != nil || got != want {
			t.Errorf("ParseSelect(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := ParseSelect("some"); err == nil {
		t.Error("ParseSelect(some) succeeded")
	}
}

// slowWriter sleeps before every write, like a congested disk or pipe.
type slowWriter struct {
	syncBuffer
	delay time.Duration
}

func (s *slowWriter) Write(p []byte) (int, error) {
	time.Sleep(s.delay)
	return s.syncBuffer.Write(p)
}

func TestSlowSinkCountsLoss(t *testing.T) {
	const sent = 3000
	w := &slowWriter{delay: 200 * time.Microsecond}
	l, err := New(Options{Out: w, Select: SelectAll, Buffer: 16})
	if err != nil {
		t.Fatal(err)
	}
	f := testcluster.Flow("10.0.0.1", "10.0.0.2", 1, 2, filter.ProtoTCP)
	start := time.Now()
	for range sent {
		l.OnVerdict(f, denyVerdict, nil, time.Now(), 0)
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("offering %d records took %v: the verdict path waited for the sink", sent, d)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	var written, lost uint64
	var prevSeq uint64
	for _, e := range w.entries(t) {
		lost += e.Lost
		if e.IsSummary() {
			continue
		}
		written++
		// One producer: records get in in sequence order, so the loss a
		// record reports is exactly the gap in sequence numbers before it.
		if e.Seq-prevSeq-1 != e.Lost {
			t.Fatalf("record seq %d after seq %d reports lost %d, want %d", e.Seq, prevSeq, e.Lost, e.Seq-prevSeq-1)
		}
		prevSeq = e.Seq
	}
	if lost == 0 {
		t.Fatal("a sink this slow lost nothing: the test did not exercise overflow")
	}
	if written+lost != sent {
		t.Errorf("written %d + lost %d = %d, want %d", written, lost, written+lost, sent)
	}
	st := l.Stats()
	if st.Written != written || st.Lost != lost {
		t.Errorf("stats %+v, want written %d lost %d", st, written, lost)
	}
}

func TestConcurrentProducersAccountForEveryRecord(t *testing.T) {
	const producers, each = 4, 2000
	w := &slowWriter{delay: 20 * time.Microsecond}
	l, err := New(Options{Out: w, Select: SelectAll, Buffer: 64})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for p := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f := testcluster.Flow(fmt.Sprintf("10.0.0.%d", p+1), "10.0.0.200", 1, 2, filter.ProtoTCP)
			for range each {
				l.OnVerdict(f, denyVerdict, nil, time.Now(), 0)
			}
		}()
	}
	wg.Wait()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	var written, lost uint64
	seen := map[uint64]bool{}
	for _, e := range w.entries(t) {
		lost += e.Lost
		if !e.IsSummary() {
			written++
			if seen[e.Seq] {
				t.Fatalf("seq %d written twice", e.Seq)
			}
			seen[e.Seq] = true
		}
	}
	if written+lost != producers*each {
		t.Errorf("written %d + lost %d = %d, want %d", written, lost, written+lost, producers*each)
	}
}

func TestPeriodicSummaryReportsLossWithoutLaterRecords(t *testing.T) {
	// The writer is stuck on its first line until released, so records
	// after the buffer fills are lost; no record follows them, so only the
	// periodic summary can report them.
	release := make(chan struct{})
	w := &gateWriter{gate: release}
	l, err := New(Options{Out: w, Select: SelectAll, Buffer: 2, ReportInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	f := testcluster.Flow("10.0.0.1", "10.0.0.2", 1, 2, filter.ProtoTCP)
	for range 10 {
		l.OnVerdict(f, denyVerdict, nil, time.Now(), 0)
	}
	close(release)
	deadline := time.Now().Add(5 * time.Second)
	for {
		var lost uint64
		n := 0
		for _, e := range w.entries(t) {
			lost += e.Lost
			if !e.IsSummary() {
				n++
			}
		}
		if n+int(lost) == 10 && lost > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 5s: %d written, %d reported lost, want 10 in all", n, lost)
		}
		time.Sleep(10 * time.Millisecond)
	}
	l.Close()
}

type gateWriter struct {
	syncBuffer
	gate chan struct{}
}

func (g *gateWriter) Write(p []byte) (int, error) {
	<-g.gate
	return g.syncBuffer.Write(p)
}

func TestRateLimit(t *testing.T) {
	var buf syncBuffer
	// 1 record/s with a burst of 3: back-to-back records beyond the third
	// from one source are suppressed; another source has its own bucket.
	l, err := New(Options{Out: &buf, Select: SelectAll, RatePerSec: 1, Burst: 3})
	if err != nil {
		t.Fatal(err)
	}
	a := testcluster.Flow("10.0.0.1", "10.0.0.9", 1, 2, filter.ProtoTCP)
	b := testcluster.Flow("10.0.0.2", "10.0.0.9", 1, 2, filter.ProtoTCP)
	for range 10 {
		l.OnVerdict(a, denyVerdict, nil, time.Now(), 0)
	}
	for range 2 {
		l.OnVerdict(b, denyVerdict, nil, time.Now(), 0)
	}
	l.Close()
	bySrc := map[string]int{}
	var limited uint64
	for _, e := range buf.entries(t) {
		limited += e.RateLimited
		if !e.IsSummary() {
			bySrc[e.Src]++
		}
	}
	if bySrc["10.0.0.1"] != 3 || bySrc["10.0.0.2"] != 2 {
		t.Errorf("written per source %v, want 10.0.0.1:3 10.0.0.2:2", bySrc)
	}
	if limited != 7 {
		t.Errorf("rate_limited reported %d, want 7", limited)
	}
	if st := l.Stats(); st.RateLimited != 7 || st.Lost != 0 {
		t.Errorf("stats %+v, want 7 rate limited, 0 lost", st)
	}
}

func TestLimiterRefill(t *testing.T) {
	a := netip.MustParseAddr("10.0.0.1")
	tests := []struct {
		name  string
		rate  float64
		burst int
		at    []int64 // ms
		want  []bool
	}{
		{"burst then empty", 10, 2, []int64{0, 0, 0}, []bool{true, true, false}},
		{"refills at rate", 10, 1, []int64{0, 50, 100, 150, 200}, []bool{true, false, true, false, true}},
		{"refill capped at burst", 1000, 2, []int64{0, 1000, 1000, 1000}, []bool{true, true, true, false}},
		{"clock going back takes no tokens", 1, 1, []int64{1000, 0}, []bool{true, false}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := newLimiter(tc.rate, tc.burst, 16)
			for i, ms := range tc.at {
				if got := l.allow(a, ms*int64(time.Millisecond)); got != tc.want[i] {
					t.Errorf("call %d at %dms: allow %v, want %v", i, ms, got, tc.want[i])
				}
			}
		})
	}
}

func TestLimiterBounded(t *testing.T) {
	l := newLimiter(1, 1, 64)
	for i := range 5000 {
		l.allow(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 0)
	}
	if n := l.sources(); n > 64 {
		t.Errorf("limiter tracks %d sources, bound is 64", n)
	}
}

func TestRotation(t *testing.T) {
	tests := []struct {
		name      string
		max       int64
		keep      int
		lines     int
		wantFiles []string // existing after writing
		gone      []string
	}{
		{"keep 2", 200, 2, 20, []string{"log", "log.1", "log.2"}, []string{"log.3"}},
		{"keep 0 truncates", 200, 0, 20, []string{"log"}, []string{"log.1"}},
		{"no rotation under the limit", 10000, 2, 20, []string{"log"}, []string{"log.1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "log")
			r, err := OpenRotating(path, tc.max, tc.keep)
			if err != nil {
				t.Fatal(err)
			}
			for i := range tc.lines {
				// 50-byte lines: 4 fit in 200 bytes.
				if _, err := fmt.Fprintf(r, "%049d\n", i); err != nil {
					t.Fatal(err)
				}
			}
			if err := r.Close(); err != nil {
				t.Fatal(err)
			}
			for _, f := range tc.wantFiles {
				st, err := os.Stat(filepath.Join(dir, f))
				if err != nil {
					t.Errorf("%s: %v", f, err)
					continue
				}
				if st.Size() > tc.max {
					t.Errorf("%s is %d bytes, limit %d", f, st.Size(), tc.max)
				}
			}
			for _, f := range tc.gone {
				if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
					t.Errorf("%s exists, want it rotated away", f)
				}
			}
			// The kept files, oldest first, hold the newest lines in order.
			var all []string
			for i := len(tc.wantFiles) - 1; i >= 0; i-- {
				b, _ := os.ReadFile(filepath.Join(dir, tc.wantFiles[i]))
				all = append(all, strings.Fields(string(b))...)
			}
			for i, l := range all {
				want := tc.lines - len(all) + i
				if l != fmt.Sprintf("%049d", want) {
					t.Fatalf("line %d of kept files is %s, want %d", i, l, want)
				}
			}
			if tc.max >= int64(50*tc.lines) && len(all) != tc.lines {
				t.Errorf("kept %d lines, want all %d", len(all), tc.lines)
			}
		})
	}
}

func TestRotatingAppendsToExisting(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	if err := os.WriteFile(path, []byte("old\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := OpenRotating(path, 6, 1)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(r, "new\n")
	r.Close()
	old, _ := os.ReadFile(path + ".1")
	cur, _ := os.ReadFile(path)
	if string(old) != "old\n" || string(cur) != "new\n" {
		t.Errorf("file.1 %q file %q: want the existing content rotated out", old, cur)
	}
	if _, err := OpenRotating("", 1, 1); err == nil {
		t.Error("empty path accepted")
	}
	if _, err := OpenRotating(path, 1, -1); err == nil {
		t.Error("negative keep accepted")
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	if _, err := New(Options{}); err == nil {
		t.Error("no output accepted")
	}
	if _, err := New(Options{Out: io.Discard, Select: 9}); err == nil {
		t.Error("unknown selection accepted")
	}
}

func TestOnVerdictAllocatesNothing(t *testing.T) {
	// A sink that never returns keeps the writer goroutine (which renders,
	// and may allocate) out of the measurement: only the verdict path runs.
	gate := make(chan struct{})
	defer close(gate)
	w := &gateWriter{gate: gate}
	for _, tc := range []struct {
		name string
		o    Options
	}{
		{"enqueue", Options{Out: w, Select: SelectAll, Buffer: 1 << 16}},
		{"buffer full", Options{Out: w, Select: SelectAll, Buffer: 1}},
		{"rate limited", Options{Out: w, Select: SelectAll, Buffer: 1 << 16, RatePerSec: 1, Burst: 1}},
		{"filtered out", Options{Out: w, Select: SelectDenied, Buffer: 1 << 16}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := New(tc.o)
			if err != nil {
				t.Fatal(err)
			}
			f := testcluster.Flow("10.0.0.1", "10.0.0.2", 1, 2, filter.ProtoTCP)
			v := allowVerdict
			if tc.o.Select == SelectAll {
				v = denyVerdict
			}
			// Let the rate limiter see this source first: its first insert
			// may size the map.
			l.OnVerdict(f, v, nil, time.Now(), 0)
			if n := testing.AllocsPerRun(1000, func() { l.OnVerdict(f, v, nil, time.Now(), time.Microsecond) }); n != 0 {
				t.Errorf("OnVerdict allocates %v per call", n)
			}
		})
	}
}

func BenchmarkOnVerdict(b *testing.B) {
	l, err := New(Options{Out: io.Discard, Select: SelectAll, RatePerSec: 1e9, Burst: 1 << 30})
	if err != nil {
		b.Fatal(err)
	}
	f := testcluster.Flow("10.0.0.1", "10.0.0.2", 1, 2, filter.ProtoTCP)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			l.OnVerdict(f, denyVerdict, nil, time.Now(), time.Microsecond)
		}
	})
	b.StopTimer()
	l.Close()
	st := l.Stats()
	b.ReportMetric(float64(st.Lost)/float64(b.N), "lost/op")
}
