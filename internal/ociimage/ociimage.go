// Package ociimage writes single-layer container images as tarballs without
// a container engine: the layer is built from files on disk, the config
// carries entrypoint, command, user and environment, and the result is the
// tarball format `docker load`, `podman load` and `ctr images import` all
// read (manifest.json with RepoTags plus the blobs).
//
// Layers are reproducible: entries are sorted, owned by root and stamped
// with a fixed time, so the same inputs give the same image digest.
package ociimage

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Epoch is the modification time of every layer entry and the image's
// creation time.
var Epoch = time.Unix(0, 0).UTC()

// Config is the runtime part of the image config.
type Config struct {
	Entrypoint []string
	Cmd        []string
	User       string
	Env        []string
	WorkingDir string
}

// Layer collects the files of one layer, keyed by their absolute path in
// the image.
type Layer struct {
	entries map[string]entry
}

type entry struct {
	typ  byte   // tar.TypeReg, TypeDir, TypeSymlink
	src  string // regular files: path on disk
	link string // symlinks: target
	mode int64
}

// NewLayer returns an empty layer.
func NewLayer() *Layer { return &Layer{entries: map[string]entry{}} }

func clean(p string) (string, error) {
	if !strings.HasPrefix(p, "/") {
		return "", fmt.Errorf("image path %q is not absolute", p)
	}
	c := path.Clean(p)
	if c == "/" {
		return "", fmt.Errorf("image path %q names the root", p)
	}
	return c, nil
}

// parents adds the directories leading to p (mode 0755) unless present.
func (l *Layer) parents(p string) {
	for d := path.Dir(p); d != "/"; d = path.Dir(d) {
		if _, ok := l.entries[d]; !ok {
			l.entries[d] = entry{typ: tar.TypeDir, mode: 0o755}
		}
	}
}

// AddFile adds the regular file src from disk at dst with the given mode.
func (l *Layer) AddFile(src, dst string, mode fs.FileMode) error {
	dst, err := clean(dst)
	if err != nil {
		return err
	}
	fi, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("layer file %s: %w", src, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("layer file %s: not a regular file", src)
	}
	l.parents(dst)
	l.entries[dst] = entry{typ: tar.TypeReg, src: src, mode: int64(mode.Perm())}
	return nil
}

// AddSymlink adds a symbolic link at dst pointing to target.
func (l *Layer) AddSymlink(target, dst string) error {
	dst, err := clean(dst)
	if err != nil {
		return err
	}
	if target == "" {
		return fmt.Errorf("symlink %s: empty target", dst)
	}
	l.parents(dst)
	l.entries[dst] = entry{typ: tar.TypeSymlink, link: target, mode: 0o777}
	return nil
}

// AddDir adds an empty directory at dst.
func (l *Layer) AddDir(dst string, mode fs.FileMode) error {
	dst, err := clean(dst)
	if err != nil {
		return err
	}
	l.parents(dst)
	l.entries[dst] = entry{typ: tar.TypeDir, mode: int64(mode.Perm())}
	return nil
}

// AddTree adds everything under the directory root (regular files,
// directories, symlinks) at the same paths under "/". Other file types
// (devices, sockets) are an error: a rootfs unpacked from packages has none.
func (l *Layer) AddTree(root string) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		dst := "/" + filepath.ToSlash(rel)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case fi.Mode().IsRegular():
			return l.AddFile(p, dst, fi.Mode())
		case fi.IsDir():
			return l.AddDir(dst, fi.Mode())
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return l.AddSymlink(target, dst)
		}
		return fmt.Errorf("layer tree %s: %s has unsupported type %s", root, p, fi.Mode().Type())
	})
}

// Paths lists the layer's entries, sorted.
func (l *Layer) Paths() []string {
	ps := make([]string, 0, len(l.entries))
	for p := range l.entries {
		ps = append(ps, p)
	}
	sort.Strings(ps)
	return ps
}

// tar renders the layer as an uncompressed tar stream.
func (l *Layer) tar() ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range l.Paths() {
		e := l.entries[p]
		h := &tar.Header{
			Typeflag: e.typ,
			Name:     strings.TrimPrefix(p, "/"),
			Linkname: e.link,
			Mode:     e.mode,
			ModTime:  Epoch,
			Format:   tar.FormatPAX,
		}
		var data []byte
		switch e.typ {
		case tar.TypeDir:
			h.Name += "/"
		case tar.TypeReg:
			b, err := os.ReadFile(e.src)
			if err != nil {
				return nil, fmt.Errorf("layer file %s: %w", e.src, err)
			}
			data = b
			h.Size = int64(len(b))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("layer entry %s: %w", p, err)
		}
		if _, err := tw.Write(data); err != nil {
			return nil, fmt.Errorf("layer entry %s: %w", p, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Image builds the image of one layer with cfg, for linux/amd64.
func Image(l *Layer, cfg Config) (v1.Image, error) {
	data, err := l.tar()
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	})
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, fmt.Errorf("appending the layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture = "amd64"
	cf.OS = "linux"
	cf.Created = v1.Time{Time: Epoch}
	cf.Config.Entrypoint = cfg.Entrypoint
	cf.Config.Cmd = cfg.Cmd
	cf.Config.User = cfg.User
	cf.Config.Env = cfg.Env
	cf.Config.WorkingDir = cfg.WorkingDir
	return mutate.ConfigFile(img, cf)
}

// WriteTarball writes img tagged tag (for example
// "registry.k8s.io/pause:3.10.2") to file, atomically.
func WriteTarball(file, tag string, img v1.Image) error {
	ref, err := name.NewTag(tag, name.StrictValidation)
	if err != nil {
		return fmt.Errorf("image tag %q: %w", tag, err)
	}
	tmp := file + ".tmp"
	if err := tarball.WriteToFile(tmp, ref, img); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", file, err)
	}
	return os.Rename(tmp, file)
}
