package flowlog

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nfqpolicy/nfqpolicy/filter"
	"github.com/nfqpolicy/nfqpolicy/internal/testcluster"
	"github.com/rs/zerolog"
)

// fullDisk refuses every write while full is set, as a full disk does.
type fullDisk struct {
	syncBuffer
	full atomic.Bool
}

func (d *fullDisk) Write(p []byte) (int, error) {
	if d.full.Load() {
		return 0, syscall.ENOSPC
	}
	return d.syncBuffer.Write(p)
}

// TestRefusedWritesAreReported: records the sink refuses are lost like
// those the buffer had no room for: counted, and reported on the next
// line written, so written + reported lost == offered.
func TestRefusedWritesAreReported(t *testing.T) {
	d := &fullDisk{}
	l, err := New(Options{Out: d, Select: SelectAll, Poll: time.Millisecond, Renderer: Renderer{Run: "r1"}})
	if err != nil {
		t.Fatal(err)
	}
	f := testcluster.Flow("10.0.0.1", "10.0.0.2", 1, 2, filter.ProtoTCP)
	offered := 0
	offer := func(n int) {
		for range n {
			l.OnVerdict(f, denyVerdict, nil, time.Now(), 0)
		}
		offered += n
		deadline := time.Now().Add(10 * time.Second)
		for st := l.Stats(); st.Written+st.Lost < uint64(offered); st = l.Stats() {
			if time.Now().After(deadline) {
				t.Fatalf("writer stuck: %+v after %d offered", st, offered)
			}
			time.Sleep(time.Millisecond)
		}
	}
	offer(5)
	d.full.Store(true)
	offer(7)
	d.full.Store(false)
	offer(3)
	if err := l.Close(); err == nil {
		t.Error("Close reported no write error after refused lines")
	}
	st := l.Stats()
	if st.Written != 8 || st.Lost != 7 {
		t.Errorf("stats %+v, want 8 written and 7 lost", st)
	}
	var lost uint64
	n := 0
	for _, e := range d.entries(t) {
		lost += e.Lost
		if !e.IsSummary() {
			n++
		}
		if e.Run != "r1" {
			t.Errorf("line without the run id: %+v", e)
		}
	}
	if n != 8 || lost != 7 {
		t.Errorf("the log holds %d records reporting %d lost, want 8 and 7", n, lost)
	}
}

// TestRotatingEndsPartialLine: a file an earlier run left in the middle
// of a line gets that line ended before the first new one.
func TestRotatingEndsPartialLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "flows.jsonl")
	if err := os.WriteFile(path, []byte("{\"seq\":1}\n{\"seq\":2,\"ver"), 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := OpenRotating(path, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Write([]byte("{\"seq\":1}\n")); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	if want := "{\"seq\":1}\n{\"seq\":2,\"ver\n{\"seq\":1}\n"; string(data) != want {
		t.Errorf("file %q, want %q", data, want)
	}
}

func TestNewRunIDDiffers(t *testing.T) {
	a, b := NewRunID(), NewRunID()
	if a == b || !strings.Contains(a, "-") {
		t.Errorf("run ids %q and %q", a, b)
	}
}

// TestRunEndsAreMarked: a run with a name ends its log with a closing
// line, after which the next run says nothing; after a run that has no
// closing line (it was killed) the next run reports the unclean end first.
func TestRunEndsAreMarked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "flows.jsonl")
	f := testcluster.Flow("10.0.0.1", "10.0.0.2", 1, 2, filter.ProtoTCP)
	run := func(id string) {
		sink, err := OpenRotating(path, 0, 1)
		if err != nil {
			t.Fatal(err)
		}
		l, err := New(Options{Out: sink, Select: SelectAll, Renderer: Renderer{Run: id}, Previous: LastEntry(path)})
		if err != nil {
			t.Fatal(err)
		}
		for range 3 {
			l.OnVerdict(f, denyVerdict, nil, time.Now(), 0)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		sink.Close()
	}
	run("a")
	run("b")
	// Run c was killed after seq 7: its records are there, no closing line.
	fh, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(fh, `{"run":"c","seq":7,"verdict":"deny"}`)
	fh.Close()
	run("d")

	data, _ := os.ReadFile(path)
	var unclean, closed []string
	for _, e := range parseEntries(t, data) {
		if e.UncleanRun != "" {
			unclean = append(unclean, e.Run+" after "+e.UncleanRun+":"+fmt.Sprint(e.LastSeq))
		}
		if e.Message == ClosedMessage {
			closed = append(closed, e.Run+":"+fmt.Sprint(e.LastSeq))
		}
	}
	for _, e := range parseEntries(t, data) {
		if e.UncleanRun != "" && !e.LostUnknown {
			t.Errorf("unclean-end line without a state file does not say its loss is unknown: %+v", e)
		}
	}
	if want := []string{"d after c:7"}; !slices.Equal(unclean, want) {
		t.Errorf("unclean-end lines %q, want %q", unclean, want)
	}
	if want := []string{"a:3", "b:3", "d:3"}; !slices.Equal(closed, want) {
		t.Errorf("closing lines %q, want %q", closed, want)
	}
}

