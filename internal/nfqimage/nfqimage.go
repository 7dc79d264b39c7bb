// Package nfqimage is the recipe of the nfqpolicy container image and its
// builder for machines without a container engine (`make image`).
//
// The recipe (Debian packages, binary path, entrypoint, command, user) is
// the one deploy/Dockerfile spells for Docker users; a test holds the two in
// step. The builder resolves the packages' dependency closure with apt
// against an empty dpkg status (what a fresh rootfs would install),
// downloads the .debs from the machine's Debian sources, unpacks them with
// dpkg-deb -x and adds the links their maintainer scripts would have made.
// Nothing is copied from the build machine's own /usr.
package nfqimage

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/nfqpolicy/nfqpolicy/internal/ociimage"
)

// The recipe. deploy/Dockerfile must say the same (TestDockerfileInStep).
var (
	// Packages are installed on top of debian:bookworm-slim by the
	// Dockerfile; the builder installs them and their dependencies into an
	// empty rootfs. iptables brings both backends (xtables-legacy-multi and
	// xtables-nft-multi); the agent picks the node's (see
	// dataplane/iptables.Detect).
	Packages = []string{"iptables", "ipset", "conntrack"}
	// Base is the part of debian:bookworm-slim, the Dockerfile's base
	// image, that a user runs in the agent's container (kubectl exec):
	// the shells, coreutils and the text tools, and the files that make it
	// a Debian system (os-release, passwd). The Dockerfile gets them from
	// its base image; make image installs them like Packages.
	Base = []string{"base-files", "base-passwd", "bash", "dash", "coreutils", "diffutils", "findutils",
		"grep", "gzip", "hostname", "mawk", "sed", "tar"}
	// Binary is where the static nfqpolicy binary goes.
	Binary = "/usr/local/bin/nfqpolicy"
	// Entrypoint and Cmd of the image.
	Entrypoint = []string{Binary}
	Cmd        = []string{"run"}
	// User is empty: the agent runs as root (it needs CAP_NET_ADMIN in the
	// node's network namespace; the DaemonSet grants it).
	User = ""
	// Env: PATH as debian images set it, so the agent finds iptables-*.
	Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
)

// Release is the Debian release of the packages: the build machine's apt
// sources (Debian 12 here) and the Dockerfile's debian:bookworm-slim base.
const Release = "bookworm"

// Tag is the tag `make image` gives the image by default.
const Tag = "ghcr.io/nfqpolicy/nfqpolicy:dev"

// alternatives are the links Debian's maintainer scripts (update-alternatives
// in iptables.postinst) make, which dpkg-deb -x does not run. The plain names
// point at the nft backend, Debian's default; the agent itself calls the
// -legacy or -nft binaries explicitly after detecting the node's backend.
var alternatives = map[string]string{
	"/usr/sbin/iptables":          "iptables-nft",
	"/usr/sbin/iptables-save":     "iptables-nft-save",
	"/usr/sbin/iptables-restore":  "iptables-nft-restore",
	"/usr/sbin/ip6tables":         "ip6tables-nft",
	"/usr/sbin/ip6tables-save":    "ip6tables-nft-save",
	"/usr/sbin/ip6tables-restore": "ip6tables-nft-restore",
	"/usr/bin/awk":                "mawk",
}

// copies are the files maintainer scripts create from a package's own
// templates: base-passwd's postinst installs the master passwd and group.
var copies = map[string]string{
	"/usr/share/base-passwd/passwd.master": "/etc/passwd",
	"/usr/share/base-passwd/group.master":  "/etc/group",
}

// Options of Build.
type Options struct {
	// Binary is the static nfqpolicy binary to put at Binary.
	Binary string
	// Out is the tarball to write; Tag its tag (default Tag).
	Out, Tag string
	// WorkDir holds the downloaded .debs and the unpacked rootfs; it is
	// created if missing and may be reused (downloads are kept).
	WorkDir string
	// Log receives progress lines; nil discards them.
	Log func(format string, args ...any)
}

