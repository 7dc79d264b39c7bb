package netpolsuite

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// testdata/report.json is a real report of e2e-netpol.test (a dry run) with
// one spec turned into a failure: a suite node, a pass, a failure, a
// skipped SCTP spec and a spec left out by a focus.
func TestParse(t *testing.T) {
	b, err := os.ReadFile("testdata/report.json")
	if err != nil {
		t.Fatal(err)
	}
	specs, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	want := []Spec{
		{Name: "[sig-network] Netpol NetworkPolicy between server and client should allow egress access on one named port [Feature:NetworkPolicy]",
			State: "passed", Duration: 8123 * time.Millisecond},
		{Name: "[sig-network] Netpol [LinuxOnly] NetworkPolicy between server and client using UDP should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector [Feature:NetworkPolicy]",
			State: "failed", Duration: 61 * time.Second, Message: "Had 2 wrong results in reachability matrix\nexpected: ..."},
		{Name: "[sig-network] Netpol [Feature:SCTPConnectivity] [LinuxOnly] NetworkPolicy between server and client using SCTP should enforce policy based on Ports [Feature:NetworkPolicy]",
			State: "skipped", Message: SCTPReason},
		{Name: "[sig-network] Netpol NetworkPolicy between server and client should support a 'default-deny-all' policy [Feature:NetworkPolicy]",
			State: "skipped"},
	}
	if !slices.Equal(specs, want) {
		t.Fatalf("Parse =\n%+v\nwant\n%+v", specs, want)
	}

	r := Result{Specs: specs}
	var out strings.Builder
	r.Print(&out)
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	wantLines := []string{
		"PASS [sig-network] Netpol NetworkPolicy between server and client should allow egress access on one named port [Feature:NetworkPolicy] (8.1s)",
		"FAIL [sig-network] Netpol [LinuxOnly] NetworkPolicy between server and client using UDP should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector [Feature:NetworkPolicy] (61.0s): Had 2 wrong results in reachability matrix",
		"SKIP [sig-network] Netpol [Feature:SCTPConnectivity] [LinuxOnly] NetworkPolicy between server and client using SCTP should enforce policy based on Ports [Feature:NetworkPolicy] (0.0s): " + SCTPReason,
		"SKIP [sig-network] Netpol NetworkPolicy between server and client should support a 'default-deny-all' policy [Feature:NetworkPolicy] (0.0s)",
		"1 passed, 1 failed, 2 skipped",
	}
	if !slices.Equal(lines, wantLines) {
		t.Errorf("Print:\n%s\nwant\n%s", strings.Join(lines, "\n"), strings.Join(wantLines, "\n"))
	}
}

