// Package cnpsuite runs network-policy-api v0.3.0's conformance suite (the
// ClusterNetworkPolicy tests of sigs.k8s.io/network-policy-api/conformance)
// against a cluster and reports every test by name.
//
// The suite comes as one Go test binary built by tools/kubernetes/build.sh
// (target cnp-conformance, sources in tools/cnpconformance). Its base
// manifests are upstream's with three changes for this project's cluster
// (tools/cnpconformance/patch.sh): agnhost 2.66.1 instead of 2.45, no
// /bin/bash wrapper (our agnhost image holds only /agnhost), and the SCTP
// servers replaced by "agnhost pause" because this kernel has no SCTP
// sockets. The cluster needs the experimental-channel CRD (InstallCRD) and
// the agnhost:2.66.1 image on every node.
package cnpsuite

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Features are the experimental features nfqpolicy enforces: named ports
// and nodes peers (networks peers are standard). domainNames peers have no
// feature and no test in v0.3.0's suite.
var Features = []string{"ClusterNetworkPolicyNamedPorts", "ClusterNetworkPolicyEgressNodePeers"}

// SCTPTests are the tests that probe only SCTP. They are skipped: SCTP
// probes need SCTP sockets, which this kernel lacks (socket(AF_INET,
// SOCK_STREAM, IPPROTO_SCTP) fails). Tests mixing SCTP with TCP and UDP
// probes run with their SCTP probes skipped (see SkipSCTPProbesEnv): every
// TCP and UDP probe of theirs runs.
var SCTPTests = []string{"CNPAdminTierEgressSCTP", "CNPAdminTierIngressSCTP", "CNPBaselineTierEgressSCTP", "CNPBaselineTierIngressSCTP"}

// SCTPReason says why SCTPTests are skipped.
const SCTPReason = "needs SCTP sockets, which this kernel lacks"

// SkipSCTPProbesEnv, set to a reason, makes the suite's PokeServer (as
// tools/cnpconformance/sctpprobes.sh patches it) log an SCTP probe as not
// run instead of running it; Run counts those per test.
const SkipSCTPProbesEnv = "NFQPOLICY_CNP_SKIP_SCTP_PROBES"

// sctpNotRun is how the patched PokeServer logs a probe it did not run.
const sctpNotRun = "SCTP probe not run: "

// SCTPSockets returns nil when this kernel makes SCTP sockets, else why
// not. The nodes of the test cluster share the kernel.
func SCTPSockets() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_SCTP)
	if err != nil {
		return fmt.Errorf("socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP): %w", err)
	}
	unix.Close(fd)
	return nil
}

// Binary builds (or finds in the cache) the suite's test binary with
// tools/kubernetes/build.sh under repoRoot and returns its path.
func Binary(ctx context.Context, repoRoot string, stderr io.Writer) (string, error) {
	cmd := exec.CommandContext(ctx, "sh", filepath.Join(repoRoot, "tools", "kubernetes", "build.sh"), "cnp-conformance")
	cmd.Dir = repoRoot
	cmd.Stderr = stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("tools/kubernetes/build.sh cnp-conformance: %w", err)
	}
	k, v, _ := strings.Cut(strings.TrimSpace(string(out)), "=")
	if k != "cnp-conformance" || v == "" {
		return "", fmt.Errorf("tools/kubernetes/build.sh cnp-conformance printed %q", out)
	}
	return v, nil
}

// CRDFile returns the path of the experimental-channel ClusterNetworkPolicy
// CRD of the network-policy-api module the main module requires (the
// suite's named-port and nodes tests need the experimental fields).
func CRDFile(ctx context.Context, repoRoot string) (string, error) {
	cmd := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/network-policy-api")
	cmd.Dir = repoRoot
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go list -m sigs.k8s.io/network-policy-api: %w", err)
	}
	f := filepath.Join(strings.TrimSpace(string(out)), "config", "crd", "experimental", "policy.networking.k8s.io_clusternetworkpolicies.yaml")
	if _, err := os.Stat(f); err != nil {
		return "", err
	}
	return f, nil
}

// Options configure Run.
type Options struct {
	Binary     string   // from Binary
	Kubeconfig string   // admin kubeconfig of the cluster
	Dir        string   // report.yaml and suite.log land here
	Skip       []string // tests (ShortName) not to run; nil means SCTPTests
	SkipReason string   // printed with each skipped test; default SCTPReason
	Run        string   // if set, only the tests (ShortName regexp) it matches run
	// SkipSCTPProbes, when not empty, is why SCTP probes inside tests
	// that mix protocols are not run (SkipSCTPProbesEnv); each is
	// reported in its test's SCTPNotRun.
	SkipSCTPProbes string
	Out            io.Writer // one line per test, then the summary; nil discards
}

