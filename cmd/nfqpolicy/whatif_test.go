package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nfqpolicy/nfqpolicy/internal/testcluster"
)

// flowLine is a flow-log record as the agent writes it (the fields a
// replay reads, plus some it ignores).
func flowLine(ts, node, verdict, src, srcPod, dst, dstPod string, port int) string {
	m := map[string]any{"time": ts, "node": node, "seq": 1, "verdict": verdict, "mode": "enforce", "proto": "tcp", "family": 4,
		"src": src, "src_port": 40000, "dst": dst, "dst_port": port, "reason": "logged", "latency_us": 1.5}
	if srcPod != "" {
		m["src_pod"] = srcPod
	}
	if dstPod != "" {
		m["dst_pod"] = dstPod
	}
	b, _ := json.Marshal(m)
	return string(b) + "\n"
}

func TestCmdWhatif(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	snap := write("cluster.yaml", testcluster.YAML)
	// node-1's log was rotated once; node-2 logged one of the same flows.
	log1 := write("node-1.jsonl",
		flowLine("2026-01-01T10:00:03Z", "node-1", "allow", "10.0.1.3", "y/c", "10.0.1.1", "x/a", 80)+
			"{not json\n"+
			flowLine("2026-01-01T10:00:04Z", "node-1", "allow", "10.0.1.1", "x/a", "10.0.1.2", "x/b", 80))
	write("node-1.jsonl.1",
		flowLine("2026-01-01T10:00:01Z", "node-1", "allow", "10.0.1.3", "y/c", "10.0.1.1", "x/a", 80)+
			flowLine("2026-01-01T10:00:02Z", "node-1", "allow", "10.0.1.9", "x/gone", "10.0.1.1", "x/a", 80))
	log2 := write("node-2.jsonl",
		flowLine("2026-01-01T10:00:05Z", "node-2", "allow", "10.0.1.3", "y/c", "10.0.1.1", "x/a", 80)+
			flowLine("2026-01-01T10:00:06Z", "node-2", "deny", "10.0.1.3", "y/c", "10.0.1.2", "x/b", 80))
	denyA := write("deny-a.yaml", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-a, namespace: x}\nspec: {podSelector: {matchLabels: {app: a}}}\n")
	allowC := write("allow-c.yaml", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-a, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: b}}\n  ingress: [{from: [{namespaceSelector: {}}]}]\n")

	tests := []struct {
		name      string
		args      []string
		code      int
		stdoutHas []string
		stderrHas string
	}{
		{"cut", []string{"--snapshot", snap, "--flows", log1, "--flows", log2, "--apply", denyA}, 1, []string{
			"What-if: 6 flow records, 4 distinct flows, from 3 file(s), nodes node-1, node-2",
			"Period: 2026-01-01T10:00:01Z to 2026-01-01T10:00:06Z",
			"Change: apply NetworkPolicy x/deny-a\n",
			"Replayed 3 flows through the current and the proposed policies: 1 change verdict.",
			"x/deny-a: would cut 1 allowed flow(s), newly allow 0 denied flow(s)",
			"ALLOW -> DENY  y/c (10.0.1.3) -> x/a (10.0.1.1) 80/TCP  (3 records, 2026-01-01T10:00:01Z to 2026-01-01T10:00:05Z, node-1,node-2)",
			"now: deny: egress: y/c not isolated; ingress: default deny by isolation of x/a from x/deny-a",
			"1 recorded flow(s) not replayed: their pods are gone",
			"x/gone (10.0.1.9) -> x/a (10.0.1.1) 80/TCP  (1 record, 2026-01-01T10:00:02Z to 2026-01-01T10:00:02Z, node-1): source pod x/gone no longer exists",
		}, "warning: 1 malformed flow-log lines skipped"},
		{"replace opens", []string{"--snapshot", snap, "--flows", log2, "--apply", allowC}, 1, []string{
			"x/allow-a: would cut 0 allowed flow(s), newly allow 1 denied flow(s)",
			"DENY  -> ALLOW y/c (10.0.1.3) -> x/b (10.0.1.2) 80/TCP",
		}, ""},
		{"delete opens", []string{"--snapshot", snap, "--flows", log2, "--delete", "networkpolicy/x/allow-a"}, 1, []string{
			"Change: delete NetworkPolicy/x/allow-a",
			"x/allow-a: would cut 0 allowed flow(s), newly allow 1 denied flow(s)",
		}, ""},
		{"nothing changes", []string{"--snapshot", snap, "--flows", log2, "--delete", "pod/y/c"}, 0, []string{
			"Replayed 0 flows through the current and the proposed policies: 0 change verdict.",
			"source pod y/c is deleted by the change",
		}, ""},
		{"delete missing", []string{"--snapshot", snap, "--flows", log2, "--delete", "networkpolicy/x/typo"}, 2, nil, "error: delete NetworkPolicy/x/typo: no such object in the cluster"},
		{"bad delete", []string{"--snapshot", snap, "--flows", log2, "--delete", "svc/x/y"}, 2, nil, `unknown kind "svc"`},
		{"no change", []string{"--snapshot", snap, "--flows", log2}, 2, nil, "nothing to compare"},
		{"no flows", []string{"--snapshot", snap, "--apply", denyA}, 2, nil, "--flows is required"},
		{"missing log", []string{"--snapshot", snap, "--flows", filepath.Join(dir, "nope"), "--apply", denyA}, 2, nil, "no such file"},
		{"empty log", []string{"--snapshot", snap, "--flows", write("empty.jsonl", "\n"), "--apply", denyA}, 2, nil, "no flow records in"},
		{"bad apply", []string{"--snapshot", snap, "--flows", log2, "--apply", write("bad.yaml", "kind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {name: b}\nspec: {ingress: [{ports: [{port: 0}]}]}\n")}, 2, nil, "must be between 1 and 65535"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := dispatch(context.Background(), append([]string{"whatif"}, tt.args...), &stdout, &stderr)
			if code != tt.code {
				t.Errorf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tt.code, stdout.String(), stderr.String())
			}
			for _, s := range tt.stdoutHas {
				if !strings.Contains(stdout.String(), s) {
					t.Errorf("stdout lacks %q:\n%s", s, stdout.String())
				}
			}
			if !strings.Contains(stderr.String(), tt.stderrHas) {
				t.Errorf("stderr lacks %q:\n%s", tt.stderrHas, stderr.String())
			}
		})
	}

	t.Run("json", func(t *testing.T) {
		var stdout, stderr bytes.Buffer
		code := dispatch(context.Background(), []string{"whatif", "--snapshot", snap, "--flows", log1, "--flows", log2, "--apply", denyA, "-o", "json"}, &stdout, &stderr)
		if code != 1 {
			t.Fatalf("exit %d: %s", code, stderr.String())
		}
		lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
		if len(lines) != 2 {
			t.Fatalf("%d lines, want 2 (one changed, one gone):\n%s", len(lines), stdout.String())
		}
		var got whatifFlow
		if err := json.Unmarshal([]byte(lines[0]), &got); err != nil {
			t.Fatal(err)
		}
		if got.Status != "changed" || got.Src != "10.0.1.3" || got.Dst != "10.0.1.1" || got.DstPort != 80 || got.Proto != "tcp" ||
			got.Before != "allow" || got.After != "deny" || got.Count != 3 || !strings.Contains(got.Reason, "x/deny-a") || len(got.Policies) != 1 || got.Policies[0] != "x/deny-a" {
			t.Errorf("changed flow %+v", got)
		}
		if err := json.Unmarshal([]byte(lines[1]), &got); err != nil || got.Status != "pod-gone" || !strings.Contains(got.Reason, "x/gone") {
			t.Errorf("gone flow %+v (%v)", got, err)
		}
	})
}
