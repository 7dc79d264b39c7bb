package iptables

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Check reports what of ours is missing or altered in the kernel: a jump
// from a built-in chain, one of our chains or some of its rules (someone
// ran iptables -F, or a firewall reload replaced the table), or a set that
// is gone or does not hold what the last sync put in it (ipset flush or
// destroy), given the local pod addresses and CIDRs the sets must hold.
// Nothing missing is an empty list. It reads the filter table once per
// family and the set headers once (`ipset list -t`), so it is cheap enough
// to run every second; a rule someone edited but left in place is not
// noticed (the periodic resync replaces it). The same reads carry the
// packet counter of NFQPOLICY-INVALID's drop rule, which InvalidDropped
// totals.
func (t *Tables) Check(ctx context.Context, c Config, addrs []netip.Addr, nets []netip.Prefix) ([]string, error) {
	// The backend the last Install wrote to: ours are there (Auto moves
	// them at an Install, never here).
	bk, _ := t.Backend()
	if bk == "" {
		return nil, nil // nothing installed yet
	}
	var missing []string
	for _, f := range t.families {
		out, err := t.run.Run(ctx, "", bk.binary(f, "save"), "-c", "-t", "filter")
		if err != nil {
			return nil, fmt.Errorf("read %s filter table: %w", f, err)
		}
		save, dropped := splitCounters(out)
		t.countInvalid(f, dropped)
		missing = append(missing, checkSave(c, f, save)...)
	}
	list, err := t.run.Run(ctx, "", "ipset", "list", "-t")
	if err != nil {
		return nil, fmt.Errorf("list ipsets: %w", err)
	}
	have := setEntries(list)
	for _, f := range t.families {
		for _, s := range []struct{ name, sync string }{
			{SetName(f), RenderSetSync(f, addrs)},
			{NetSetName(f), RenderNetSetSync(f, nets)},
		} {
			want := strings.Count(s.sync, "\nadd ")
			n, ok := have[s.name]
			switch {
			case !ok:
				missing = append(missing, "ipset "+s.name+" missing")
			case n != want:
				missing = append(missing, fmt.Sprintf("ipset %s holds %d entries, want %d", s.name, n, want))
			}
		}
	}
	return missing, nil
}

// checkSave compares one family's iptables-save -t filter output with the
// rules Install puts there.
func checkSave(c Config, f Family, save string) []string {
	var missing []string
	s := parseSave(save)
	for _, j := range jumps {
		switch {
		case !s.hasJump(j.from, j.to):
			missing = append(missing, fmt.Sprintf("%s jump %s -> %s missing", f, j.from, j.to))
		case !s.jumpFirst(j.from, j.to):
			missing = append(missing, fmt.Sprintf("%s jump %s -> %s is not the first rule of %s", f, j.from, j.to, j.from))
		}
	}
	want := map[string]int{}
	for _, r := range ChainRules(c, f) {
		want[strings.Fields(r)[1]]++
	}
	have := map[string]int{}
	for line := range strings.Lines(save) {
		if fields := strings.Fields(line); len(fields) > 1 && fields[0] == "-A" && strings.HasPrefix(fields[1], Prefix) {
			have[fields[1]]++
		}
	}
	declared := map[string]bool{}
	for _, ch := range s.ours {
		declared[ch] = true
	}
	for _, ch := range append(ourChains[:], ChainInvalid) {
		switch {
		case !declared[ch]:
			missing = append(missing, fmt.Sprintf("%s chain %s missing", f, ch))
		case have[ch] != want[ch]:
			missing = append(missing, fmt.Sprintf("%s chain %s has %d rules, want %d", f, ch, have[ch], want[ch]))
		}
	}
	return missing
}

// setEntries reads `ipset list -t` output: each set's entry count by name.
func setEntries(list string) map[string]int {
	out := map[string]int{}
	name := ""
	for line := range strings.Lines(list) {
		line = strings.TrimSpace(line)
		if v, ok := strings.CutPrefix(line, "Name: "); ok {
			name = v
			continue
		}
		if v, ok := strings.CutPrefix(line, "Number of entries: "); ok && name != "" {
			if n, err := strconv.Atoi(v); err == nil {
				out[name] = n
			}
			name = ""
		}
	}
	return out
}

// splitCounters takes iptables-save -c output apart: the rules without
// their "[packets:bytes]" prefixes (what parseSave and checkSave read),
// and the packet counter of NFQPOLICY-INVALID's drop rule (0 when the rule
// is not there).
func splitCounters(save string) (rules string, invalidDropped uint64) {
	var b strings.Builder
	b.Grow(len(save))
	for line := range strings.Lines(save) {
		rest := strings.TrimLeft(line, " \t")
		if strings.HasPrefix(rest, "[") {
			if counters, rule, ok := strings.Cut(rest, "] "); ok {
				rest = rule
				if strings.TrimRight(rule, "\r\n") == invalidRules[0] {
					pkts, _, _ := strings.Cut(counters[1:], ":")
					if n, err := strconv.ParseUint(pkts, 10, 64); err == nil {
						invalidDropped += n
					}
				}
				line = rest
			}
		}
		b.WriteString(line)
	}
	return b.String(), invalidDropped
}

// countInvalid adds what family f's INVALID drop counter counted since the
// last check. The counter lives in the kernel and goes back to zero when
// the rule is recreated (iptables -F or -Z, a firewall reload, our chain
// rewritten because someone edited it): the packets it counted between the
// last check and that reset are then unknown, and counted as a reset.
func (t *Tables) countInvalid(f Family, n uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.invalidLast == nil {
		t.invalidLast = map[Family]uint64{}
	}
	last := t.invalidLast[f]
	switch {
	case n >= last:
		t.invalidTotal += n - last
	default:
		t.invalidTotal += n
		t.invalidResets++
	}
	t.invalidLast[f] = n
}

// InvalidDropped returns the packets NFQPOLICY-INVALID dropped (both
// families) as of the last Check, and how many times its counter was found
// reset since the previous check (each reset loses the count of at most
// one check interval).
func (t *Tables) InvalidDropped() (dropped, resets uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.invalidTotal, t.invalidResets
}
