package apiserver

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestStartIntegration: the server answers as a system:masters user over
// verified TLS, stores objects, and survives a restart with its data.
func TestStartIntegration(t *testing.T) {
	if testing.Short() {
		t.Skip("starts kube-apiserver")
	}
	s := Start(t)
	ctx := context.Background()
	client := s.Client(t)
	if s.Config.Insecure || s.Config.TLSClientConfig.CAFile == "" {
		t.Fatal("the harness should verify the server's certificate")
	}
	who, err := client.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	groups := who.Status.UserInfo.Groups
	if who.Status.UserInfo.Username != "admin" || !slices.Contains(groups, "system:masters") {
		t.Fatalf("authenticated as %q %v, want admin in system:masters", who.Status.UserInfo.Username, groups)
	}
	v, err := client.Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("server %s (git %s)", v.GitVersion, v.GitCommit)

	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kept"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	s.RestartAPIServer(t)
	if _, err := client.CoreV1().Namespaces().Get(ctx, "kept", metav1.GetOptions{}); err != nil {
		t.Fatalf("after restart: %v", err)
	}
	if _, err := os.Stat(filepath.Join(s.Dir, "kube-apiserver.log")); err != nil {
		t.Fatal(err)
	}
}

func TestBinariesMissing(t *testing.T) {
	t.Setenv("NFQPOLICY_KUBE_APISERVER", filepath.Join(t.TempDir(), "nope"))
	if _, _, err := Binaries(); err == nil {
		t.Fatal("a missing kube-apiserver was accepted")
	}
}
