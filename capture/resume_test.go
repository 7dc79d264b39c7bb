package capture

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket/pcapgo"

	"github.com/nfqpolicy/nfqpolicy/internal/testcluster"
)

// runOnce starts a capture at path, captures every probe and closes it.
func runOnce(t *testing.T, o Options) {
	t.Helper()
	rs := testcluster.Compile(t)
	c, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range probes {
		c.OnVerdict(p.f, rs.Decide(p.f), packet(t, p.f, 20), time.Now(), time.Microsecond)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}

// sections reads the section header comments of a file in order.
func sections(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	opts := pcapgo.DefaultNgReaderOptions
	opts.SectionEndCallback = func(_ []pcapgo.NgInterface, si pcapgo.NgSectionInfo) { out = append(out, si.Comment) }
	r, err := pcapgo.NewNgReader(f, opts)
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, _, err := r.ReadPacketData(); err != nil {
			break
		}
	}
	return append(out, r.SectionInfo().Comment) // the last section ends at EOF
}

// TestRestartKeepsEarlierRuns: each start appends a section named by its
// run to what earlier runs captured, instead of truncating the file.
func TestRestartKeepsEarlierRuns(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cap.pcapng")
	for _, run := range []string{"run-a", "run-b", "run-c"} {
		runOnce(t, Options{Path: path, Select: SelectAll, RunID: run})
	}
	pkts, _ := readCapture(t, path)
	if want := 3 * len(probes); len(pkts) != want {
		t.Fatalf("%d packets after three runs, want %d", len(pkts), want)
	}
	secs := sections(t, path)
	if len(secs) != 3 {
		t.Fatalf("sections %q, want three", secs)
	}
	for i, run := range []string{"run-a", "run-b", "run-c"} {
		if !strings.Contains(secs[i], "run "+run) {
			t.Errorf("section %d comment %q does not name %s", i, secs[i], run)
		}
		if appended := strings.Contains(secs[i], "appended after"); appended != (i > 0) {
			t.Errorf("section %d comment %q: appended=%v", i, secs[i], appended)
		}
	}
}

// TestRestartCutsIncompleteBlock: a block a crash cut short is removed
// (and said so) before the new section, and the file reads cleanly.
func TestRestartCutsIncompleteBlock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cap.pcapng")
	runOnce(t, Options{Path: path, Select: SelectAll, RunID: "one"})
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	// Half a block, as a kill in the middle of a write leaves it.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte{6, 0, 0, 0, 200, 0, 0, 0, 1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	runOnce(t, Options{Path: path, Select: SelectAll, RunID: "two"})
	pkts, _ := readCapture(t, path)
	if len(pkts) != 2*len(probes) {
		t.Errorf("%d packets, want %d", len(pkts), 2*len(probes))
	}
	secs := sections(t, path)
	if len(secs) != 2 || !strings.Contains(secs[1], "cut 11 bytes of an incomplete last block") {
		t.Errorf("sections %q: want the second to say 11 bytes were cut", secs)
	}
	res, err := scanPath(path)
	if err != nil || !res.pcapng || res.packets != 2*len(probes) {
		t.Errorf("scan after restart: %+v %v (first run's file was %d bytes)", res, err, st.Size())
	}
}

// TestRestartRotatesFullOrForeignFile: a file at its segment size, or one
// that is not pcapng, moves into the ring whole rather than being
// truncated or appended to.
func TestRestartRotatesFullOrForeignFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cap.pcapng")
	if err := os.WriteFile(path, []byte("not a capture\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	runOnce(t, Options{Path: path, Select: SelectAll, RunID: "one", Segments: 3})
	if data, err := os.ReadFile(path + ".1"); err != nil || string(data) != "not a capture\n" {
		t.Fatalf("foreign file not kept as %s.1: %q %v", path, data, err)
	}
	// A full segment rotates too: SegmentPackets is reached by one run.
	runOnce(t, Options{Path: path, Select: SelectAll, RunID: "two", Segments: 3, SegmentPackets: len(probes)})
	if pkts, _ := readCapture(t, path+".1"); len(pkts) != len(probes) {
		t.Errorf("%s.1 holds %d packets, want the first run's %d", path, len(pkts), len(probes))
	}
	if data, err := os.ReadFile(path + ".2"); err != nil || string(data) != "not a capture\n" {
		t.Errorf("foreign file not shifted to .2: %q %v", data, err)
	}
	if pkts, _ := readCapture(t, path); len(pkts) != len(probes) {
		t.Errorf("current file holds %d packets, want %d", len(pkts), len(probes))
	}
}

func scanPath(path string) (scanResult, error) {
	f, err := os.Open(path)
	if err != nil {
		return scanResult{}, err
	}
	defer f.Close()
	return scanFile(f)
}
