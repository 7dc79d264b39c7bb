// Package e2enetpol compiles upstream's NetworkPolicy e2e tests
// (k8s.io/kubernetes/test/e2e/network/netpol) into a test binary of their
// own, without the rest of test/e2e: the full suite links every SIG's tests
// and the cloud providers, which costs several times the CPU to build.
//
// Build: go test -c -vet=off -o e2e-netpol.test ./e2enetpol
// (tools/kubernetes/build.sh does it). The binary takes upstream's e2e flags
// (--kubeconfig, --provider, --ginkgo.focus, --ginkgo.junit-report, ...).
//
// The suite wiring mirrors test/e2e/e2e_test.go and test/e2e/e2e.go, minus
// what only other tests need (cloud providers, conformance listing, metrics
// gathering after the suite).
package e2enetpol

import (
	"context"
	"flag"
	"fmt"
	"os"
	"testing"

	"github.com/onsi/ginkgo/v2"
	"github.com/onsi/gomega"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilnet "k8s.io/utils/net"

	"k8s.io/component-base/logs"
	"k8s.io/component-base/version"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/test/e2e/framework"
	"k8s.io/kubernetes/test/e2e/framework/config"

	// Logging flags on the command line, as test/e2e has them.
	_ "k8s.io/component-base/logs/testinit"
	// Defines and freezes the feature constants the tests label with.
	_ "k8s.io/kubernetes/test/e2e/feature"
	// Reconfigures the framework the way test/e2e does.
	_ "k8s.io/kubernetes/test/e2e/framework/debug/init"
	_ "k8s.io/kubernetes/test/e2e/framework/node/init"
	_ "k8s.io/kubernetes/test/utils/ktesting/format"

	// The tests.
	_ "k8s.io/kubernetes/test/e2e/network/netpol"
)

func TestMain(m *testing.M) {
	versionFlag := flag.CommandLine.Bool("version", false, "Displays version information.")
	config.CopyFlags(config.Flags, flag.CommandLine)
	framework.RegisterCommonFlags(flag.CommandLine)
	framework.RegisterClusterFlags(flag.CommandLine)
	flag.Parse()
	if *versionFlag {
		fmt.Printf("%s\n", version.Get())
		os.Exit(0)
	}
	if flag.CommandLine.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "unknown additional command line arguments: %s\n", flag.CommandLine.Args())
		os.Exit(1)
	}
	framework.AfterReadingAllFlags(&framework.TestContext)
	os.Exit(m.Run())
}

func TestE2E(t *testing.T) {
	// As in test/e2e: InitLogs turns contextual logging off; the suite wants
	// it on.
	logs.InitLogs()
	defer logs.FlushLogs()
	klog.EnableContextualLogging(true)
	gomega.RegisterFailHandler(framework.Fail)
	suiteConfig, reporterConfig := framework.CreateGinkgoConfig()
	ginkgo.RunSpecs(t, "Kubernetes e2e suite (Netpol)", suiteConfig, reporterConfig)
}

// The per-node setup test/e2e does that the netpol tests depend on: the
// cluster's IP family, read from the kubernetes Service.
var _ = ginkgo.SynchronizedBeforeSuite(func(ctx context.Context) []byte {
	return nil
}, func(ctx context.Context, _ []byte) {
	c, err := framework.LoadClientset()
	framework.ExpectNoError(err, "loading the client")
	svc, err := c.CoreV1().Services(metav1.NamespaceDefault).Get(ctx, "kubernetes", metav1.GetOptions{})
	framework.ExpectNoError(err, "reading the kubernetes Service")
	framework.TestContext.IPFamily = "ipv4"
	if utilnet.IsIPv6String(svc.Spec.ClusterIP) {
		framework.TestContext.IPFamily = "ipv6"
	}
	framework.Logf("Cluster IP family: %s", framework.TestContext.IPFamily)
})
