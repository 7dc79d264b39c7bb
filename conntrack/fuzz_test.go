package conntrack

import (
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// FuzzParseEntry feeds ctnetlink entry attributes, as a dump delivers
// them, to the parser: no input may panic it, and an entry it accepts has
// a flow of valid addresses.
func FuzzParseEntry(f *testing.F) {
	ext := netip.MustParseAddr("192.0.2.7")
	f.Add(uint8(unix.AF_INET), fakeEntry{src: ext, dst: podC4, proto: 6, sport: 40000, dport: 80, mark: 0x10000, id: 7}.attrs())
	f.Add(uint8(unix.AF_INET6), fakeEntry{src: podA6, dst: podC6, proto: 17, sport: 5353, dport: 53, mark: 0x10000}.attrs())
	f.Add(uint8(unix.AF_INET), []byte{4, 0, 1, 0})
	f.Add(uint8(unix.AF_INET), []byte{})
	f.Fuzz(func(t *testing.T, family uint8, b []byte) {
		var e entry
		if err := parseEntry(family, b, &e); err != nil {
			return
		}
		if !e.flow.Src.IsValid() || !e.flow.Dst.IsValid() {
			t.Fatalf("entry accepted with a flow of invalid addresses: %+v", e.flow)
		}
	})
}
