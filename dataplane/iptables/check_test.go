package iptables

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// savedInstall is what iptables-save shows after Install on a clean table.
func savedInstall(c Config, f Family) string {
	var b strings.Builder
	b.WriteString("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n")
	for _, ch := range append(ourChains[:], ChainInvalid) {
		fmt.Fprintf(&b, ":%s - [0:0]\n", ch)
	}
	for _, j := range jumps {
		fmt.Fprintf(&b, "-A %s -m comment --comment %s -j %s\n", j.from, JumpComment, j.to)
	}
	for _, r := range ChainRules(c, f) {
		b.WriteString(r + "\n")
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

func TestCheckSave(t *testing.T) {
	c := Config{Marks: DefaultMarks, QueueBase: 100, Queues: 1}
	for _, f := range AllFamilies() {
		intact := savedInstall(c, f)
		drop := func(match string) string {
			var out []string
			for _, l := range strings.SplitAfter(intact, "\n") {
				if !strings.Contains(l, match) {
					out = append(out, l)
				}
			}
			return strings.Join(out, "")
		}
		tests := []struct {
			name, save string
			want       []string
		}{
			{"intact", intact, nil},
			{"rule inserted above our jump", strings.Replace(intact, "-A FORWARD ", "-A FORWARD -j KUBE-FORWARD\n-A FORWARD ", 1),
				[]string{f.String() + " jump FORWARD -> NFQPOLICY-FORWARD is not the first rule of FORWARD"}},
			{"jump deleted", drop("-A FORWARD "), []string{f.String() + " jump FORWARD -> NFQPOLICY-FORWARD missing"}},
			{"table flushed", drop("-A "), []string{
				f.String() + " jump FORWARD -> NFQPOLICY-FORWARD missing",
				f.String() + " jump INPUT -> NFQPOLICY-INPUT missing",
				f.String() + " chain NFQPOLICY-FORWARD has 0 rules, want " + fmt.Sprint(strings.Count(intact, "-A NFQPOLICY-FORWARD ")),
				f.String() + " chain NFQPOLICY-INPUT has 0 rules, want " + fmt.Sprint(strings.Count(intact, "-A NFQPOLICY-INPUT ")),
				f.String() + " chain NFQPOLICY-ALLOW has 0 rules, want 3",
				f.String() + " chain NFQPOLICY-DENY has 0 rules, want 1",
				f.String() + " chain NFQPOLICY-INVALID has 0 rules, want 1",
			}},
			{"chains deleted", drop("NFQPOLICY-"), []string{
				f.String() + " jump FORWARD -> NFQPOLICY-FORWARD missing",
				f.String() + " jump INPUT -> NFQPOLICY-INPUT missing",
				f.String() + " chain NFQPOLICY-FORWARD missing",
				f.String() + " chain NFQPOLICY-INPUT missing",
				f.String() + " chain NFQPOLICY-ALLOW missing",
				f.String() + " chain NFQPOLICY-DENY missing",
				f.String() + " chain NFQPOLICY-INVALID missing",
			}},
			{"empty save", "", []string{
				f.String() + " jump FORWARD -> NFQPOLICY-FORWARD missing",
				f.String() + " jump INPUT -> NFQPOLICY-INPUT missing",
				f.String() + " chain NFQPOLICY-FORWARD missing",
				f.String() + " chain NFQPOLICY-INPUT missing",
				f.String() + " chain NFQPOLICY-ALLOW missing",
				f.String() + " chain NFQPOLICY-DENY missing",
				f.String() + " chain NFQPOLICY-INVALID missing",
			}},
		}
		for _, tc := range tests {
			t.Run(f.String()+"/"+tc.name, func(t *testing.T) {
				if got := checkSave(c, f, tc.save); !slices.Equal(got, tc.want) {
					t.Errorf("checkSave:\n got %q\nwant %q", got, tc.want)
				}
			})
		}
	}
}

func TestSetEntries(t *testing.T) {
	list := `Name: NFQPOLICY-LOCAL4
Type: hash:ip
Revision: 6
Header: family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0xe4183c22
Size in memory: 256
References: 2
Number of entries: 3

Name: OTHER
Type: hash:net
Number of entries: 0
Name: BROKEN
Number of entries: x
`
	got := setEntries(list)
	if len(got) != 2 || got["NFQPOLICY-LOCAL4"] != 3 || got["OTHER"] != 0 {
		t.Errorf("setEntries = %v, want LOCAL4 3 and OTHER 0", got)
	}
}

func TestSplitCounters(t *testing.T) {
	c := Config{Marks: DefaultMarks, QueueBase: 100, Queues: 1}
	plain := savedInstall(c, IPv4)
	var counted strings.Builder
	for line := range strings.Lines(plain) {
		switch {
		case strings.HasPrefix(line, "-A NFQPOLICY-INVALID "):
			counted.WriteString("[1234:70000] " + line)
		case strings.HasPrefix(line, "-A "):
			counted.WriteString("[5:300] " + line)
		default:
			counted.WriteString(line)
		}
	}
	rules, n := splitCounters(counted.String())
	if rules != plain {
		t.Errorf("rules without counters:\n%s\nwant\n%s", rules, plain)
	}
	if n != 1234 {
		t.Errorf("INVALID drops = %d, want 1234", n)
	}
	if got := checkSave(c, IPv4, rules); got != nil {
		t.Errorf("checkSave of the counted save: %q", got)
	}
	for _, tc := range []struct {
		name, save string
		want       uint64
	}{
		{"no counters", plain, 0},
		{"rule missing", "[9:9] -A FORWARD -j DROP\n", 0},
		{"bad counter", "[x:1] -A NFQPOLICY-INVALID -j DROP\n", 0},
		{"unterminated", "[12:1 -A NFQPOLICY-INVALID -j DROP\n", 0},
		{"other rule of the chain", "[7:1] -A NFQPOLICY-INVALID -j ACCEPT\n", 0},
	} {
		if _, n := splitCounters(tc.save); n != tc.want {
			t.Errorf("%s: INVALID drops = %d, want %d", tc.name, n, tc.want)
		}
	}
}

// TestCountInvalid: the total follows the kernel's counters of both
// families, across agent restarts (the first read counts what the kernel
// counted before), and a counter that went back (reset) adds what it
// counted since and is reported.
func TestCountInvalid(t *testing.T) {
	tb := New(Exec{}, NFT)
	steps := []struct {
		f            Family
		n            uint64
		total, reset uint64
	}{
		{IPv4, 10, 10, 0},
		{IPv6, 3, 13, 0},
		{IPv4, 10, 13, 0},
		{IPv4, 25, 28, 0},
		{IPv4, 4, 32, 1}, // reset: 4 since, the rest of 25.. unknown
		{IPv6, 0, 32, 2}, // rule gone
		{IPv6, 2, 34, 2},
	}
	for i, s := range steps {
		tb.countInvalid(s.f, s.n)
		if total, resets := tb.InvalidDropped(); total != s.total || resets != s.reset {
			t.Errorf("step %d (%s reads %d): total %d resets %d, want %d %d", i, s.f, s.n, total, resets, s.total, s.reset)
		}
	}
}
