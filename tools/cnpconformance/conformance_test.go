package cnpconformance

import (
	"flag"
	"os"
	"strings"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/config"
	"sigs.k8s.io/yaml"

	api "sigs.k8s.io/network-policy-api/apis/v1beta1"
	"sigs.k8s.io/network-policy-api/conformance/tests"
	"sigs.k8s.io/network-policy-api/conformance/utils/flags"
	"sigs.k8s.io/network-policy-api/conformance/utils/suite"
)

// skipTests names upstream tests (ShortName, comma-separated) not to run;
// the report lists them as skipped.
var skipTests = flag.String("skip-tests", "", "comma-separated ShortNames of conformance tests to skip")

// TestConformance is upstream's TestConformanceProfiles with the
// ClusterNetworkPolicy profile always selected (so a report is always
// produced) and our patched base manifests (see patch.sh).
func TestConformance(t *testing.T) {
	cfg, err := config.GetConfig()
	if err != nil {
		t.Fatalf("loading Kubernetes config: %v", err)
	}
	c, err := client.New(cfg, client.Options{})
	if err != nil {
		t.Fatalf("initializing Kubernetes client: %v", err)
	}
	clientSet, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("creating Kubernetes ClientSet: %v", err)
	}
	if err := api.Install(c.Scheme()); err != nil {
		t.Fatalf("installing api scheme: %v", err)
	}
	if err := apiextensionsv1.AddToScheme(c.Scheme()); err != nil {
		t.Fatalf("installing apiextensions scheme: %v", err)
	}
	profiles := suite.ParseConformanceProfiles(*flags.ConformanceProfiles)
	if profiles.Len() == 0 {
		profiles = sets.New(suite.CNPConformanceProfileName)
	}
	info := "go test -run TestRealClusterCNPConformance ./realcluster/ (two-node test cluster, nfqpolicy DaemonSet)"
	if why := os.Getenv("NFQPOLICY_CNP_SKIP_SCTP_PROBES"); why != "" {
		// sctpprobes.sh: a test reported passed here passed its TCP and
		// UDP probes only; docs/conformance-cnp.md lists the SCTP ones.
		info += "; SCTP probes not run (" + why + "): tests mixing protocols passed on their TCP and UDP probes only"
	}
	impl, err := suite.ParseImplementation(
		orDefault(*flags.ImplementationOrganization, "nfqpolicy"),
		orDefault(*flags.ImplementationProject, "nfqpolicy"),
		orDefault(*flags.ImplementationURL, "https://github.com/nfqpolicy/nfqpolicy"),
		orDefault(*flags.ImplementationVersion, "dev"),
		orDefault(*flags.ImplementationContact, "nfqpolicy maintainers"),
		orDefault(*flags.ImplementationAdditionalInformation, info),
	)
	if err != nil {
		t.Fatalf("parsing implementation: %v", err)
	}
	var skip []string
	if *skipTests != "" {
		skip = strings.Split(*skipTests, ",")
	}
	cs, err := suite.NewConformanceProfileTestSuite(suite.ConformanceProfileOptions{
		Options: suite.Options{
			Client:                     c,
			ClientSet:                  clientSet,
			KubeConfig:                 *cfg,
			Debug:                      *flags.ShowDebug,
			CleanupBaseResources:       *flags.CleanupBaseResources,
			SupportedFeatures:          suite.ParseSupportedFeatures(*flags.SupportedFeatures),
			ExemptFeatures:             suite.ParseSupportedFeatures(*flags.ExemptFeatures),
			EnableAllSupportedFeatures: *flags.EnableAllSupportedFeatures,
			SkipTests:                  skip,
			FS:                         &Manifests,
		},
		Implementation:      *impl,
		ConformanceProfiles: profiles,
	})
	if err != nil {
		t.Fatalf("creating conformance profile suite: %v", err)
	}
	cs.Setup(t)
	if err := cs.Run(t, tests.ConformanceTests); err != nil {
		t.Fatalf("running: %v", err)
	}
	report, err := cs.Report()
	if err != nil {
		t.Fatalf("generating report: %v", err)
	}
	raw, err := yaml.Marshal(report)
	if err != nil {
		t.Fatalf("marshalling report: %v", err)
	}
	if *flags.ReportOutput != "" {
		if err := os.WriteFile(*flags.ReportOutput, raw, 0o644); err != nil {
			t.Fatalf("writing report: %v", err)
		}
	}
	t.Logf("Conformance report:\n%s", raw)
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}