// Status of one test.
type Status string

const (
	Passed  Status = "PASS"
	Failed  Status = "FAIL"
	Skipped Status = "SKIP"
)

// Test is one upstream conformance test.
type Test struct {
	Name     string // ShortName, e.g. CNPAdminTierEgressNodePeers
	Status   Status
	Duration time.Duration
	Reason   string // skip reason, or the failed subtests and first failure line
	// SCTPNotRun lists the SCTP probes not run (Options.SkipSCTPProbes):
	// "NS/POD -> HOST:PORT (expected to connect: BOOL)". A test that
	// passed with some is a pass of its TCP and UDP probes only.
	SCTPNotRun []string
	// Retried counts the probe attempts that did not see what the test
	// expected and were retried (upstream's PokeServer retries a probe
	// for 10 s, since a policy change takes effect after a while): in a
	// passed test, each is an attempt made before the change was enforced.
	Retried int
}

// Result of a run.
type Result struct {
	Tests  []Test
	Report string // path of the suite's conformance report (YAML)
	Log    string // path of the suite's full output
}

// Counts returns the number of passed, failed and skipped tests.
func (r *Result) Counts() (passed, failed, skipped int) {
	for _, t := range r.Tests {
		switch t.Status {
		case Passed:
			passed++
		case Failed:
			failed++
		case Skipped:
			skipped++
		}
	}
	return
}

// Retried is the number of probe attempts retried over all tests.
func (r *Result) Retried() int {
	n := 0
	for _, t := range r.Tests {
		n += t.Retried
	}
	return n
}

// Summary is "N passed, M failed, K skipped", followed by how many SCTP
// probes of how many tests were not run, if any.
func (r *Result) Summary() string {
	p, f, s := r.Counts()
	sum := fmt.Sprintf("%d passed, %d failed, %d skipped", p, f, s)
	probes, tests := 0, 0
	for _, t := range r.Tests {
		if len(t.SCTPNotRun) > 0 {
			probes += len(t.SCTPNotRun)
			tests++
		}
	}
	if probes > 0 {
		sum += fmt.Sprintf("; %d SCTP probes not run in %d of the tests", probes, tests)
	}
	return sum
}

// Run runs the suite against opts.Kubeconfig. Failing tests are not an
// error; err says the suite could not run or produced no per-test results.
func Run(ctx context.Context, opts Options) (*Result, error) {
	out := opts.Out
	if out == nil {
		out = io.Discard
	}
	skip, reason := opts.Skip, opts.SkipReason
	if skip == nil {
		skip = SCTPTests
	}
	if reason == "" {
		reason = SCTPReason
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, err
	}
	res := &Result{Report: filepath.Join(opts.Dir, "report.yaml"), Log: filepath.Join(opts.Dir, "suite.log")}
	logf, err := os.Create(res.Log)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	run := "^TestConformance$"
	if opts.Run != "" {
		run += "/" + opts.Run
	}
	cmd := exec.CommandContext(ctx, opts.Binary,
		"-test.v", "-test.timeout=90m", "-test.run="+run,
		"-supported-features="+strings.Join(Features, ","),
		"-skip-tests="+strings.Join(skip, ","),
		"-report-output="+res.Report,
		"-version=dev",
	)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+opts.Kubeconfig)
	if opts.SkipSCTPProbes != "" {
		cmd.Env = append(cmd.Env, SkipSCTPProbesEnv+"="+opts.SkipSCTPProbes)
	}
	cmd.Dir = opts.Dir
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", opts.Binary, err)
	}
	done := make(chan []Test)
	go func() { done <- parse(io.TeeReader(pr, &stampWriter{w: logf}), skip, reason, out) }()
	runErr := cmd.Wait()
	pw.Close()
	res.Tests = <-done
	if len(res.Tests) == 0 {
		return res, fmt.Errorf("conformance suite reported no tests (%v); see %s", runErr, res.Log)
	}
	fmt.Fprintln(out, res.Summary())
	var ee *exec.ExitError
	if runErr != nil && !errors.As(runErr, &ee) {
		return res, runErr
	}
	return res, nil
}

var (
	// "    --- PASS: TestConformance/CNPAdminTierGress (12.34s)"; depth by slashes.
	resultRE = regexp.MustCompile(`^\s*--- (PASS|FAIL|SKIP): TestConformance/(\S+) \(([\d.]+)s\)`)
	// a failure message line printed by t.Errorf/t.Fatalf: "    file.go:123: msg"
	msgRE = regexp.MustCompile(`^\s+[\w.-]+\.go:\d+: (.*)`)
)

