package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
)

func TestExitCodes(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		root     bool // needs root (builds namespaces)
		code     int
		contains string // in stdout+stderr
	}{
		{"no paths", nil, false, 2, "usage"},
		{"missing file", []string{"testdata/nope.yaml"}, false, 2, "no such file"},
		{"unknown endpoint", []string{"testdata/badprobe.yaml"}, false, 2, "nobody"},
		{"address collision", []string{"--no-agent", "testdata/collide.yaml"}, true, 2, "belongs to both"},
		{"mismatch", []string{"--no-agent", "--quiet", "testdata/tiny.yaml"}, true, 1,
			"FAIL tiny: probes[1] x/b -> x/a 53/UDP IPv6: expect deny, got allow (echoed)\n1 passed, 1 failed, 1 skipped"},
		{"skip reason", []string{"--no-agent", "--quiet", "testdata/tiny.yaml"}, true, 1,
			"SKIP tiny: probes[2] x/a -> 127.1.2.3 443/TCP IPv4: 127.1.2.3: a loopback address never leaves"},
		{"agent that dies", []string{"--quiet", "--agent", "/bin/false", "testdata/tiny.yaml"}, true, 2,
			"0 passed, 0 failed before the run stopped"},
		{"json", []string{"--no-agent", "--quiet", "--json", "testdata/tiny.yaml"}, true, 1, `"skipped": 1`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.root && os.Geteuid() != 0 {
				t.Skip("SKIP KERNEL TEST: needs root to create network namespaces")
			}
			var out, errOut bytes.Buffer
			code := run(context.Background(), tc.args, &out, &errOut)
			all := out.String() + errOut.String()
			if code != tc.code {
				t.Errorf("exit %d, want %d; output:\n%s", code, tc.code, all)
			}
			if !strings.Contains(all, tc.contains) {
				t.Errorf("output lacks %q:\n%s", tc.contains, all)
			}
		})
	}
}
