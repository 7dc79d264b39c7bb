package iptables

import (
	"strings"
	"testing"
)

// FuzzParseSave feeds iptables-save (with and without -c) and `ipset list` output, as another
// tool on the node may leave it, to everything that reads it: parsing,
// the install and cleanup renderers and the rules check. None may panic;
// a cleanup must only ever touch our chains and the jumps to them.
func FuzzParseSave(f *testing.F) {
	c := Config{Marks: DefaultMarks, QueueBase: 100, Queues: 2, Deny: Reject}
	f.Add(savedInstall(c, IPv4))
	f.Add(savedInstall(c, IPv6))
	f.Add("*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -j\n-A\n-A NFQPOLICY-\n:NFQPOLICY-\nCOMMIT\n")
	f.Add("*filter\n:NFQPOLICY-INVALID - [0:0]\n[12:720] -A NFQPOLICY-INVALID -j DROP\n[3:1] -A FORWARD -j X\n[:] -A\n[\n")
	f.Add("Name: NFQPOLICY-LOCAL4\nNumber of entries: 3\nName: x\nNumber of entries: -1\n")
	f.Fuzz(func(t *testing.T, save string) {
		s := parseSave(save)
		for _, ch := range s.ours {
			if !strings.HasPrefix(ch, Prefix) {
				t.Fatalf("chain %q taken for ours", ch)
			}
		}
		_ = RenderInstall(c, IPv4, save)
		_ = checkSave(c, IPv6, save)
		rules, _ := splitCounters(save)
		_ = checkSave(c, IPv4, rules)
		_ = setEntries(save)
		for _, l := range strings.Split(RenderCleanup(save), "\n") {
			switch {
			case l == "", l == "*filter", l == "COMMIT":
			case strings.HasPrefix(l, "-F "+Prefix), strings.HasPrefix(l, "-X "+Prefix):
			case strings.HasPrefix(l, "-D ") && strings.Contains(l, Prefix):
			default:
				t.Fatalf("cleanup of %q would run %q", save, l)
			}
		}
	})
}
