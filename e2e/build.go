package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// BuildAgent compiles ./cmd/nfqpolicy of the module that holds dir (or the
// working directory when dir is empty) into outDir and returns the binary's
// path.
func BuildAgent(ctx context.Context, dir, outDir string) (string, error) {
	cmd := exec.CommandContext(ctx, "go", "env", "GOMOD")
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("find the module: go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("find the module: %q is not inside a Go module", dir)
	}
	bin := filepath.Join(outDir, "nfqpolicy")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/nfqpolicy")
	build.Dir = filepath.Dir(gomod)
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/nfqpolicy: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return bin, nil
}
