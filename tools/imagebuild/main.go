// Command imagebuild writes the container images of the real-cluster tests
// as tarballs (`ctr -n k8s.io images import`, `docker load`, `podman load`),
// without a container engine.
//
//	imagebuild pause     -o FILE -tag TAG                  our static pause at /pause
//	imagebuild agnhost   -o FILE -tag TAG -binary AGNHOST  upstream's agnhost at /agnhost
//	imagebuild nfqpolicy -o FILE [-tag TAG] -binary NFQPOLICY [-work DIR]
//
// pause builds tools/pause itself (static, with the go command on PATH).
// nfqpolicy follows internal/nfqimage's recipe (Debian packages unpacked).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/nfqpolicy/nfqpolicy/internal/nfqimage"
	"github.com/nfqpolicy/nfqpolicy/internal/ociimage"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "imagebuild:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 {
		return errors.New("usage: imagebuild pause|agnhost|nfqpolicy -o FILE -tag TAG [-binary FILE]")
	}
	fs := flag.NewFlagSet("imagebuild "+args[0], flag.ContinueOnError)
	out := fs.String("o", "", "tarball to write")
	tag := fs.String("tag", "", "image tag, e.g. registry.k8s.io/pause:3.10.2")
	binary := fs.String("binary", "", "the static binary to package (agnhost, nfqpolicy)")
	work := fs.String("work", "", "nfqpolicy: folder for downloaded packages and the rootfs (default: a temporary one)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *out == "" {
		return errors.New("-o is required")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch args[0] {
	case "pause":
		return pause(ctx, *out, *tag)
	case "agnhost":
		return agnhost(*out, *tag, *binary)
	case "nfqpolicy":
		return nfqpolicy(ctx, *out, *tag, *binary, *work)
	}
	return fmt.Errorf("unknown image %q (want pause, agnhost or nfqpolicy)", args[0])
}

func pause(ctx context.Context, out, tag string) error {
	if tag == "" {
		return errors.New("-tag is required")
	}
	dir, err := os.MkdirTemp("", "imagebuild-pause-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "pause")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, "./tools/pause")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building tools/pause (run from the repository root): %w: %s", err, b)
	}
	l := ociimage.NewLayer()
	if err := l.AddFile(bin, "/pause", 0o755); err != nil {
		return err
	}
	img, err := ociimage.Image(l, ociimage.Config{Entrypoint: []string{"/pause"}})
	if err != nil {
		return err
	}
	return ociimage.WriteTarball(out, tag, img)
}

// agnhost lays the binary out as upstream's image does (Dockerfile in
// test/images/agnhost), minus the alpine userland the netpol tests do not
// use: /agnhost, the /agnhost-2 link, /uploads, entrypoint /agnhost, command
// pause.
func agnhost(out, tag, binary string) error {
	if tag == "" || binary == "" {
		return errors.New("-tag and -binary are required")
	}
	l := ociimage.NewLayer()
	if err := l.AddFile(binary, "/agnhost", 0o755); err != nil {
		return err
	}
	if err := l.AddSymlink("agnhost", "/agnhost-2"); err != nil {
		return err
	}
	for _, d := range []string{"/uploads", "/tmp"} {
		if err := l.AddDir(d, 0o777); err != nil {
			return err
		}
	}
	img, err := ociimage.Image(l, ociimage.Config{Entrypoint: []string{"/agnhost"}, Cmd: []string{"pause"}})
	if err != nil {
		return err
	}
	return ociimage.WriteTarball(out, tag, img)
}

func nfqpolicy(ctx context.Context, out, tag, binary, work string) error {
	if binary == "" {
		return errors.New("-binary is required")
	}
	if work == "" {
		dir, err := os.MkdirTemp("", "imagebuild-nfqpolicy-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		work = dir
	}
	return nfqimage.Build(ctx, nfqimage.Options{
		Binary: binary, Out: out, Tag: tag, WorkDir: work,
		Log: func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) },
	})
}
