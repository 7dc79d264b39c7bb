package ociimage

import (
	"archive/tar"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// readTarball reads back the tarball's manifest.json tags, config and the
// single layer's entries (name -> type, link, mode, content).
func readTarball(t *testing.T, file, tag string) (tags []string, cfg Config, entries map[string]string) {
	t.Helper()
	ref, err := name.NewTag(tag)
	if err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(file, &ref)
	if err != nil {
		t.Fatalf("reading %s back: %v", file, err)
	}
	m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(file) })
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range m {
		tags = append(tags, d.RepoTags...)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != "amd64" {
		t.Errorf("platform %s/%s, want linux/amd64", cf.OS, cf.Architecture)
	}
	cfg = Config{Entrypoint: cf.Config.Entrypoint, Cmd: cf.Config.Cmd, User: cf.Config.User, Env: cf.Config.Env}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers: %d, %v; want 1", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	entries = map[string]string{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(Epoch) {
			t.Errorf("%s: uid %d gid %d mtime %v, want root and the epoch", h.Name, h.Uid, h.Gid, h.ModTime)
		}
		entries[h.Name] = fmt.Sprintf("%c %s %o %s", h.Typeflag, h.Linkname, h.Mode, b)
	}
	return tags, cfg, entries
}

func TestWriteTarball(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "hello")
	if err := os.WriteFile(src, []byte("#!hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	tree := filepath.Join(dir, "tree")
	if err := os.MkdirAll(filepath.Join(tree, "usr", "lib"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "usr", "lib", "libx.so"), []byte("lib"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("libx.so", filepath.Join(tree, "usr", "lib", "libx.so.1")); err != nil {
		t.Fatal(err)
	}

	l := NewLayer()
	if err := l.AddTree(tree); err != nil {
		t.Fatal(err)
	}
	if err := l.AddFile(src, "/usr/local/bin/hello", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := l.AddSymlink("usr/lib", "/lib"); err != nil {
		t.Fatal(err)
	}
	want := Config{Entrypoint: []string{"/usr/local/bin/hello"}, Cmd: []string{"run"}, Env: []string{"PATH=/usr/bin"}}
	img, err := Image(l, want)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "img.tar")
	const tag = "registry.k8s.io/example/hello:1.2"
	if err := WriteTarball(out, tag, img); err != nil {
		t.Fatal(err)
	}

	tags, cfg, entries := readTarball(t, out, tag)
	if !reflect.DeepEqual(tags, []string{tag}) {
		t.Errorf("RepoTags %q, want [%s]", tags, tag)
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("config %+v, want %+v", cfg, want)
	}
	wantEntries := map[string]string{
		"lib":                 "2 usr/lib 777 ",
		"usr/":                "5  755 ",
		"usr/lib/":            "5  755 ",
		"usr/lib/libx.so":     "0  644 lib",
		"usr/lib/libx.so.1":   "2 libx.so 777 ",
		"usr/local/":          "5  755 ",
		"usr/local/bin/":      "5  755 ",
		"usr/local/bin/hello": "0  755 #!hello",
	}
	if !reflect.DeepEqual(entries, wantEntries) {
		got, _ := json.MarshalIndent(entries, "", " ")
		t.Errorf("layer entries:\n%s\nwant %v", got, wantEntries)
	}

	// Same inputs, same image: the digest is reproducible.
	img2, err := Image(l, want)
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := img.Digest()
	d2, _ := img2.Digest()
	if d1 != d2 {
		t.Errorf("digests differ for the same inputs: %s vs %s", d1, d2)
	}
}

func TestBadInput(t *testing.T) {
	l := NewLayer()
	for _, err := range []error{
		l.AddFile("/nonexistent/file", "/x", 0o644),
		l.AddFile(t.TempDir(), "/x", 0o644), // a directory
		l.AddSymlink("x", "relative/path"),
		l.AddSymlink("", "/y"),
		l.AddDir("/", 0o755),
	} {
		if err == nil {
			t.Error("bad input accepted")
		}
	}
	img, err := Image(NewLayer(), Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteTarball(filepath.Join(t.TempDir(), "x.tar"), "no tag here!", img); err == nil {
		t.Error("invalid tag accepted")
	}
}
