// Package netpolsuite runs upstream's NetworkPolicy e2e tests (the
// sig-network "Netpol" specs of k8s.io/kubernetes v1.37.2,
// test/e2e/network/netpol) against a cluster and reports every spec by
// name.
//
// The tests come as one ginkgo test binary, e2e-netpol.test, built by
// tools/kubernetes/build.sh (target e2e-netpol), optionally run in parallel
// through the ginkgo CLI of the same build (target ginkgo). The specs probe
// by exec'ing `/agnhost connect` in pods, so the cluster needs the
// registry.k8s.io/e2e-test-images/agnhost:2.66.1 image present on every node
// (the tests pull it IfNotPresent) and a working exec path, but no DNS.
package netpolsuite

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Focus selects upstream's NetworkPolicy specs ("[sig-network] Netpol ...",
// including "Netpol API").
const Focus = `\[sig-network\] Netpol`

// SCTPSkip is the skip pattern for the specs that need SCTP sockets, and
// SCTPReason says why they are skipped. The two SCTP-policy specs that
// probe over TCP ("... even if the plugin doesn't support SCTP") still run:
// failing them would be a security hole.
const (
	SCTPSkip   = `\[Feature:SCTPConnectivity\]`
	SCTPReason = "needs SCTP sockets, which this kernel lacks (socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP) fails)"
)

// Representative narrows the suite (Options.Focus) to a third of it for
// runs that must be short (make test): default deny (ingress, all; TCP and
// UDP), pod, namespace and combined selectors, numbered and named ports in
// both directions, ipBlock with except, egress deny, a policy update and
// deletion, SCTP-not-TCP, and the API spec.
var Representative = strings.Join([]string{
	`should support a 'default-deny-ingress' policy`,
	`should support a 'default-deny-all' policy`,
	`should enforce policy to allow traffic from pods within server namespace based on PodSelector`,
	`should enforce policy to allow ingress traffic from pods in all namespaces`,
	`should enforce policy based on PodSelector and NamespaceSelector`,
	`should enforce policy based on PodSelector or NamespaceSelector`,
	`NetworkPolicy between server and client should enforce policy based on Ports`,
	`should allow ingress access on one named port`,
	`should allow egress access on one named port`,
	`should enforce except clause while egress access to server in CIDR block`,
	`should deny egress from pods based on PodSelector`,
	`should enforce updated policy`,
	`should stop enforcing policies after they are deleted`,
	`should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP'`,
	`should support creating NetworkPolicy API operations`,
}, "|")

// Binaries builds (or finds in the cache) the test binary and the ginkgo
// CLI with tools/kubernetes/build.sh under repoRoot and returns their paths.
// The first build takes minutes (tools/kubernetes/README.md).
func Binaries(ctx context.Context, repoRoot string, stderr io.Writer) (binary, ginkgo string, err error) {
	cmd := exec.CommandContext(ctx, "sh", filepath.Join(repoRoot, "tools", "kubernetes", "build.sh"), "e2e-netpol", "ginkgo")
	cmd.Dir = repoRoot
	cmd.Stderr = stderr
	out, err := cmd.Output()
	if err != nil {
		return "", "", fmt.Errorf("tools/kubernetes/build.sh e2e-netpol ginkgo: %w", err)
	}
	for line := range strings.Lines(string(out)) {
		k, v, _ := strings.Cut(strings.TrimSpace(line), "=")
		switch k {
		case "e2e-netpol":
			binary = v
		case "ginkgo":
			ginkgo = v
		}
	}
	if binary == "" || ginkgo == "" {
		return "", "", fmt.Errorf("tools/kubernetes/build.sh printed no e2e-netpol or ginkgo path: %q", out)
	}
	return binary, ginkgo, nil
}

