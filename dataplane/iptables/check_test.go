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
	for _, ch := range ourChains {
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
			}},
			{"chains deleted", drop("NFQPOLICY-"), []string{
				f.String() + " jump FORWARD -> NFQPOLICY-FORWARD missing",
				f.String() + " jump INPUT -> NFQPOLICY-INPUT missing",
				f.String() + " chain NFQPOLICY-FORWARD missing",
				f.String() + " chain NFQPOLICY-INPUT missing",
				f.String() + " chain NFQPOLICY-ALLOW missing",
				f.String() + " chain NFQPOLICY-DENY missing",
			}},
			{"empty save", "", []string{
				f.String() + " jump FORWARD -> NFQPOLICY-FORWARD missing",
				f.String() + " jump INPUT -> NFQPOLICY-INPUT missing",
				f.String() + " chain NFQPOLICY-FORWARD missing",
				f.String() + " chain NFQPOLICY-INPUT missing",
				f.String() + " chain NFQPOLICY-ALLOW missing",
				f.String() + " chain NFQPOLICY-DENY missing",
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
