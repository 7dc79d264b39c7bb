package iptables

import (
	"context"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/nfqpolicy/nfqpolicy/dataplane/internal/nstest"
)

// rulesOnly drops comments and counters from iptables-save output so two
// saves can be compared.
func rulesOnly(save string) string {
	counters := regexp.MustCompile(`\[\d+:\d+\]`)
	var b strings.Builder
	for line := range strings.Lines(save) {
		if strings.HasPrefix(line, "#") {
			continue
		}
		b.WriteString(counters.ReplaceAllString(line, "[]"))
	}
	return b.String()
}

// TestInstallCleanupInNamespace installs our rules next to someone else's
// inside a fresh namespace, twice (idempotence), checks the foreign rules
// keep their place, then cleans up twice and checks nothing of ours and
// everything of theirs remains.
func TestInstallCleanupInNamespace(t *testing.T) {
	for _, b := range []Backend{NFT, Legacy} {
		t.Run(string(b), func(t *testing.T) {
			nstest.Require(t, Tools(b)...)
			nstest.Sweep(t)
			ns := nstest.New(t, "ipt-"+string(b))
			ctx := context.Background()
			ipt := "iptables-" + string(b)
			ip6t := "ip6tables-" + string(b)
			// Someone else's rules, before and after ours.
			ns.Run(ipt, "-N", "KUBE-FORWARD")
			ns.Run(ipt, "-A", "FORWARD", "-j", "KUBE-FORWARD")
			ns.Run(ipt, "-A", "KUBE-FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
			ns.Run(ip6t, "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT")

			tb := New(Exec{Prefix: ns.Prefix()}, b)
			c := Config{Marks: DefaultMarks, QueueBase: 100, Queues: 2, Deny: Reject}
			if err := tb.Install(ctx, c); err != nil {
				t.Fatalf("install: %v", err)
			}
			if err := tb.SyncSets(ctx, []netip.Addr{netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("fd00:1::2")}); err != nil {
				t.Fatalf("sync sets: %v", err)
			}
			first4 := rulesOnly(ns.Run(ipt+"-save", "-t", "filter"))
			first6 := rulesOnly(ns.Run(ip6t+"-save", "-t", "filter"))
			if err := tb.Install(ctx, c); err != nil {
				t.Fatalf("second install: %v", err)
			}
			if got := rulesOnly(ns.Run(ipt+"-save", "-t", "filter")); got != first4 {
				t.Errorf("second install changed the IPv4 table:\n--- first\n%s--- second\n%s", first4, got)
			}
			if got := rulesOnly(ns.Run(ip6t+"-save", "-t", "filter")); got != first6 {
				t.Errorf("second install changed the IPv6 table:\n--- first\n%s--- second\n%s", first6, got)
			}
			t.Logf("installed IPv4 filter table:\n%s", first4)
			for _, want := range []string{
				"-A FORWARD -m comment --comment nfqpolicy -j NFQPOLICY-FORWARD\n-A FORWARD -j KUBE-FORWARD\n",
				"-A INPUT -m comment --comment nfqpolicy -j NFQPOLICY-INPUT\n",
				"--queue-balance 100:101",
				"-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n",
			} {
				if !strings.Contains(first4, want) {
					t.Errorf("IPv4 table lacks %q", want)
				}
			}
			if !strings.Contains(first6, "-A INPUT -m comment --comment nfqpolicy -j NFQPOLICY-INPUT\n-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT\n") {
				t.Errorf("IPv6 INPUT is not [our jump, their rule]:\n%s", first6)
			}
			// kube-proxy starting after us prepends its jump: the check
			// notices, and an install moves ours back to the top without
			// touching theirs.
			ns.Run(ipt, "-I", "FORWARD", "1", "-j", "KUBE-FORWARD")
			missing, err := tb.Check(ctx, c, []netip.Addr{netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("fd00:1::2")}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Contains(missing, "ipv4 jump FORWARD -> NFQPOLICY-FORWARD is not the first rule of FORWARD") {
				t.Errorf("check after a rule was inserted above our jump: %q", missing)
			}
			if err := tb.Install(ctx, c); err != nil {
				t.Fatalf("install over a preceding rule: %v", err)
			}
			if got := rulesOnly(ns.Run(ipt+"-save", "-t", "filter")); !strings.Contains(got, "-A FORWARD -m comment --comment nfqpolicy -j NFQPOLICY-FORWARD\n-A FORWARD -j KUBE-FORWARD\n-A FORWARD -j KUBE-FORWARD\n") {
				t.Errorf("our jump did not move back above both of theirs:\n%s", got)
			}
			ns.Run(ipt, "-D", "FORWARD", "-j", "KUBE-FORWARD")
			// The INVALID drop counter: read by the check from both
			// families' saves, kept by an install (the chain is intact),
			// and a reset is noticed. ip6tables-nft (1.8.9) ignores -c, so
			// IPv6 gets a counter only on legacy.
			v6 := uint64(0)
			ns.Run(ipt, "-R", ChainInvalid, "1", "-c", "5", "300", "-j", "DROP")
			if b == Legacy {
				ns.Run(ip6t, "-R", ChainInvalid, "1", "-c", "2", "200", "-j", "DROP")
				v6 = 2
			}
			if _, err := tb.Check(ctx, c, nil, nil); err != nil {
				t.Fatal(err)
			}
			if n, resets := tb.InvalidDropped(); n != 5+v6 || resets != 0 {
				t.Errorf("INVALID drops %d (resets %d), want %d (0)", n, resets, 5+v6)
			}
			if err := tb.Install(ctx, c); err != nil {
				t.Fatal(err)
			}
			if got := ns.Run(ipt+"-save", "-c", "-t", "filter"); !strings.Contains(got, "[5:300] -A NFQPOLICY-INVALID -j DROP") {
				t.Errorf("the INVALID counter did not survive an install:\n%s", got)
			}
			ns.Run(ipt, "-R", ChainInvalid, "1", "-c", "3", "100", "-j", "DROP") // went back: a reset
			if _, err := tb.Check(ctx, c, nil, nil); err != nil {
				t.Fatal(err)
			}
			if n, resets := tb.InvalidDropped(); n != 8+v6 || resets != 1 {
				t.Errorf("after a reset: INVALID drops %d (resets %d), want %d (1)", n, resets, 8+v6)
			}
			if got := ns.Run("ipset", "list", "NFQPOLICY-LOCAL4"); !strings.Contains(got, "10.1.0.2") {
				t.Errorf("set NFQPOLICY-LOCAL4 lacks 10.1.0.2:\n%s", got)
			}
			if got := ns.Run("ipset", "list", "NFQPOLICY-LOCAL6"); !strings.Contains(got, "fd00:1::2") {
				t.Errorf("set NFQPOLICY-LOCAL6 lacks fd00:1::2:\n%s", got)
			}
			if err := tb.SyncPodNets(ctx, []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24"), netip.MustParsePrefix("fd00:1::/64")}); err != nil {
				t.Fatalf("sync pod nets: %v", err)
			}
			if got := ns.Run("ipset", "list", "NFQPOLICY-PODNET4"); !strings.Contains(got, "10.1.0.0/24") {
				t.Errorf("set NFQPOLICY-PODNET4 lacks 10.1.0.0/24:\n%s", got)
			}
			if got := ns.Run("ipset", "list", "NFQPOLICY-PODNET6"); !strings.Contains(got, "fd00:1::/64") {
				t.Errorf("set NFQPOLICY-PODNET6 lacks fd00:1::/64:\n%s", got)
			}
			if !strings.Contains(first4, "--match-set NFQPOLICY-PODNET4 dst") || !strings.Contains(first6, "--match-set NFQPOLICY-PODNET6 src") {
				t.Errorf("the chains do not match the pod CIDR sets")
			}
			// A resync replaces the set's contents.
			if err := tb.SyncSets(ctx, []netip.Addr{netip.MustParseAddr("10.1.0.3")}); err != nil {
				t.Fatalf("resync sets: %v", err)
			}
			if got := ns.Run("ipset", "list", "NFQPOLICY-LOCAL4"); strings.Contains(got, "10.1.0.2") || !strings.Contains(got, "10.1.0.3") {
				t.Errorf("after resync NFQPOLICY-LOCAL4 is:\n%s", got)
			}

			for i := range 2 {
				if err := tb.Cleanup(ctx); err != nil {
					t.Fatalf("cleanup #%d: %v", i+1, err)
				}
			}
			left, err := tb.Leftovers(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(left) != 0 {
				t.Errorf("after cleanup: %v", left)
			}
			all := ns.Run(ipt+"-save") + ns.Run(ip6t+"-save") + ns.Run("ipset", "list", "-n")
			if strings.Contains(all, "NFQPOLICY") {
				t.Errorf("NFQPOLICY still present after cleanup:\n%s", all)
			}
			if got := rulesOnly(ns.Run(ipt+"-save", "-t", "filter")); !strings.Contains(got, "-A FORWARD -j KUBE-FORWARD\n-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n") {
				t.Errorf("cleanup touched foreign IPv4 rules:\n%s", got)
			}
			if got := rulesOnly(ns.Run(ip6t+"-save", "-t", "filter")); !strings.Contains(got, "-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT\n") {
				t.Errorf("cleanup touched foreign IPv6 rules:\n%s", got)
			}
		})
	}
}

// TestIPv4Only: with only IPv4 configured nothing touches ip6tables, so an
// IPv6-less kernel works, and cleanup of IPv4 alone is complete.
func TestIPv4Only(t *testing.T) {
	nstest.Require(t, Tools(Auto, IPv4)...)
	nstest.Sweep(t)
	ns := nstest.New(t, "ipt-v4only")
	ctx := context.Background()
	tb := New(Exec{Prefix: ns.Prefix()}, Auto, IPv4)
	if err := tb.Install(ctx, Config{Marks: DefaultMarks, QueueBase: 100, Queues: 1}); err != nil {
		t.Fatal(err)
	}
	if err := tb.SyncSets(ctx, []netip.Addr{netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("fd00::2")}); err != nil {
		t.Fatal(err)
	}
	if got := ns.Run("iptables-save"); !strings.Contains(got, "NFQPOLICY-FORWARD") {
		t.Errorf("IPv4 rules missing:\n%s", got)
	}
	if got := ns.Run("ip6tables-save") + ns.Run("ipset", "list", "-n"); strings.Contains(got, "NFQPOLICY-FORWARD") || strings.Contains(got, "LOCAL6") {
		t.Errorf("IPv6 state installed with IPv4 only:\n%s", got)
	}
	if err := tb.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if got := ns.Run("iptables-save") + ns.Run("ipset", "list", "-n"); strings.Contains(got, "NFQPOLICY") {
		t.Errorf("left after cleanup:\n%s", got)
	}
}

// TestAutoDetectInNamespace: kube-proxy's chains in one backend, the agent
// with --iptables-backend=auto: our rules land in that backend and nowhere
// else, for both backends; and an agent that started first (no KUBE-*
// chains yet, so nft) moves its rules to legacy at the next Install once
// kube-proxy has written there.
func TestAutoDetectInNamespace(t *testing.T) {
	nstest.Require(t, Tools(Auto)...)
	nstest.Sweep(t)
	ctx := context.Background()
	c := Config{Marks: DefaultMarks, QueueBase: 100, Queues: 1, Deny: Drop}
	const jump = "-A FORWARD -m comment --comment nfqpolicy -j NFQPOLICY-FORWARD\n"
	other := map[Backend]Backend{Legacy: NFT, NFT: Legacy}
	// check asserts ours are in backend in (both families) and not in the other.
	check := func(t *testing.T, ns *nstest.Namespace, in Backend) {
		t.Helper()
		for _, tool := range []string{"iptables-", "ip6tables-"} {
			if got := ns.Run(tool+string(in)+"-save", "-t", "filter"); !strings.Contains(got, ":NFQPOLICY-FORWARD") || !strings.Contains(got, jump) {
				t.Errorf("%s%s-save lacks our chains and jump:\n%s", tool, in, got)
			}
			if got := ns.Run(tool+string(other[in])+"-save", "-t", "filter"); strings.Contains(got, "NFQPOLICY") {
				t.Errorf("%s%s-save holds rules of ours, which belong in %s:\n%s", tool, other[in], in, got)
			}
		}
	}
	for _, kube := range []Backend{Legacy, NFT} {
		t.Run("kube-proxy in "+string(kube), func(t *testing.T) {
			ns := nstest.New(t, "det-"+string(kube))
			ipt := "iptables-" + string(kube)
			ns.Run(ipt, "-t", "nat", "-N", "KUBE-SERVICES")
			ns.Run(ipt, "-t", "nat", "-A", "PREROUTING", "-j", "KUBE-SERVICES")
			ns.Run(ipt, "-N", "KUBE-FORWARD")
			ns.Run(ipt, "-A", "FORWARD", "-j", "KUBE-FORWARD")
			tb := New(Exec{Prefix: ns.Prefix()}, Auto)
			if err := tb.Install(ctx, c); err != nil {
				t.Fatal(err)
			}
			b, why := tb.Backend()
			t.Logf("detected %s: %s", b, why)
			if b != kube {
				t.Fatalf("detected %s (%s), want %s", b, why, kube)
			}
			check(t, ns, kube)
			if err := tb.Cleanup(ctx); err != nil {
				t.Fatal(err)
			}
			if left, err := tb.Leftovers(ctx); err != nil || len(left) > 0 {
				t.Errorf("after cleanup: %q, %v", left, err)
			}
		})
	}
	t.Run("kube-proxy after the agent", func(t *testing.T) {
		ns := nstest.New(t, "det-late")
		tb := New(Exec{Prefix: ns.Prefix()}, Auto)
		if err := tb.Install(ctx, c); err != nil {
			t.Fatal(err)
		}
		if b, why := tb.Backend(); b != NFT {
			t.Fatalf("with no KUBE-* chains detected %s (%s), want nft", b, why)
		}
		check(t, ns, NFT)
		ns.Run("iptables-legacy", "-t", "mangle", "-N", "KUBE-KUBELET-CANARY")
		ns.Run("iptables-legacy", "-N", "KUBE-FORWARD")
		if err := tb.Install(ctx, c); err != nil {
			t.Fatal(err)
		}
		if b, why := tb.Backend(); b != Legacy {
			t.Fatalf("after kube-proxy wrote legacy, detected %s (%s), want legacy", b, why)
		}
		check(t, ns, Legacy)
		if err := tb.Cleanup(ctx); err != nil {
			t.Fatal(err)
		}
	})
}