// Options of Run.
type Options struct {
	// Binary is e2e-netpol.test (required).
	Binary string
	// Ginkgo is the ginkgo v2 CLI; with it and Procs > 1 the specs run in
	// Procs parallel processes. Empty: the binary runs alone, serially.
	Ginkgo string
	Procs  int
	// Kubeconfig reaches the cluster as an administrator (required).
	Kubeconfig string
	// Dir receives the JSON report (report.json) and the suite's output
	// (e2e.log). Required; created if missing.
	Dir string
	// Focus narrows the specs further: a regular expression ANDed with
	// the Netpol focus by ginkgo (for example a representative subset).
	Focus string
	// Skip adds skip patterns to the SCTP one.
	Skip []string
	// Timeout bounds the whole suite (default 90 minutes).
	Timeout time.Duration
	// Out receives a line per spec and the summary; nil: discarded.
	Out io.Writer
	// Env is added to the binary's environment.
	Env []string
}

// Spec is one spec's outcome.
type Spec struct {
	Name string
	// State is ginkgo's: passed, failed, skipped, pending, panicked,
	// interrupted, aborted, timedout.
	State    string
	Duration time.Duration
	// Message is the failure message, or the reason of a skip.
	Message string
}

// Passed and Skipped classify State; every other state is a failure.
func (s Spec) Passed() bool  { return s.State == "passed" }
func (s Spec) Skipped() bool { return s.State == "skipped" || s.State == "pending" }

// Result is a run's specs, in the order ginkgo ran them.
type Result struct {
	Specs []Spec
	// Report and Log are the files Run wrote.
	Report, Log string
}

// Counts returns the number of passed, failed and skipped specs.
func (r Result) Counts() (passed, failed, skipped int) {
	for _, s := range r.Specs {
		switch {
		case s.Passed():
			passed++
		case s.Skipped():
			skipped++
		default:
			failed++
		}
	}
	return passed, failed, skipped
}

// Summary is the final line: "N passed, M failed, K skipped".
func (r Result) Summary() string {
	p, f, s := r.Counts()
	return fmt.Sprintf("%d passed, %d failed, %d skipped", p, f, s)
}

// Print writes one line per spec (PASS/FAIL/SKIP, name, time, and the
// first line of a failure or the skip reason) and then Summary.
func (r Result) Print(w io.Writer) {
	for _, s := range r.Specs {
		tag := "FAIL"
		switch {
		case s.Passed():
			tag = "PASS"
		case s.Skipped():
			tag = "SKIP"
		}
		line := fmt.Sprintf("%s %s (%.1fs)", tag, s.Name, s.Duration.Seconds())
		if !s.Passed() && s.Message != "" {
			msg, _, _ := strings.Cut(strings.TrimSpace(s.Message), "\n")
			line += ": " + msg
		}
		fmt.Fprintln(w, line)
	}
	fmt.Fprintln(w, r.Summary())
}

// SCTPAvailable reports whether this kernel opens SCTP sockets.
func SCTPAvailable() bool {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, syscall.IPPROTO_SCTP)
	if err != nil {
		return false
	}
	syscall.Close(fd)
	return true
}

// Args returns the command line Run executes (argv[0] first).
func (o Options) Args(report string) []string {
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = 90 * time.Minute
	}
	var skips []string
	if !SCTPAvailable() {
		skips = append(skips, SCTPSkip)
	}
	skips = append(skips, o.Skip...)
	focus := []string{Focus}
	if o.Focus != "" {
		focus = append(focus, o.Focus)
	}
	// Upstream's e2e flags, the same for both ways of running. The tests
	// use agnhost 2.66.1 with pull policy IfNotPresent: the nodes must
	// have it imported (no registry here).
	e2e := []string{
		"--kubeconfig=" + o.Kubeconfig,
		"--provider=local",
		"--report-dir=" + o.Dir,
	}
	ginkgo := []string{"timeout=" + timeout.String(), "json-report=" + report, "v", "no-color"}
	// Several --focus flags are ORed; a narrower focus is therefore folded
	// into one regexp that must match after the Netpol prefix.
	if len(focus) == 1 {
		ginkgo = append(ginkgo, "focus="+focus[0])
	} else {
		ginkgo = append(ginkgo, "focus="+focus[0]+".*"+focus[1])
	}
	for _, s := range skips {
		ginkgo = append(ginkgo, "skip="+s)
	}
	if o.Ginkgo != "" && o.Procs > 1 {
		argv := []string{o.Ginkgo, fmt.Sprintf("--procs=%d", o.Procs)}
		for _, g := range ginkgo {
			argv = append(argv, "--"+g)
		}
		return append(append(append(argv, o.Binary), "--"), e2e...)
	}
	argv := []string{o.Binary}
	for _, g := range ginkgo {
		argv = append(argv, "--ginkgo."+g)
	}
	return append(argv, e2e...)
}

