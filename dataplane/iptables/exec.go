package iptables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"sync"
)

// Runner runs a command with stdin and returns its stdout; an error carries
// the command's stderr.
type Runner interface {
	Run(ctx context.Context, stdin, name string, args ...string) (string, error)
}

// Exec runs commands locally. Prefix, when set, is prepended to every
// command line: tests use {"ip", "netns", "exec", NAME} so that the
// commands cannot run in the test process's (root) namespace by accident.
type Exec struct {
	Prefix []string
}

// Run implements Runner.
func (e Exec) Run(ctx context.Context, stdin, name string, args ...string) (string, error) {
	argv := append(append(append([]string(nil), e.Prefix...), name), args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(errb.String())
		if msg == "" {
			msg = strings.TrimSpace(out.String())
		}
		return out.String(), fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, msg)
	}
	return out.String(), nil
}

// Backend picks the iptables binaries. Auto detects the node's backend,
// the one holding kube-proxy's and kubelet's rules (see Detect), so that
// our rules sit in the same rule set as theirs.
type Backend string

// Backends.
const (
	Auto   Backend = ""
	Legacy Backend = "legacy"
	NFT    Backend = "nft"
)

// ParseBackend reads the --iptables-backend flag.
func ParseBackend(s string) (Backend, error) {
	switch Backend(s) {
	case Auto, "auto":
		return Auto, nil
	case Legacy, NFT:
		return Backend(s), nil
	}
	return Auto, fmt.Errorf("iptables backend %q: want auto, legacy or nft", s)
}

// binary names backend b's tool for family f (b is Legacy or NFT; Auto is
// resolved by Detect before any command runs).
func (b Backend) binary(f Family, tool string) string {
	base := "iptables"
	if f == IPv6 {
		base = "ip6tables"
	}
	return base + "-" + string(b) + "-" + tool
}

// Tools lists the binaries the agent needs for backend b and the given
// families (both when none are given); Auto needs both backends' to detect
// and to use either.
func Tools(b Backend, fams ...Family) []string {
	if len(fams) == 0 {
		fams = AllFamilies()
	}
	bs := []Backend{b}
	if b == Auto || b == "auto" {
		bs = []Backend{Legacy, NFT}
	}
	var r []string
	for _, b := range bs {
		for _, f := range fams {
			r = append(r, b.binary(f, "save"), b.binary(f, "restore"))
		}
	}
	return append(r, "ipset")
}

// CheckTools reports every missing binary at once, with what to install.
func CheckTools(b Backend, fams ...Family) error {
	var missing []string
	for _, t := range Tools(b, fams...) {
		if _, err := exec.LookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing %s in PATH (install the iptables and ipset packages)", strings.Join(missing, ", "))
	}
	return nil
}

// Tables installs and removes our rules and sets through a Runner.
type Tables struct {
	run      Runner
	backend  Backend
	families []Family

	mu      sync.Mutex
	current Backend // Auto: the backend of the last Install
	why     string  // Auto: Detect's reason for it
	decided bool    // Auto: by the KUBE-* chains; no more detection

	// NFQPOLICY-INVALID's drop counter as Check last read it, per family,
	// and the running total (see countInvalid).
	invalidLast   map[Family]uint64
	invalidTotal  uint64
	invalidResets uint64
}

// New returns Tables running commands with r and the binaries of b, for
// the given families (both when none are given).
func New(r Runner, b Backend, fams ...Family) *Tables {
	if len(fams) == 0 {
		fams = AllFamilies()
	}
	return &Tables{run: r, backend: b, families: slices.Clone(fams)}
}

