package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/nfqpolicy/nfqpolicy/cluster"
	"github.com/nfqpolicy/nfqpolicy/internal/apiserver"
	"github.com/nfqpolicy/nfqpolicy/internal/testcluster"
)

func writeKubeconfig(t *testing.T, path, server, caFile, token string) string {
	t.Helper()
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: server, CertificateAuthority: caFile}
	kc.AuthInfos["test"] = &clientcmdapi.AuthInfo{Token: token}
	kc.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "test", Namespace: "x"}
	kc.CurrentContext = "test"
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestLiveTools runs every offline tool with --kubeconfig against a real
// kube-apiserver holding testcluster's objects, including the errors: an
// unknown pod, a ServiceAccount without permission, the server down.
func TestLiveTools(t *testing.T) {
	srv := apiserver.Start(t)
	ctx := context.Background()
	client := srv.Client(t)
	c, err := cluster.Decode("testcluster.yaml", []byte(testcluster.YAML))
	if err != nil {
		t.Fatal(err)
	}
	if err := apiserver.NewLoader(client).Load(ctx, c); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ca := srv.Config.TLSClientConfig.CAFile
	admin := writeKubeconfig(t, filepath.Join(dir, "admin"), srv.URL, ca, srv.Config.BearerToken)

	// A ServiceAccount with no RBAC binding: authenticated, allowed nothing.
	if _, err := client.CoreV1().ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "restricted"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tr, err := client.CoreV1().ServiceAccounts("default").CreateToken(ctx, "restricted", &authv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	restricted := writeKubeconfig(t, filepath.Join(dir, "restricted"), srv.URL, ca, tr.Status.Token)

	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	probes := write("probes.yaml", "name: live\nprobes:\n"+
		"  - {from: x/a, to: x/b, port: 80, expect: allow}\n"+
		"  - {from: y/c, to: x/b, port: 80, expect: deny}\n"+
		"  - {from: y/c, to: x/a, port: 80, expect: allow}\n")
	stagedProbes := write("staged.yaml", "name: staged\nprobes:\n  - {from: y/c, to: x/a, port: 80, expect: deny}\n")
	flows := write("flows.jsonl", flowLine("2026-01-01T10:00:01Z", "node-1", "allow", "10.0.1.3", "y/c", "10.0.1.1", "x/a", 80))
	denyA := write("deny-a.yaml", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-a, namespace: x}\nspec: {podSelector: {matchLabels: {app: a}}}\n")

	tests := []struct {
		name      string
		args      []string
		code      int
		stdoutHas []string
		stderrHas string
	}{
		{"explain", []string{"explain", "--kubeconfig", admin, "--from", "y/c", "--to", "x/b", "--port", "80/TCP"}, 0,
			[]string{"verdict: DENY", "ingress of x/b: default deny by isolation of x/b from x/allow-a"}, ""},
		{"explain namespace", []string{"explain", "--kubeconfig", admin, "-n", "x", "--from", "a", "--to", "b"}, 0,
			[]string{"flow:    x/a (10.0.1.1) -> x/b (10.0.1.2) 80/TCP", "verdict: ALLOW"}, ""},
		{"explain context namespace", []string{"explain", "--kubeconfig", admin, "--from", "a", "--to", "b"}, 0,
			[]string{"verdict: ALLOW"}, ""},
		{"explain unknown pod", []string{"explain", "--kubeconfig", admin, "--from", "x/a", "--to", "x/nope"}, 2, nil,
			`error: --to: endpoint "x/nope": unknown pod x/nope`},
		{"matrix", []string{"matrix", "--kubeconfig", admin, "-n", "x"}, 0,
			[]string{"Reachability matrix 80/TCP IPv4", "-   x/a x/b\nx/a -   .\nx/b .   -\n"}, ""},
		{"lint", []string{"lint", "--kubeconfig", admin}, 0,
			[]string{"no findings (2 policies, 3 pods)"}, ""},
		{"test", []string{"test", "--kubeconfig", admin, probes}, 0, []string{"3 passed, 0 failed"}, ""},
		{"test staged", []string{"test", "--kubeconfig", admin, "--staged", stagedProbes}, 0, []string{"1 passed, 0 failed"}, ""},
		{"test staged off", []string{"test", "--kubeconfig", admin, stagedProbes}, 1, []string{"1 failed"}, ""},
		{"whatif", []string{"whatif", "--kubeconfig", admin, "--flows", flows, "--apply", denyA}, 1,
			[]string{"x/deny-a: would cut 1 allowed flow(s)", "ALLOW -> DENY  y/c (10.0.1.3) -> x/a (10.0.1.1) 80/TCP"}, ""},
		{"forbidden explain", []string{"explain", "--kubeconfig", restricted, "--from", "x/a", "--to", "x/b"}, 2, nil,
			`Error from server (Forbidden): namespaces is forbidden: User "system:serviceaccount:default:restricted" cannot list resource "namespaces" in API group "" at the cluster scope`},
		{"forbidden matrix", []string{"matrix", "--kubeconfig", restricted}, 2, nil, "Error from server (Forbidden)"},
		{"forbidden lint", []string{"lint", "--kubeconfig", restricted}, 2, nil, "Error from server (Forbidden)"},
		{"forbidden test", []string{"test", "--kubeconfig", restricted, probes}, 2, nil, "Error from server (Forbidden)"},
		{"forbidden whatif", []string{"whatif", "--kubeconfig", restricted, "--flows", flows, "--apply", denyA}, 2, nil, "Error from server (Forbidden)"},
		{"bad token", []string{"lint", "--kubeconfig", admin, "--token", "nope"}, 2, nil, "error: You must be logged in to the server (Unauthorized)"},
		{"missing kubeconfig", []string{"lint", "--kubeconfig", filepath.Join(dir, "nope")}, 2, nil, "error: "},
	}
	run := func(t *testing.T, args []string) (int, string, string) {
		var stdout, stderr bytes.Buffer
		code := dispatch(ctx, args, &stdout, &stderr)
		return code, stdout.String(), stderr.String()
	}
	check := func(t *testing.T, args []string, wantCode int, stdoutHas []string, stderrHas string) {
		t.Helper()
		code, stdout, stderr := run(t, args)
		if code != wantCode {
			t.Errorf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, wantCode, stdout, stderr)
		}
		for _, s := range stdoutHas {
			if !strings.Contains(stdout, s) {
				t.Errorf("stdout lacks %q:\n%s", s, stdout)
			}
		}
		if !strings.Contains(stderr, stderrHas) {
			t.Errorf("stderr lacks %q:\n%s", stderrHas, stderr)
		}
		if wantCode == 2 && strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
			t.Errorf("the error is not one line:\n%s", stderr)
		}
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { check(t, tt.args, tt.code, tt.stdoutHas, tt.stderrHas) })
	}

	// The server goes away: every tool says so on one line.
	srv.StopAPIServer()
	host := strings.TrimPrefix(srv.URL, "https://")
	for _, args := range [][]string{
		{"explain", "--kubeconfig", admin, "--from", "x/a", "--to", "x/b"},
		{"matrix", "--kubeconfig", admin},
		{"lint", "--kubeconfig", admin},
		{"test", "--kubeconfig", admin, probes},
		{"whatif", "--kubeconfig", admin, "--flows", flows, "--apply", denyA},
	} {
		t.Run("server down "+args[0], func(t *testing.T) {
			check(t, args, 2, nil, "The connection to the server "+host+" was refused - did you specify the right host or port?")
		})
	}
}