// Run runs the suite and parses its report. A failing spec is no error
// (see Result.Counts); the error is for a suite that could not run or
// left no readable report.
func Run(ctx context.Context, o Options) (Result, error) {
	if o.Binary == "" || o.Kubeconfig == "" || o.Dir == "" {
		return Result{}, errors.New("netpolsuite: Binary, Kubeconfig and Dir are required")
	}
	if _, err := regexp.Compile(o.Focus); err != nil {
		return Result{}, fmt.Errorf("netpolsuite: focus %q: %w", o.Focus, err)
	}
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return Result{}, err
	}
	res := Result{Report: filepath.Join(o.Dir, "report.json"), Log: filepath.Join(o.Dir, "e2e.log")}
	os.Remove(res.Report) // never parse a previous run's report
	logf, err := os.Create(res.Log)
	if err != nil {
		return res, err
	}
	defer logf.Close()
	argv := o.Args(res.Report)
	fmt.Fprintf(logf, "+ %s\n", strings.Join(argv, " "))
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = o.Dir
	cmd.Env = append(os.Environ(), o.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group, so cancelling ends the ginkgo workers too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	runErr := cmd.Run()
	b, err := os.ReadFile(res.Report)
	if err != nil {
		return res, fmt.Errorf("netpol suite left no report (%v; see %s): %w", runErr, res.Log, err)
	}
	res.Specs, err = Parse(b)
	if err != nil {
		return res, fmt.Errorf("%s: %w", res.Report, err)
	}
	if o.Focus != "" {
		// Specs outside the narrower focus were not selected, not skipped:
		// leave them out of the list and the counts.
		re := regexp.MustCompile(o.Focus) // checked above
		res.Specs = slices.DeleteFunc(res.Specs, func(s Spec) bool { return s.Skipped() && s.Message == "" && !re.MatchString(s.Name) })
	}
	if len(res.Specs) == 0 {
		return res, fmt.Errorf("netpol suite ran no spec (%v; see %s)", runErr, res.Log)
	}
	if o.Out != nil {
		res.Print(o.Out)
	}
	return res, nil
}

// The parts of ginkgo v2's JSON report (types.Report) we read.
type report struct {
	SuiteSucceeded bool
	SpecReports    []struct {
		ContainerHierarchyTexts []string
		LeafNodeType            string
		LeafNodeText            string
		State                   string
		RunTime                 time.Duration
		Failure                 *struct{ Message string }
	}
	SuiteConfig struct{ SkipStrings []string }
}

// Parse reads a ginkgo JSON report (one or more suites) and returns its
// specs (It nodes; suite setup nodes only when they failed, since then no
// spec ran). Skipped SCTP specs get SCTPReason as their message.
func Parse(b []byte) ([]Spec, error) {
	var suites []report
	if err := json.NewDecoder(bytes.NewReader(b)).Decode(&suites); err != nil {
		return nil, fmt.Errorf("reading the ginkgo JSON report: %w", err)
	}
	var specs []Spec
	for _, su := range suites {
		for _, r := range su.SpecReports {
			name := strings.Join(append(append([]string(nil), r.ContainerHierarchyTexts...), r.LeafNodeText), " ")
			if r.LeafNodeType != "It" {
				if r.State == "passed" || r.State == "skipped" {
					continue
				}
				name = strings.TrimSpace(r.LeafNodeType + " " + name)
			}
			s := Spec{Name: strings.TrimSpace(name), State: r.State, Duration: r.RunTime}
			if r.State == "" {
				return nil, fmt.Errorf("spec %q has no state", s.Name)
			}
			if r.Failure != nil {
				s.Message = r.Failure.Message
			}
			if s.Skipped() && s.Message == "" && strings.Contains(s.Name, "[Feature:SCTPConnectivity]") {
				s.Message = SCTPReason
			}
			specs = append(specs, s)
		}
	}
	return specs, nil
}