func TestParseSuiteFailureAndBadInput(t *testing.T) {
	// A failed suite setup is reported (no spec ran after it); a passed one is not.
	const rep = `[{"SpecReports":[
		{"LeafNodeType":"SynchronizedBeforeSuite","State":"passed"},
		{"LeafNodeType":"SynchronizedBeforeSuite","State":"failed","Failure":{"Message":"reading the kubernetes Service: connection refused"}},
		{"LeafNodeType":"It","ContainerHierarchyTexts":["[sig-network] Netpol"],"LeafNodeText":"x","State":"interrupted"},
		{"LeafNodeType":"It","ContainerHierarchyTexts":["[sig-network] Netpol"],"LeafNodeText":"y","State":"pending"}]}]`
	specs, err := Parse([]byte(rep))
	if err != nil {
		t.Fatal(err)
	}
	p, f, s := Result{Specs: specs}.Counts()
	if len(specs) != 3 || specs[0].Name != "SynchronizedBeforeSuite" || p != 0 || f != 2 || s != 1 {
		t.Errorf("specs %+v: %d passed %d failed %d skipped, want the failed setup and x failed, y skipped", specs, p, f, s)
	}
	for _, bad := range []string{"", "{", `{"SpecReports":[]}`, `[{"SpecReports":[{"LeafNodeType":"It"}]}]`} {
		if _, err := Parse([]byte(bad)); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}

func TestArgs(t *testing.T) {
	o := Options{Binary: "/c/e2e-netpol.test", Kubeconfig: "/k", Dir: "/d", Timeout: time.Hour}
	sctp := []string{}
	if !SCTPAvailable() {
		sctp = []string{`--ginkgo.skip=\[Feature:SCTPConnectivity\]`}
	}
	want := append(append([]string{"/c/e2e-netpol.test", "--ginkgo.timeout=1h0m0s", "--ginkgo.json-report=/d/r.json", "--ginkgo.v",
		"--ginkgo.no-color", `--ginkgo.focus=\[sig-network\] Netpol`}, sctp...),
		"--kubeconfig=/k", "--provider=local", "--report-dir=/d")
	if got := o.Args("/d/r.json"); !slices.Equal(got, want) {
		t.Errorf("serial Args =\n%q\nwant\n%q", got, want)
	}

	o.Ginkgo, o.Procs, o.Focus, o.Skip = "/c/ginkgo", 3, "default-deny", []string{"UDP"}
	got := strings.Join(o.Args("/d/r.json"), " ")
	for _, part := range []string{
		"/c/ginkgo --procs=3 --timeout=1h0m0s --json-report=/d/r.json",
		`--focus=\[sig-network\] Netpol.*default-deny`,
		"--skip=UDP /c/e2e-netpol.test -- --kubeconfig=/k --provider=local",
	} {
		if !strings.Contains(got, part) {
			t.Errorf("parallel Args %q lacks %q", got, part)
		}
	}
}

// TestRun runs a stand-in for the test binary that writes the fixture
// report where it is told to, and exits 1 as ginkgo does on a failure.
func TestRun(t *testing.T) {
	dir := t.TempDir()
	fixture, err := filepath.Abs("testdata/report.json")
	if err != nil {
		t.Fatal(err)
	}
	fake := filepath.Join(dir, "e2e-netpol.test")
	script := "#!/bin/sh\nfor a in \"$@\"; do case $a in --ginkgo.json-report=*) cp " + fixture + " \"${a#*=}\";; esac; done\necho suite output\nexit 1\n"
	if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	res, err := Run(context.Background(), Options{Binary: fake, Kubeconfig: "/k", Dir: filepath.Join(dir, "out"), Out: &out})
	if err != nil {
		t.Fatal(err)
	}
	if got := res.Summary(); got != "1 passed, 1 failed, 2 skipped" {
		t.Errorf("Summary = %q", got)
	}
	if !strings.HasSuffix(out.String(), "1 passed, 1 failed, 2 skipped\n") {
		t.Errorf("output does not end with the summary:\n%s", out.String())
	}
	// A narrower focus: specs it did not select are left out, not counted
	// as skipped; the SCTP skip (it has a reason) stays.
	res, err = Run(context.Background(), Options{Binary: fake, Kubeconfig: "/k", Dir: filepath.Join(dir, "out"), Focus: "named port|UDP"})
	if err != nil {
		t.Fatal(err)
	}
	if got := res.Summary(); got != "1 passed, 1 failed, 1 skipped" {
		t.Errorf("with a focus, Summary = %q, want the default-deny-all spec left out", got)
	}
	if _, err := Run(context.Background(), Options{Binary: fake, Kubeconfig: "/k", Dir: dir, Focus: "("}); err == nil {
		t.Error("a bad focus regexp was accepted")
	}
	if log, _ := os.ReadFile(res.Log); !strings.Contains(string(log), "suite output") {
		t.Errorf("log %s lacks the suite's output: %q", res.Log, log)
	}

	// A binary that leaves no report is an error naming the log.
	if err := os.WriteFile(fake, []byte("#!/bin/sh\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := Run(context.Background(), Options{Binary: fake, Kubeconfig: "/k", Dir: filepath.Join(dir, "out")}); err == nil || !strings.Contains(err.Error(), "e2e.log") {
		t.Errorf("Run without a report: %v", err)
	}
	if _, err := Run(context.Background(), Options{Binary: fake}); err == nil {
		t.Error("Run without Kubeconfig and Dir accepted")
	}
}

// testdata/specs.txt lists the 51 specs of e2e-netpol.test (a dry run).
func TestRepresentative(t *testing.T) {
	b, err := os.ReadFile("testdata/specs.txt")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(Representative)
	var run, all int
	for name := range strings.Lines(string(b)) {
		if strings.Contains(name, "[Feature:SCTPConnectivity]") {
			continue // skipped anyway
		}
		all++
		if re.MatchString(name) {
			run++
			t.Logf("runs: %s", strings.TrimSpace(name))
		}
	}
	// A third of the 48 that run, each pattern matching at least one spec.
	if all != 48 || run < 16 || run > 18 {
		t.Errorf("Representative selects %d of %d specs, want about a third of 48", run, all)
	}
	for _, alt := range strings.Split(Representative, "|") {
		if !strings.Contains(string(b), alt) {
			t.Errorf("pattern %q matches no spec", alt)
		}
	}
}

// TestBinaries runs a stand-in build.sh in a fake repository root.
func TestBinaries(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "tools", "kubernetes"), 0o755); err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(root, "tools", "kubernetes", "build.sh")
	write := func(body string) {
		if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write("echo building >&2\n[ \"$1 $2\" = 'e2e-netpol ginkgo' ] || exit 2\necho e2e-netpol=/c/e2e-netpol.test\necho ginkgo=/c/ginkgo\n")
	bin, gk, err := Binaries(context.Background(), root, nil)
	if err != nil || bin != "/c/e2e-netpol.test" || gk != "/c/ginkgo" {
		t.Errorf("Binaries = %q, %q, %v", bin, gk, err)
	}
	write("echo e2e-netpol=/c/e2e-netpol.test\n")
	if _, _, err := Binaries(context.Background(), root, nil); err == nil {
		t.Error("a build without the ginkgo line was accepted")
	}
	write("exit 1\n")
	if _, _, err := Binaries(context.Background(), root, nil); err == nil {
		t.Error("a failed build was accepted")
	}
}
