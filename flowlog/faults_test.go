package flowlog

import (
	"fmt"
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