// TestLastEntryOfFIFO: a flow log that is a FIFO (a reader process on the
// other end) has no last entry, and looking for one must not block: an
// open for reading waits for a writer, and at start that writer is the
// agent itself.
func TestLastEntryOfFIFO(t *testing.T) {
	path := filepath.Join(t.TempDir(), "flows.fifo")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	done := make(chan *Entry, 1)
	go func() { done <- LastEntry(path) }()
	select {
	case e := <-done:
		if e != nil {
			t.Errorf("LastEntry of a FIFO = %+v, want nil", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("LastEntry blocked on a FIFO")
	}
}

// gate passes n writes to w, then blocks every later one forever: a
// writer goroutine stuck in it is a process about to be killed.
type gate struct {
	w io.Writer
	n atomic.Int64
}

func (g *gate) Write(p []byte) (int, error) {
	if g.n.Add(-1) < 0 {
		select {}
	}
	return g.w.Write(p)
}

// TestKilledRunLossCounted: a run whose writer wrote two lines and then
// stopped (killed: its buffer, its pending lost and rate-limited counts
// and the line being written are gone) is reported by the next run,
// through the shared state file, with exactly what it lost; a run that
// closes cleanly is not reported.
func TestKilledRunLossCounted(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "flows.jsonl")
	state := StatePath(path)
	sink, err := OpenRotating(path, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	g := &gate{w: sink}
	g.n.Store(2)
	a, err := New(Options{Out: g, Select: SelectAll, RatePerSec: 0.001, Burst: 1, Poll: time.Millisecond,
		Renderer: Renderer{Run: "a"}, StatePath: state})
	if err != nil {
		t.Fatal(err)
	}
	const records, limited = 6, 3
	for i := range records {
		a.OnVerdict(testcluster.Flow(fmt.Sprintf("10.0.0.%d", i+1), "10.0.1.1", 1, 2, filter.ProtoTCP), denyVerdict, nil, time.Now(), 0)
	}
	for range limited {
		a.OnVerdict(testcluster.Flow("10.0.0.1", "10.0.1.1", 1, 2, filter.ProtoTCP), denyVerdict, nil, time.Now(), 0)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		data, _ := os.ReadFile(path)
		if bytes.Count(data, []byte("\n")) == 2 && g.n.Load() < 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	// Run a is "killed" now: its writer is stuck before its third line.
	run := func(id string) {
		t.Helper()
		s, err := OpenRotating(path, 0, 1)
		if err != nil {
			t.Fatal(err)
		}
		l, err := New(Options{Out: s, Select: SelectAll, Renderer: Renderer{Run: id}, StatePath: state, Previous: LastEntry(path)})
		if err != nil {
			t.Fatal(err)
		}
		l.OnVerdict(testcluster.Flow("10.0.0.1", "10.0.1.1", 1, 2, filter.ProtoTCP), denyVerdict, nil, time.Now(), 0)
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		s.Close()
	}
	run("b")
	run("c")
	data, _ := os.ReadFile(path)
	var written, lost, rl uint64
	var unclean []string
	for _, e := range parseEntries(t, data) {
		if e.Run == "a" && !e.IsSummary() {
			written++
		}
		if e.UncleanRun != "" {
			unclean = append(unclean, fmt.Sprintf("%s after %s: last_seq %d lost %d rate_limited %d unknown %v", e.Run, e.UncleanRun, e.LastSeq, e.Lost, e.RateLimited, e.LostUnknown))
			lost, rl = e.Lost, e.RateLimited
		}
	}
	if want := []string{"b after a: last_seq 2 lost 4 rate_limited 3 unknown false"}; !slices.Equal(unclean, want) {
		t.Errorf("unclean-end lines %q, want %q\n%s", unclean, want, data)
	}
	if written+lost+rl != records+limited {
		t.Errorf("run a: %d records written + %d counted lost + %d rate-limited = %d, want every decision (%d)", written, lost, rl, written+lost+rl, records+limited)
	}
}

// TestReportPrevious: what the unclean-end line says for each way the
// log's last line and the state file can be left.
func TestReportPrevious(t *testing.T) {
	at := time.Date(2026, 12, 4, 20, 0, 0, 123456789, time.UTC)
	rec := func(run string, seq uint64) *Entry { return &Entry{Run: run, Seq: seq, Verdict: "deny", Time: at} }
	state := func(run string, issued, acc, limited, limRep uint64) *PreviousRun {
		return &PreviousRun{Run: run, Issued: issued, Accounted: acc, Limited: limited, LimitedReports: limRep}
	}
	pending := func(p *PreviousRun, seq, acc uint64) *PreviousRun {
		p.pending, p.pendSeq, p.pendTime, p.pendAcc, p.pendLimRep = true, seq, at.UnixNano(), acc, p.LimitedReports
		return p
	}
	closed := func(p *PreviousRun) *PreviousRun { p.Closed = true; return p }
	tests := []struct {
		name string
		last *Entry
		prev *PreviousRun
		want string // "" no line; else "run last_seq lost rate_limited" or "run last_seq unknown"
	}{
		{"first run", nil, nil, ""},
		{"no state, closed", &Entry{Run: "a", Message: ClosedMessage}, nil, ""},
		{"no state, killed", rec("a", 7), nil, "a 7 unknown"},
		{"no state, no run ids", rec("", 7), nil, ""},
		{"state closed", &Entry{Run: "a", Message: ClosedMessage}, closed(state("a", 9, 9, 0, 0)), ""},
		{"killed after the closing line", &Entry{Run: "a", Message: ClosedMessage, LastSeq: 9, Time: at}, pending(state("a", 9, 9, 0, 0), 0, 9), ""},
		{"killed", rec("a", 7), state("a", 10, 7, 2, 1), "a 7 3 1"},
		{"killed, nothing lost", rec("a", 7), state("a", 7, 7, 0, 0), "a 7 0 0"},
		{"killed after writing the pending line", rec("a", 8), pending(state("a", 10, 7, 0, 0), 8, 8), "a 8 2 0"},
		{"killed before writing the pending line", rec("a", 7), pending(state("a", 10, 7, 0, 0), 8, 8), "a 7 3 0"},
		{"pending line of another time", &Entry{Run: "a", Seq: 8, Verdict: "deny", Time: at.Add(1)}, pending(state("a", 10, 7, 0, 0), 8, 8), "a 8 3 0"},
		{"killed before writing a line", &Entry{Run: "z", Message: ClosedMessage}, state("a", 4, 0, 0, 0), "a 0 4 0"},
		{"killed reporting the run before", &Entry{Run: "b", UncleanRun: "a", LastSeq: 3}, state("a", 4, 3, 0, 0), "b 0 0 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			l := &Logger{zl: zerolog.New(&buf), rd: Renderer{Run: "new"}}
			l.reportPrevious(tt.last, tt.prev)
			got := ""
			if buf.Len() > 0 {
				es := parseEntries(t, buf.Bytes())
				if len(es) != 1 {
					t.Fatalf("%d lines: %s", len(es), buf.String())
				}
				e := es[0]
				if e.Run != "new" {
					t.Errorf("reported by run %q", e.Run)
				}
				got = fmt.Sprintf("%s %d %d %d", e.UncleanRun, e.LastSeq, e.Lost, e.RateLimited)
				if e.LostUnknown {
					got = fmt.Sprintf("%s %d unknown", e.UncleanRun, e.LastSeq)
				}
			}
			if got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

// TestRunStateFile: the state a run leaves is read back by the next (a
// fresh mapping of the same file), a file that is not a state file is
// none, and a state file that is not a regular file is refused.
func TestRunStateFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s")
	s, prev, err := openRunState(path)
	if err != nil || prev != nil {
		t.Fatalf("new state file: %+v, %v", prev, err)
	}
	s.begin("a")
	s.u64(offIssued).Add(5)
	s.writing(1, 42, 3, 1)
	s.written(true)
	_, prev, err = openRunState(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := (PreviousRun{Run: "a", Issued: 5, Accounted: 3, LimitedReports: 1, pendSeq: 1, pendTime: 42, pendAcc: 3, pendLimRep: 1}); prev == nil || *prev != want {
		t.Errorf("state read back %+v, want %+v", prev, want)
	}
	if err := os.WriteFile(path, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, prev, err := openRunState(path); err != nil || prev != nil {
		t.Errorf("garbage state file: %+v, %v; want none", prev, err)
	}
	if _, _, err := openRunState(dir); err == nil {
		t.Error("a directory accepted as state file")
	}
	if StatePath("/var/log/flows.jsonl") != "/var/log/.flows.jsonl.state" {
		t.Errorf("StatePath = %q", StatePath("/var/log/flows.jsonl"))
	}
}
