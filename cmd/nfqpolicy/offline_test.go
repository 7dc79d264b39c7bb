package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
)

const seed = "../../testdata/conformance/public/seed-1-docs-test-network-policy.yaml"

func TestOfflineCommands(t *testing.T) {
	for _, tc := range []struct {
		name      string
		args      []string
		code      int
		stdout    []string // substrings
		stderr    []string
		notStdout string
	}{
		{"test passes", []string{"test", seed}, 0, []string{"19 passed, 0 failed"}, nil, "MISMATCH"},
		{"test broken yaml", []string{"test", "testdata/broken.yaml"}, 2, nil, []string{"broken.yaml:1: invalid YAML"}, ""},
		{"test bad objects and unknown pod, all reported", []string{"test", "testdata/unknown.yaml"}, 2, nil,
			[]string{"endPort", `unsupported value "ICMP"`, `"10.0.0/8" is not a valid CIDR`, "unknown pod x/nope"}, ""},
		{"test missing path", []string{"test", "testdata/none.yaml"}, 2, nil, []string{"no such file"}, ""},
		{"test no args", []string{"test"}, 2, nil, []string{"Usage:"}, ""},
		{"explain allow", []string{"explain", "--snapshot", seed, "--from", "default/frontend", "--to", "default/db", "--port", "6379/TCP"}, 0,
			[]string{"verdict: ALLOW", "allowed by default/test-network-policy ingress[0] from[2]"}, nil, ""},
		{"explain deny by except", []string{"explain", "--snapshot", seed, "--from", "172.17.1.5", "--to", "default/db", "--port", "6379"}, 0,
			[]string{"verdict: DENY", "default deny by isolation of default/db from default/test-network-policy", "ipBlock 172.17.0.0/16 except 172.17.1.0/24"}, nil, ""},
		{"explain unknown pod", []string{"explain", "--snapshot", seed, "--from", "default/nope", "--to", "default/db"}, 2, nil, []string{"--from", "nope"}, ""},
		{"explain bad port", []string{"explain", "--snapshot", seed, "--from", "default/db", "--to", "default/db", "--port", "80/ICMP"}, 2, nil, []string{"ICMP"}, ""},
		{"matrix", []string{"matrix", "--snapshot", seed, "--port", "6379/TCP"}, 0,
			[]string{"Reachability matrix 6379/TCP IPv4", "default/db       X               -          X                X                X"}, nil, ""},
		{"matrix ipv6", []string{"matrix", "--snapshot", seed, "--port", "6379", "--family", "6"}, 0, []string{"IPv6"}, nil, ""},
		// A staged ClusterNetworkPolicy is not enforced by test, and is by
		// test --staged.
		{"test staged CNP not enforced", []string{"test", "testdata/staged-cnp.yaml"}, 1, []string{"1 passed, 1 failed"}, nil, ""},
		{"test --staged enforces the staged CNP", []string{"test", "--staged", "testdata/staged-cnp.yaml"}, 0, []string{"2 passed, 0 failed"}, nil, ""},
		{"explain names the staged CNP", []string{"explain", "--snapshot", "testdata/staged-cnp.yaml", "--from", "y/b", "--to", "x/a", "--port", "80"}, 0,
			[]string{"verdict: ALLOW", "Admin policy ClusterNetworkPolicy/guard priority 10 (staged: audit mode, not enforced)", `ingress[0] "no-y" Deny MATCH`}, nil, ""},
		{"unknown command", []string{"frobnicate"}, 2, nil, []string{`unknown command "frobnicate"`}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := dispatch(context.Background(), tc.args, &out, &errb)
			if code != tc.code {
				t.Errorf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tc.code, out.String(), errb.String())
			}
			for _, s := range tc.stdout {
				if !strings.Contains(out.String(), s) {
					t.Errorf("stdout lacks %q:\n%s", s, out.String())
				}
			}
			for _, s := range tc.stderr {
				if !strings.Contains(errb.String(), s) {
					t.Errorf("stderr lacks %q:\n%s", s, errb.String())
				}
			}
			if tc.notStdout != "" && strings.Contains(out.String(), tc.notStdout) {
				t.Errorf("stdout has %q:\n%s", tc.notStdout, out.String())
			}
		})
	}
}

func TestTestJSON(t *testing.T) {
	var out, errb bytes.Buffer
	if code := dispatch(context.Background(), []string{"test", "--json", seed}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 19 {
		t.Fatalf("%d JSON lines, want one per probe (19)", len(lines))
	}
	var r map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &r); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"scenario", "from", "to", "port", "protocol", "family", "expect", "got", "reason"} {
		if _, ok := r[k]; !ok {
			t.Errorf("JSON probe lacks %q: %s", k, lines[0])
		}
	}
	if !strings.Contains(errb.String(), "19 passed, 0 failed") {
		t.Errorf("summary missing from stderr: %q", errb.String())
	}
}

// A scenario whose expectation is wrong must fail with the reason.
func TestTestMismatch(t *testing.T) {
	var out, errb bytes.Buffer
	code := dispatch(context.Background(), []string{"test", "testdata/mismatch.yaml"}, &out, &errb)
	if code != 1 {
		t.Fatalf("exit %d, want 1: %s %s", code, out.String(), errb.String())
	}
	if !strings.Contains(out.String(), "MISMATCH mismatch.yaml:") || !strings.Contains(out.String(), "expected allow, got deny: deny: egress: x/a not isolated; ingress: default deny by isolation of x/b from x/deny") {
		t.Errorf("mismatch line: %s", out.String())
	}
	if !strings.Contains(out.String(), "1 passed, 1 failed") {
		t.Errorf("summary: %s", out.String())
	}
}
