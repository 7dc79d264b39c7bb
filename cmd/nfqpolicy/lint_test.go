package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const lintNS = `apiVersion: v1
kind: Pod
metadata: {name: web, namespace: app, labels: {app: web}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 80}]}]}
status: {phase: Running, podIP: 10.244.1.10}
`

func lintPolicy(name, spec string) string {
	return "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: " + name + ", namespace: app}\nspec:\n" + spec
}

func TestCmdLint(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	clean := write("clean.yaml", lintNS+lintPolicy("web", "  podSelector: {matchLabels: {app: web}}\n  ingress: [{ports: [{port: http}]}]\n"))
	findings := write("findings.yaml", lintNS+lintPolicy("x", "  podSelector: {}\n  ingress: [{ports: [{port: https}]}]\n")+
		lintPolicy("none", "  podSelector: {matchLabels: {app: nothing}}\n"))
	bad := write("bad.yaml", lintNS+lintPolicy("bad", "  podSelector: {}\n  ingress: [{ports: [{port: 0}]}]\n")+
		lintPolicy("none", "  podSelector: {matchLabels: {app: nothing}}\n"))

	tests := []struct {
		name       string
		args       []string
		code       int
		stdout     string
		stderrHas  string
		jsonChecks int // findings expected in -o json output; -1 when not JSON
	}{
		{"clean", []string{"--snapshot", clean}, 0, "no findings (1 policies, 1 pods)\n", "", -1},
		{"findings", []string{"--snapshot", findings}, 1,
			"warning: NetworkPolicy app/x: spec.ingress[0].ports[0].port: named port \"https\" is declared by no selected pod\n" +
				"warning: NetworkPolicy app/none: spec.podSelector: selects no pod in namespace app: this policy has no effect\n" +
				"2 warnings about 2 objects (2 policies, 1 pods)\n", "", -1},
		{"two snapshots", []string{"--snapshot", clean, "--snapshot", write("more.yaml", lintPolicy("none", "  podSelector: {matchLabels: {app: nothing}}\n"))}, 1,
			"warning: NetworkPolicy app/none: spec.podSelector: selects no pod in namespace app: this policy has no effect\n" +
				"1 warning about 1 object (2 policies, 1 pods)\n", "", -1},
		{"bad input", []string{"--snapshot", bad}, 2,
			"warning: NetworkPolicy app/none: spec.podSelector: selects no pod in namespace app: this policy has no effect\n" +
				"1 warning about 1 object (1 policies, 1 pods)\n",
			"error: " + bad + ":2: spec.ingress[0].ports[0].port: invalid value 0: must be between 1 and 65535, inclusive (NetworkPolicy app/bad)\n", -1},
		{"skipped kinds are noted", []string{"--snapshot", write("svc.yaml", lintNS+"---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: app}\n")}, 0,
			"no findings (0 policies, 1 pods)\n", "note: " + filepath.Join(dir, "svc.yaml") + ":2: kind Service (v1) is not read by nfqpolicy", -1},
		{"cluster policy findings", []string{"--snapshot", write("cnp.yaml", lintNS+"---\napiVersion: policy.networking.k8s.io/v1beta1\nkind: ClusterNetworkPolicy\nmetadata: {name: fqdn}\nspec: {tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Accept, to: [{domainNames: [example.com]}]}]}\n")}, 1,
			"warning: ClusterNetworkPolicy fqdn: spec.egress[0]: domainNames peers (example.com) are not enforced by nfqpolicy: they match no traffic, so this Accept rule lets nothing through by name and those flows fall to the rules and tiers after it (typically a Deny); use networks peers with the addresses instead\n" +
				"1 warning about 1 object (0 policies, 1 pods)\n", "", -1},
		{"json", []string{"--snapshot", findings, "-o", "json"}, 1, "", "", 2},
		{"json clean", []string{"--snapshot", clean, "-o", "json"}, 0, "", "", 0},
		{"missing file", []string{"--snapshot", filepath.Join(dir, "nope.yaml")}, 2, "", "no such file or directory", -1},
		{"no snapshot, no kubeconfig", nil, 2, "", "error: no kubeconfig: pass --kubeconfig, set $KUBECONFIG, or give --snapshot FILE", -1},
		{"bad format", []string{"--snapshot", clean, "-o", "xml"}, 2, "", `-o "xml": want text or json`, -1},
	}
	// Without --snapshot, lint reads the cluster of the kubeconfig: there
	// must be none here.
	t.Setenv("KUBECONFIG", filepath.Join(dir, "no-kubeconfig"))
	t.Setenv("HOME", dir)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := dispatch(context.Background(), append([]string{"lint"}, tt.args...), &stdout, &stderr)
			if code != tt.code {
				t.Errorf("exit %d, want %d; stderr:\n%s", code, tt.code, stderr.String())
			}
			if tt.jsonChecks >= 0 {
				var rep struct {
					Findings []struct{ Check, Object, Field, Message string }
				}
				if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
					t.Fatalf("output is not JSON: %v\n%s", err, stdout.String())
				}
				if len(rep.Findings) != tt.jsonChecks {
					t.Errorf("%d findings in JSON, want %d:\n%s", len(rep.Findings), tt.jsonChecks, stdout.String())
				}
				if tt.jsonChecks > 0 && (rep.Findings[0].Check != "named-port-undeclared" || rep.Findings[0].Field != "spec.ingress[0].ports[0].port" || rep.Findings[0].Object != "NetworkPolicy app/x") {
					t.Errorf("first finding %+v", rep.Findings[0])
				}
				return
			}
			if stdout.String() != tt.stdout {
				t.Errorf("stdout:\n%s\nwant:\n%s", stdout.String(), tt.stdout)
			}
			if !strings.Contains(stderr.String(), tt.stderrHas) {
				t.Errorf("stderr %q does not contain %q", stderr.String(), tt.stderrHas)
			}
		})
	}
}
