package capture

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nfqpolicy/nfqpolicy/internal/testcluster"
)

// FuzzScanFile feeds the file an earlier run (or anyone) left at the
// capture path to the scan a restart runs before appending: no input may
// panic it, the valid part never exceeds the file, and a capture started
// on it appends a section a reader can read to the end.
func FuzzScanFile(f *testing.F) {
	path := filepath.Join(f.TempDir(), "seed.pcapng")
	rs := testcluster.Compile(f)
	c, err := New(Options{Path: path, Select: SelectAll, RunID: "seed"})
	if err != nil {
		f.Fatal(err)
	}
	for _, p := range probes {
		c.OnVerdict(p.f, rs.Decide(p.f), packet(f, p.f, 20), time.Now(), time.Microsecond)
	}
	if err := c.Close(); err != nil {
		f.Fatal(err)
	}
	seed, err := os.ReadFile(path)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	f.Add(seed[:len(seed)-7])
	f.Add([]byte{0x0a, 0x0d, 0x0d, 0x0a, 0, 0, 0, 28, 0x1a, 0x2b, 0x3c, 0x4d})
	f.Add([]byte("not a capture"))
	f.Fuzz(func(t *testing.T, data []byte) {
		res, err := scanFile(bytes.NewReader(data))
		if err != nil {
			t.Fatalf("scan: %v", err)
		}
		if res.valid > int64(len(data)) || res.valid < 0 {
			t.Fatalf("valid part %d of a %d-byte file", res.valid, len(data))
		}
		if res.valid > 0 && !res.pcapng {
			t.Fatalf("valid part %d of a file that is not pcapng", res.valid)
		}
		dir := t.TempDir()
		p := filepath.Join(dir, "cap.pcapng")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := New(Options{Path: p, Select: SelectAll, Segments: 2, RunID: "fuzz"})
		if err != nil {
			t.Fatalf("New on that file: %v", err)
		}
		if err := c.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		after, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if res2, _ := scanFile(bytes.NewReader(after)); !res2.pcapng || res2.valid != int64(len(after)) {
			t.Fatalf("after a restart on it the file is not whole pcapng: %+v of %d bytes", res2, len(after))
		}
	})
}

// FuzzParseMatch feeds --capture-filter expressions to the parser.
func FuzzParseMatch(f *testing.F) {
	for _, s := range []string{"", "host 10.0.0.1 and port 80", "src net 10.0.0.0/8 and proto tcp", "dst host fd00::1 or port 53", "not port 22", "((("} {
		f.Add(s)
	}
	fl := probes[0].f
	f.Fuzz(func(t *testing.T, expr string) {
		m, err := ParseMatch(expr)
		if err != nil {
			return
		}
		_ = m.Matches(&fl)
	})
}