// Backend returns the backend the last Install used and why (for Auto,
// Detect's reason); empty before the first Install.
func (t *Tables) Backend() (Backend, string) {
	if t.backend != Auto && t.backend != "auto" {
		return t.backend, "set by flag"
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.current, t.why
}

// use returns the backend to install into. With Auto it detects at every
// call (Install runs at start and at each resync) until the node's KUBE-*
// chains have decided it, so an agent that started before kube-proxy wrote
// its rules follows them once they appear: it then removes its rules from
// the backend it left (the sets are shared by both backends and stay).
// Once decided it stops looking: a full save of a large kube-proxy rule set
// at every resync would cost more than a backend switch is likely.
func (t *Tables) use(ctx context.Context) (Backend, error) {
	if t.backend != Auto && t.backend != "auto" {
		return t.backend, nil
	}
	t.mu.Lock()
	cur, decided := t.current, t.decided
	t.mu.Unlock()
	if decided {
		return cur, nil
	}
	d, err := Detect(ctx, t.run, t.families...)
	if err != nil {
		return "", err
	}
	t.mu.Lock()
	prev := t.current
	t.current, t.why = d.Backend, d.Reason
	t.decided = d.Kube[Legacy] != d.Kube[NFT]
	t.mu.Unlock()
	if prev != "" && prev != d.Backend {
		if err := t.cleanupRules(ctx, prev); err != nil {
			return "", fmt.Errorf("moving our rules from %s to %s (%s): %w", prev, d.Backend, d.Reason, err)
		}
	}
	return d.Backend, nil
}

// backends lists the backends Cleanup and Leftovers look at: the one set,
// or with Auto every backend whose save works (ours may be in either).
func (t *Tables) backends(ctx context.Context) ([]Backend, error) {
	if t.backend != Auto && t.backend != "auto" {
		return []Backend{t.backend}, nil
	}
	var r []Backend
	var errs []error
	for _, b := range []Backend{Legacy, NFT} {
		if _, err := t.save(ctx, b, t.families[0]); err != nil {
			errs = append(errs, err)
			continue
		}
		r = append(r, b)
	}
	if len(r) == 0 {
		return nil, errors.Join(errs...)
	}
	return r, nil
}

func (t *Tables) save(ctx context.Context, b Backend, f Family) (string, error) {
	out, err := t.run.Run(ctx, "", b.binary(f, "save"), "-t", "filter")
	if err != nil {
		return "", fmt.Errorf("read %s filter table: %w", f, err)
	}
	return out, nil
}

func (t *Tables) restore(ctx context.Context, b Backend, f Family, input string) error {
	// -w: wait for the xtables lock instead of failing when kube-proxy
	// holds it (legacy backend; nft ignores it).
	if _, err := t.run.Run(ctx, input, b.binary(f, "restore"), "-w", "5", "--noflush"); err != nil {
		return fmt.Errorf("%s iptables-restore: %w", f, err)
	}
	return nil
}

// Install creates our sets if missing and (re)installs our chains and
// jumps for both families. It is idempotent: run it at every start and
// periodically to repair rules someone else flushed.
func (t *Tables) Install(ctx context.Context, c Config) error {
	if err := c.Validate(); err != nil {
		return err
	}
	var sets strings.Builder
	for _, f := range t.families {
		sets.WriteString(RenderSetCreate(f))
	}
	if err := t.ipsetRestore(ctx, sets.String()); err != nil {
		return err
	}
	b, err := t.use(ctx)
	if err != nil {
		return err
	}
	for _, f := range t.families {
		save, err := t.save(ctx, b, f)
		if err != nil {
			return err
		}
		if err := t.restore(ctx, b, f, RenderInstall(c, f, save)); err != nil {
			return err
		}
	}
	return nil
}

// SyncSets makes the sets hold exactly addrs (both families).
func (t *Tables) SyncSets(ctx context.Context, addrs []netip.Addr) error {
	var b strings.Builder
	for _, f := range t.families {
		b.WriteString(RenderSetSync(f, addrs))
	}
	return t.ipsetRestore(ctx, b.String())
}

// SyncPodNets makes the pod CIDR sets hold exactly nets (both families):
// the local node's pod CIDRs.
func (t *Tables) SyncPodNets(ctx context.Context, nets []netip.Prefix) error {
	var b strings.Builder
	for _, f := range t.families {
		b.WriteString(RenderNetSetSync(f, nets))
	}
	return t.ipsetRestore(ctx, b.String())
}

func (t *Tables) ipsetRestore(ctx context.Context, input string) error {
	if _, err := t.run.Run(ctx, input, "ipset", "restore"); err != nil {
		return fmt.Errorf("ipset restore: %w", err)
	}
	return nil
}

// Cleanup removes every jump to our chains, our chains (both families) and
// then our sets. Nothing of ours left is not an error, so it is
// idempotent. It tries everything and reports all failures.
func (t *Tables) Cleanup(ctx context.Context) error {
	var errs []error
	bs, err := t.backends(ctx)
	if err != nil {
		errs = append(errs, err)
	}
	for _, b := range bs {
		errs = append(errs, t.cleanupRules(ctx, b))
	}
	list, err := t.run.Run(ctx, "", "ipset", "list", "-n")
	if err != nil {
		errs = append(errs, fmt.Errorf("list ipsets: %w", err))
	} else {
		for _, s := range ourSets(list) {
			if _, err := t.run.Run(ctx, "", "ipset", "destroy", s); err != nil {
				errs = append(errs, fmt.Errorf("destroy ipset %s: %w", s, err))
			}
		}
	}
	return errors.Join(errs...)
}

// cleanupRules removes our jumps and chains from backend b, both families.
func (t *Tables) cleanupRules(ctx context.Context, b Backend) error {
	var errs []error
	for _, f := range t.families {
		save, err := t.save(ctx, b, f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if in := RenderCleanup(save); in != "" {
			if err := t.restore(ctx, b, f, in); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// Leftovers lists what of ours is still installed (chains, jumps, sets),
// one item per line-like string; empty after a successful Cleanup.
func (t *Tables) Leftovers(ctx context.Context) ([]string, error) {
	var r []string
	bs, err := t.backends(ctx)
	if err != nil {
		return nil, err
	}
	for _, b := range bs {
		where := ""
		if len(bs) > 1 {
			where = string(b) + " "
		}
		for _, f := range t.families {
			save, err := t.save(ctx, b, f)
			if err != nil {
				return nil, err
			}
			s := parseSave(save)
			for _, ch := range s.ours {
				r = append(r, where+f.String()+" chain "+ch)
			}
			for _, j := range s.jumpRules {
				r = append(r, where+f.String()+" rule "+j)
			}
		}
	}
	list, err := t.run.Run(ctx, "", "ipset", "list", "-n")
	if err != nil {
		return nil, fmt.Errorf("list ipsets: %w", err)
	}
	for _, s := range ourSets(list) {
		r = append(r, "ipset "+s)
	}
	return r, nil
}