// Build writes the nfqpolicy image tarball.
func Build(ctx context.Context, o Options) error {
	if o.Tag == "" {
		o.Tag = Tag
	}
	logf := o.Log
	if logf == nil {
		logf = func(string, ...any) {}
	}
	if rel, err := osRelease("/etc/os-release"); err != nil || rel != Release {
		return fmt.Errorf("make image unpacks packages from this machine's apt sources, which must be Debian %s (the Dockerfile's base); /etc/os-release says %q (%v)", Release, rel, err)
	}
	debs, err := Download(ctx, filepath.Join(o.WorkDir, "debs"), append(slices.Clone(Base), Packages...))
	if err != nil {
		return err
	}
	logf("unpacking %d packages: %s", len(debs), strings.Join(debNames(debs), " "))
	root := filepath.Join(o.WorkDir, "rootfs")
	if err := os.RemoveAll(root); err != nil {
		return err
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	for _, d := range debs {
		if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", d, root).CombinedOutput(); err != nil {
			return fmt.Errorf("dpkg-deb -x %s: %w: %s", d, err, out)
		}
	}
	l := ociimage.NewLayer()
	if err := l.AddTree(root); err != nil {
		return err
	}
	for link, target := range alternatives {
		if _, err := os.Lstat(filepath.Join(root, filepath.Dir(link), target)); err != nil {
			return fmt.Errorf("alternative %s: target %s missing from the packages: %w", link, target, err)
		}
		if err := l.AddSymlink(target, link); err != nil {
			return err
		}
	}
	for src, dst := range copies {
		if err := l.AddFile(filepath.Join(root, src), dst, 0o644); err != nil {
			return fmt.Errorf("maintainer-script file %s: %w", dst, err)
		}
	}
	// Debian's usrmerge links, present in every bookworm image.
	for _, d := range []string{"bin", "sbin", "lib", "lib64"} {
		if _, err := os.Lstat(filepath.Join(root, d)); err == nil {
			continue // the packages brought it
		}
		if _, err := os.Stat(filepath.Join(root, "usr", d)); err == nil {
			if err := l.AddSymlink("usr/"+d, "/"+d); err != nil {
				return err
			}
		}
	}
	// The xtables lock of the legacy backend and the agent's runtime dir.
	for _, d := range []string{"/run", "/tmp", "/var/run"} {
		if err := l.AddDir(d, 0o755); err != nil {
			return err
		}
	}
	if err := l.AddFile(o.Binary, Binary, 0o755); err != nil {
		return err
	}
	img, err := ociimage.Image(l, ociimage.Config{Entrypoint: Entrypoint, Cmd: Cmd, User: User, Env: Env})
	if err != nil {
		return err
	}
	if err := ociimage.WriteTarball(o.Out, o.Tag, img); err != nil {
		return err
	}
	logf("wrote %s (%s)", o.Out, o.Tag)
	return nil
}

// Download fetches the .debs of pkgs and of everything they depend on, as
// apt resolves it for an empty system (no package installed, no
// recommends), into dir, and returns their paths sorted. The dir's old
// .debs are removed first so that no stale version slips in.
func Download(ctx context.Context, dir string, pkgs []string) ([]string, error) {
	// apt resolves relative Dir:: paths against its own directories.
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, "partial"), 0o755); err != nil {
		return nil, err
	}
	old, err := filepath.Glob(filepath.Join(dir, "*.deb"))
	if err != nil {
		return nil, err
	}
	for _, f := range old {
		if err := os.Remove(f); err != nil {
			return nil, err
		}
	}
	// A fresh machine (or a slim container) may have no package lists yet.
	if lists, _ := filepath.Glob("/var/lib/apt/lists/*_Packages*"); len(lists) == 0 {
		if out, err := exec.CommandContext(ctx, "apt-get", "update", "-qq").CombinedOutput(); err != nil {
			return nil, fmt.Errorf("apt-get update (no package lists yet): %w\n%s", err, out)
		}
	}
	status := filepath.Join(dir, "empty-status")
	if err := os.WriteFile(status, nil, 0o644); err != nil {
		return nil, err
	}
	args := []string{
		"-o", "Dir::State::status=" + status,
		"-o", "Dir::Cache::archives=" + dir,
		"-o", "Debug::NoLocking=1",
		"-o", "APT::Install-Recommends=false",
		"-o", "APT::Get::AllowUnauthenticated=false",
		"install", "--download-only", "-y", "-q",
	}
	args = append(args, pkgs...)
	cmd := exec.CommandContext(ctx, "apt-get", args...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("apt-get install --download-only %s (run apt-get update first if the package lists are missing): %w\n%s",
			strings.Join(pkgs, " "), err, out)
	}
	debs, err := filepath.Glob(filepath.Join(dir, "*.deb"))
	if err != nil {
		return nil, err
	}
	if len(debs) == 0 {
		return nil, fmt.Errorf("apt-get downloaded no packages into %s", dir)
	}
	sort.Strings(debs)
	return debs, nil
}

func debNames(debs []string) []string {
	var r []string
	for _, d := range debs {
		n, _, _ := strings.Cut(filepath.Base(d), "_")
		r = append(r, n)
	}
	return r
}

// osRelease returns VERSION_CODENAME from an os-release file.
func osRelease(file string) (string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VERSION_CODENAME="); ok {
			return strings.Trim(v, `"`), nil
		}
	}
	return "", fmt.Errorf("%s has no VERSION_CODENAME", file)
}
