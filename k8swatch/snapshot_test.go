package k8swatch

import (
	"bytes"
	"context"
	"github.com/nfqpolicy/nfqpolicy/cluster"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// syncBuffer is a log sink the source's goroutine and the test share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func waitChanged(t *testing.T, src *SnapshotSource, what string) *cluster.Cluster {
	t.Helper()
	select {
	case <-src.Changed():
	case <-time.After(5 * time.Second):
		t.Fatalf("no change signalled: %s", what)
	}
	c, ok := src.Current()
	if !ok {
		t.Fatalf("Current not ok after change: %s", what)
	}
	return c
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	// Write through a temporary file and rename, as careful writers do,
	// but also bump the mtime so that even same-size rewrites are seen.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestSnapshotSource(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "snap.yaml")
	writeFile(t, file, policyDoc("one", "  podSelector: {}\n"))

	var logs syncBuffer
	src := NewSnapshotSource([]string{file}, 20*time.Millisecond, zerolog.New(&logs))
	if _, ok := src.Current(); ok {
		t.Fatal("Current ok before Run")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	c := waitChanged(t, src, "initial load")
	if got := policyNames(c); len(got) != 1 || got[0] != "default/one" {
		t.Fatalf("initial policies %v", got)
	}

	// A content change is published.
	writeFile(t, file, policyDoc("one", "  podSelector: {}\n")+"---\n"+policyDoc("two", "  podSelector: {}\n"))
	c = waitChanged(t, src, "second policy added")
	if got := policyNames(c); len(got) != 2 {
		t.Fatalf("after rewrite: %v", got)
	}

	// Touching a file without changing it publishes nothing.
	now := time.Now().Add(time.Second)
	if err := os.Chtimes(file, now, now); err != nil {
		t.Fatal(err)
	}
	select {
	case <-src.Changed():
		t.Fatal("a touched, unchanged file was republished")
	case <-time.After(200 * time.Millisecond):
	}

	// A file that no longer parses keeps the last good state.
	writeFile(t, file, "apiVersion: v1\nkind: [broken\n")
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), "keeping the last good state") {
		if time.Now().After(deadline) {
			t.Fatalf("bad file not logged; logs:\n%s", logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if c2, _ := src.Current(); c2 != c {
		t.Fatal("a bad file replaced the published state")
	}
	select {
	case <-src.Changed():
		t.Fatal("a bad file signalled a change")
	default:
	}

	// Invalid objects: the valid ones are published, the rest logged.
	writeFile(t, file, policyDoc("three", "  podSelector: {}\n")+"---\n"+policyDoc("bad", "  podSelector: {}\n  ingress: [{ports: [{port: 0}]}]\n"))
	c = waitChanged(t, src, "partly invalid file")
	if got := policyNames(c); len(got) != 1 || got[0] != "default/three" {
		t.Fatalf("after partly invalid file: %v", got)
	}
	if !strings.Contains(logs.String(), `"message":"invalid object skipped: invalid value 0: must be between 1 and 65535, inclusive"`) ||
		!strings.Contains(logs.String(), `"field":"spec.ingress[0].ports[0].port"`) {
		t.Errorf("invalid object not logged as JSON with its field; logs:\n%s", logs.String())
	}

	// A deleted file keeps the last good state too.
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if c2, _ := src.Current(); c2 != c {
		t.Fatal("a deleted file replaced the published state")
	}
	// And coming back is picked up.
	writeFile(t, file, policyDoc("four", "  podSelector: {}\n"))
	c = waitChanged(t, src, "file restored")
	if got := policyNames(c); len(got) != 1 || got[0] != "default/four" {
		t.Fatalf("after restore: %v", got)
	}
}

func TestSnapshotSourceStartErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("kind: [\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, paths := range [][]string{{filepath.Join(dir, "missing.yaml")}, {bad}} {
		src := NewSnapshotSource(paths, 10*time.Millisecond, zerolog.Nop())
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := src.Run(ctx)
		cancel()
		if err == nil {
			t.Errorf("Run(%v) started", paths)
		}
		if _, ok := src.Current(); ok {
			t.Errorf("Run(%v): Current ok after a failed start", paths)
		}
	}
}

func policyDoc(name, spec string) string {
	return "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: " + name + ", namespace: default}\nspec:\n" + spec
}

func policyNames(c *cluster.Cluster) []string {
	var out []string
	for _, p := range c.Policies {
		out = append(out, p.Namespace+"/"+p.Name)
	}
	return out
}