// parse reads `go test -v` output and returns the top-level tests (the
// upstream ShortNames) in order, printing one line per test to out.
func parse(r io.Reader, skip []string, skipReason string, out io.Writer) []Test {
	skipped := map[string]bool{}
	for _, s := range skip {
		skipped[s] = true
	}
	var tests []Test
	failedSubs := map[string][]string{}
	lastMsg := map[string]string{}  // top-level test -> first error-looking message
	notRun := map[string][]string{} // top-level test -> SCTP probes not run
	retried := map[string]int{}     // top-level test -> failed probe attempts
	var current string
	var pending *Test
	// flush completes the last top-level result (now that its subtests'
	// results are read) and prints it.
	flush := func() {
		if pending == nil {
			return
		}
		t := *pending
		pending = nil
		t.SCTPNotRun, t.Retried = notRun[t.Name], retried[t.Name]
		switch {
		case skipped[t.Name]:
			t.Status, t.Reason = Skipped, skipReason
		case t.Status == Failed:
			t.Reason = strings.Join(failedSubs[t.Name], "; ")
			if msg := lastMsg[t.Name]; msg != "" {
				if t.Reason != "" {
					t.Reason += ": "
				}
				t.Reason += msg
			}
		case t.Status == Skipped:
			t.Reason = lastMsg[t.Name]
		}
		tests = append(tests, t)
		line := fmt.Sprintf("%s %s (%.1fs)", t.Status, t.Name, t.Duration.Seconds())
		if t.Reason != "" {
			line += ": " + t.Reason
		}
		switch n := len(t.SCTPNotRun); n {
		case 0:
		case 1:
			line += " [1 SCTP probe not run]"
		default:
			line += fmt.Sprintf(" [%d SCTP probes not run]", n)
		}
		fmt.Fprintln(out, line)
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "=== RUN   TestConformance/") {
			name := strings.TrimPrefix(line, "=== RUN   TestConformance/")
			current, _, _ = strings.Cut(name, "/")
			continue
		}
		if m := resultRE.FindStringSubmatch(line); m != nil {
			top, sub, nested := strings.Cut(m[2], "/")
			if nested {
				// go test prints a parent's result before its subtests'.
				if m[1] == "FAIL" {
					failedSubs[top] = append(failedSubs[top], strings.ReplaceAll(sub, "_", " "))
				}
				continue
			}
			flush()
			secs, _ := time.ParseDuration(m[3] + "s")
			pending = &Test{Name: top, Status: Status(m[1]), Duration: secs}
			continue
		}
		if m := msgRE.FindStringSubmatch(line); current != "" && m != nil && strings.HasPrefix(m[1], sctpNotRun) {
			probe, _, _ := strings.Cut(strings.TrimPrefix(m[1], sctpNotRun), "): ")
			notRun[current] = append(notRun[current], probe+")")
			continue
		}
		if m := msgRE.FindStringSubmatch(line); current != "" && m != nil && strings.HasPrefix(m[1], "FAILED Command was ") {
			retried[current]++
		}
		if current != "" && lastMsg[current] == "" {
			if m := msgRE.FindStringSubmatch(line); m != nil && isProblem(m[1]) {
				lastMsg[current] = m[1]
			}
		}
	}
	flush()
	return tests
}

// isProblem tells failure and skip messages from the suite's progress logs
// ("Applying ...", "Creating ...").
func isProblem(msg string) bool {
	for _, w := range []string{"FAILED", "Skipping", "expected", "failed", "error", "Error", "timed out"} {
		if strings.Contains(msg, w) {
			return true
		}
	}
	return false
}

// stampWriter prefixes every line with the wall-clock time, so that the
// suite's log can be read against the agents' logs and flow logs.
type stampWriter struct {
	w         io.Writer
	midLine   bool
	stampNext []byte
}

func (s *stampWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		if !s.midLine {
			s.stampNext = time.Now().UTC().AppendFormat(s.stampNext[:0], "15:04:05.000 ")
			if _, err := s.w.Write(s.stampNext); err != nil {
				return 0, err
			}
			s.midLine = true
		}
		line := p
		if i := bytes.IndexByte(p, '\n'); i >= 0 {
			line, s.midLine = p[:i+1], false
		}
		if _, err := s.w.Write(line); err != nil {
			return 0, err
		}
		p = p[len(line):]
	}
	return n, nil
}
