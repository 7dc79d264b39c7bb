package iptables

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
)

// Family is an IP family: the rules, sets and binaries differ per family.
type Family int

// The two families. Both are always installed: a pod may be dual-stack.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

// AllFamilies lists both families in install order.
func AllFamilies() []Family { return []Family{IPv4, IPv6} }

// ParseFamilies reads the --ip-families flag: "auto" (DetectFamilies),
// "ipv4", "ipv6" or "ipv4,ipv6".
func ParseFamilies(s string) ([]Family, error) {
	if s == "auto" || s == "" {
		return DetectFamilies(), nil
	}
	var fams []Family
	for _, p := range strings.Split(s, ",") {
		var f Family
		switch strings.TrimSpace(p) {
		case "ipv4":
			f = IPv4
		case "ipv6":
			f = IPv6
		default:
			return nil, fmt.Errorf("ip families %q: want auto, ipv4, ipv6 or ipv4,ipv6", s)
		}
		if slices.Contains(fams, f) {
			return nil, fmt.Errorf("ip families %q: %s twice", s, f)
		}
		fams = append(fams, f)
	}
	slices.Sort(fams)
	return fams, nil
}

// DetectFamilies returns IPv4, and IPv6 unless the kernel runs without it
// (ipv6.disable=1: no /proc/sys/net/ipv6, and ip6tables cannot work).
func DetectFamilies() []Family {
	if _, err := os.Stat("/proc/sys/net/ipv6"); err != nil {
		return []Family{IPv4}
	}
	return AllFamilies()
}

func (f Family) String() string {
	if f == IPv6 {
		return "ipv6"
	}
	return "ipv4"
}

// Names of everything we own. The prefix is what cleanup looks for, so any
// chain or set starting with it is ours.
const (
	Prefix       = "NFQPOLICY-"
	ChainForward = Prefix + "FORWARD"
	ChainInput   = Prefix + "INPUT"
	ChainAllow   = Prefix + "ALLOW"
	ChainDeny    = Prefix + "DENY"
	// ChainInvalid drops packets conntrack marks INVALID to or from local
	// pods. Its one rule's packet counter is the count the agent exports
	// (nfqpolicy_invalid_dropped_total), so an install leaves the chain as
	// it is when it is intact instead of flushing (and zeroing) it.
	ChainInvalid = Prefix + "INVALID"
	// JumpComment tags our jumps from the built-in chains, so that they are
	// recognisable in iptables-save output by a human as well.
	JumpComment = "nfqpolicy"
)

// SetName is the ipset of local pod addresses of a family.
func SetName(f Family) string {
	if f == IPv6 {
		return Prefix + "LOCAL6"
	}
	return Prefix + "LOCAL4"
}

// NetSetName is the ipset (hash:net) of the local node's pod CIDRs of a
// family.
func NetSetName(f Family) string {
	if f == IPv6 {
		return Prefix + "PODNET6"
	}
	return Prefix + "PODNET4"
}

// jump is one rule we insert into a built-in chain.
type jump struct{ from, to string }

// jumps are our entry points. Both run after nat PREROUTING (DNAT) and
// before nat POSTROUTING (SNAT), so the engine sees the real pod addresses
// of both ends:
//   - FORWARD: routed traffic from or to a local pod (pod to pod on this
//     node, pod to remote, remote to pod, NodePorts DNATed to a local pod);
//   - INPUT: traffic a local pod sends to the node itself (egress policy
//     applies to it too, e.g. a pod talking to a hostNetwork service).
//
// OUTPUT is deliberately not diverted: what the node sends is never policed
// on its egress side (the node is not a pod), and its traffic to its own
// pods is always allowed on their ingress side (kubelet probes; the engine's
// NodeLocal), so queueing it could only cost, never deny. Its traffic to
// remote pods is decided by the remote node's agent.
var jumps = [...]jump{{"FORWARD", ChainForward}, {"INPUT", ChainInput}}

// DenyAction is what happens to a packet the engine denied.
type DenyAction int

// Deny actions.
const (
	// Drop drops silently: the client times out.
	Drop DenyAction = iota
	// Reject answers TCP with a reset and anything else with an ICMP port
	// unreachable, so clients fail fast (ECONNREFUSED).
	Reject
)

// ParseDenyAction reads the --deny-action flag.
func ParseDenyAction(s string) (DenyAction, error) {
	switch s {
	case "drop":
		return Drop, nil
	case "reject":
		return Reject, nil
	}
	return Drop, fmt.Errorf("deny action %q: want drop or reject", s)
}

func (d DenyAction) String() string {
	if d == Reject {
		return "reject"
	}
	return "drop"
}

// kubeProxyMarks are the packet mark bits kube-proxy owns: 0x4000
// (KUBE-MARK-MASQ, "SNAT this") and 0x8000 (KUBE-MARK-DROP). Our bits must
// not touch them, or we would masquerade or drop other people's packets.
const kubeProxyMarks = 0x4000 | 0x8000

// Marks are the packet/connection mark bits we own: Mask selects them,
// Allow and Deny are the two values we write under it.
type Marks struct {
	Allow, Deny, Mask uint32
}

// DefaultMarks leaves kube-proxy's bits (0x4000, 0x8000) and the low byte
// (often used by routing daemons) alone.
var DefaultMarks = Marks{Allow: 0x10000, Deny: 0x20000, Mask: 0x30000}

// String renders the marks the way ParseMarks reads them.
func (m Marks) String() string {
	return fmt.Sprintf("%#x,%#x/%#x", m.Allow, m.Deny, m.Mask)
}

// ParseMarks reads "ALLOW,DENY/MASK", e.g. "0x10000,0x20000/0x30000", and
// validates it.
func ParseMarks(s string) (Marks, error) {
	vals, mask, ok := strings.Cut(s, "/")
	if !ok {
		return Marks{}, fmt.Errorf("mark bits %q: want ALLOW,DENY/MASK, e.g. %s", s, DefaultMarks)
	}
	allow, deny, ok := strings.Cut(vals, ",")
	if !ok {
		return Marks{}, fmt.Errorf("mark bits %q: want ALLOW,DENY/MASK, e.g. %s", s, DefaultMarks)
	}
	var m Marks
	for _, p := range []struct {
		name string
		s    string
		dst  *uint32
	}{{"allow", allow, &m.Allow}, {"deny", deny, &m.Deny}, {"mask", mask, &m.Mask}} {
		v, err := strconv.ParseUint(strings.TrimSpace(p.s), 0, 32)
		if err != nil {
			return Marks{}, fmt.Errorf("mark bits %q: %s value: %w", s, p.name, err)
		}
		*p.dst = uint32(v)
	}
	if err := m.Validate(); err != nil {
		return Marks{}, err
	}
	return m, nil
}

// Validate refuses marks that cannot tell allow from deny from unmarked, or
// that would collide with kube-proxy's bits.
func (m Marks) Validate() error {
	switch {
	case m.Mask == 0:
		return fmt.Errorf("mark bits %s: mask is zero", m)
	case m.Mask&kubeProxyMarks != 0:
		return fmt.Errorf("mark bits %s: mask overlaps kube-proxy's marks 0x4000 (masquerade) and 0x8000 (drop)", m)
	case m.Allow == 0 || m.Deny == 0:
		return fmt.Errorf("mark bits %s: allow and deny values must be non-zero (zero is an unmarked packet)", m)
	case m.Allow&^m.Mask != 0 || m.Deny&^m.Mask != 0:
		return fmt.Errorf("mark bits %s: allow and deny values must lie inside the mask", m)
	case m.Allow == m.Deny:
		return fmt.Errorf("mark bits %s: allow and deny values are equal", m)
	}
	return nil
}

// Config is what the rules depend on.
type Config struct {
	Marks Marks
	// QueueBase is the first NFQUEUE number; Queues how many consecutive
	// queues the kernel balances new flows over (by flow hash, so all
	// packets of one flow land in the same queue).
	QueueBase uint16
	Queues    uint16
	// FailOpen adds --queue-bypass: new flows pass while no agent listens.
	// Without it they are dropped by the kernel; never silently allowed.
	FailOpen bool
	Deny     DenyAction
	// PassInvalid leaves packets conntrack marks INVALID to the rest of
	// the filter table instead of dropping them (--invalid pass): for
	// nodes with asymmetric routing, where conntrack sees one direction of
	// a connection only and marks legitimate packets INVALID.
	PassInvalid bool
}

// Validate checks the parts of c the rules cannot be rendered without.
func (c Config) Validate() error {
	if err := c.Marks.Validate(); err != nil {
		return err
	}
	if c.Queues == 0 {
		return fmt.Errorf("queues: need at least one")
	}
	if int(c.QueueBase)+int(c.Queues)-1 > 65535 {
		return fmt.Errorf("queues %d..%d: queue numbers end at 65535", c.QueueBase, int(c.QueueBase)+int(c.Queues)-1)
	}
	return nil
}

func mark(v, mask uint32) string { return fmt.Sprintf("%#x/%#x", v, mask) }

// queueTarget is the NFQUEUE target with its options.
func (c Config) queueTarget() string {
	var b strings.Builder
	b.WriteString("-j NFQUEUE")
	if c.Queues > 1 {
		fmt.Fprintf(&b, " --queue-balance %d:%d", c.QueueBase, int(c.QueueBase)+int(c.Queues)-1)
	} else {
		fmt.Fprintf(&b, " --queue-num %d", c.QueueBase)
	}
	if c.FailOpen {
		b.WriteString(" --queue-bypass")
	}
	return b.String()
}

// ndTypes are ICMPv6 router/neighbour discovery (RS, RA, NS, NA, redirect):
// without them IPv6 stops working altogether, so no policy may stop them.
var ndTypes = [...]int{133, 134, 135, 136, 137}

// ChainRules returns the rules of our chains for one family, in iptables-
// restore syntax (without table header, chain declarations and COMMIT).
//
// The layout, per entry chain (FORWARD shown):
//
//  1. connmark == allow: ACCEPT. Every packet of an allowed flow after the
//     first stops here, in the kernel. This rule stays installed while the
//     agent is down (only cleanup removes it), so established flows survive
//     agent restarts and crashes.
//  2. mark == allow: the first packet, re-injected by the agent with
//     NF_REPEAT and the allow mark (a verdict cannot set the connmark on
//     this kernel): NFQPOLICY-ALLOW saves it into the connmark, clears our
//     packet bits and accepts.
//  3. mark == deny: NFQPOLICY-DENY drops or rejects. The deny value is not
//     saved into the connmark on purpose: a dropped packet's conntrack
//     entry is never confirmed (confirmation happens after the filter
//     hooks), so there is no connection to carry the mark; each
//     retransmission is a fresh NEW packet and the engine's cache makes its
//     verdict cheap. It also means a policy change that allows the flow
//     needs no connmark to be cleared.
//  4. (IPv6) ICMPv6 neighbour discovery: RETURN, never queued.
//  5. Packets conntrack marks INVALID touching a local pod or the local
//     pod CIDRs: NFQPOLICY-INVALID, which drops and counts them (unless
//     PassInvalid). They are never NEW, so rule 6 would not queue them and
//     nothing of ours would decide them: a malformed first packet (bad
//     TCP header, flags or checksum, UDP length) would reach the pod
//     unpoliced. Legitimate INVALID packets exist: TCP segments outside
//     conntrack's window (retransmissions after a long stall; with
//     net.netfilter.nf_conntrack_tcp_be_liberal=1 the kernel stops
//     marking those), and ICMP errors about no known connection. Dropping
//     them costs a retransmission, never a connection, and kube-proxy
//     (KUBE-FORWARD) drops the same packets unless tcp_be_liberal is set.
//     A TCP segment of a connection whose conntrack entry expired is not
//     INVALID (nf_conntrack_tcp_loose picks it up as NEW, so it is
//     queued and decided). An untracked packet (ND, notrack) is not
//     INVALID either.
//  6. NEW flows touching a local pod address (ipset LOCAL), then NEW flows
//     touching the local node's pod CIDRs (ipset PODNET): NFQUEUE. The
//     second pair catches pods created since the agent's last compile,
//     which the engine denies as unknown pods until they are synced; on a
//     node without spec.podCIDR(s) that set is empty. Packets of
//     flows that are not NEW and carry no mark (flows that predate the
//     agent, or that were let through by --queue-bypass) are not ours to
//     judge here; recheck of established flows is the conntrack package's
//     job.
//
// With no agent bound to the queue the kernel drops what rule 5 queues,
// unless FailOpen added --queue-bypass, in which case it is accepted
// unmarked. The agent additionally asks the kernel to accept rather than
// drop when its queue overflows only with FailOpen.
func ChainRules(c Config, f Family) []string {
	m := c.Marks
	sets := []string{SetName(f), NetSetName(f)}
	entry := func(chain string, dirs ...string) []string {
		r := []string{
			fmt.Sprintf("-A %s -m connmark --mark %s -j ACCEPT", chain, mark(m.Allow, m.Mask)),
			fmt.Sprintf("-A %s -m mark --mark %s -j %s", chain, mark(m.Allow, m.Mask), ChainAllow),
			fmt.Sprintf("-A %s -m mark --mark %s -j %s", chain, mark(m.Deny, m.Mask), ChainDeny),
		}
		if f == IPv6 {
			for _, t := range ndTypes {
				r = append(r, fmt.Sprintf("-A %s -p ipv6-icmp -m icmp6 --icmpv6-type %d -j RETURN", chain, t))
			}
		}
		for _, set := range sets {
			for _, d := range dirs {
				if !c.PassInvalid {
					r = append(r, fmt.Sprintf("-A %s -m conntrack --ctstate INVALID -m set --match-set %s %s -j %s", chain, set, d, ChainInvalid))
				}
			}
		}
		for _, set := range sets {
			for _, d := range dirs {
				r = append(r, fmt.Sprintf("-A %s -m conntrack --ctstate NEW -m set --match-set %s %s %s", chain, set, d, c.queueTarget()))
			}
		}
		return r
	}
	var r []string
	r = append(r, entry(ChainForward, "dst", "src")...)
	r = append(r, entry(ChainInput, "src")...)
	r = append(r,
		fmt.Sprintf("-A %s -j CONNMARK --set-xmark %s", ChainAllow, mark(m.Allow, m.Mask)),
		// Clear our packet bits so the first packet leaves exactly like
		// the later ones (which never get them), and nothing downstream
		// (fwmark routing, other tools) sees bits it might interpret.
		fmt.Sprintf("-A %s -j MARK --set-xmark %s", ChainAllow, mark(0, m.Mask)),
		fmt.Sprintf("-A %s -j ACCEPT", ChainAllow),
	)
	r = append(r, invalidRules...)
	switch c.Deny {
	case Reject:
		unreach := "icmp-port-unreachable"
		if f == IPv6 {
			unreach = "icmp6-port-unreachable"
		}
		r = append(r,
			fmt.Sprintf("-A %s -p tcp -j REJECT --reject-with tcp-reset", ChainDeny),
			fmt.Sprintf("-A %s -j REJECT --reject-with %s", ChainDeny, unreach),
		)
	default:
		r = append(r, fmt.Sprintf("-A %s -j DROP", ChainDeny))
	}
	return r
}

// ourChains are declared (and therefore flushed) on every install.
var ourChains = [...]string{ChainForward, ChainInput, ChainAllow, ChainDeny}

// invalidRules are ChainInvalid's rules, with or without PassInvalid (the
// chain is then not jumped to).
var invalidRules = []string{"-A " + ChainInvalid + " -j DROP"}

// RenderInstall returns the iptables-restore --noflush input that installs
// our chains for family f, given the current iptables-save -t filter output
// of that family. Declaring a chain flushes it, so the chain contents are
// replaced atomically; NFQPOLICY-INVALID is declared and filled only when
// save does not show it intact, so that its drop counter keeps counting
// across installs; a jump is inserted at the top of its built-in chain
// where save shows none, and moved there where it is not the first rule.
func RenderInstall(c Config, f Family, save string) string {
	var b strings.Builder
	b.WriteString("*filter\n")
	existing := parseSave(save)
	keepInvalid := slices.Equal(existing.rules[ChainInvalid], invalidRules)
	for _, ch := range ourChains {
		fmt.Fprintf(&b, ":%s - [0:0]\n", ch)
	}
	if !keepInvalid {
		fmt.Fprintf(&b, ":%s - [0:0]\n", ChainInvalid)
	}
	for _, r := range ChainRules(c, f) {
		if keepInvalid && strings.HasPrefix(r, "-A "+ChainInvalid+" ") {
			continue
		}
		b.WriteString(r)
		b.WriteByte('\n')
	}
	for _, j := range jumps {
		if existing.jumpFirst(j.from, j.to) {
			continue
		}
		// Our jump must be the chain's first rule: a rule above it (e.g.
		// kube-proxy's KUBE-FORWARD, prepended when kube-proxy starts after
		// us) accepts masquerade-marked and related packets before we
		// decide them. So a jump that is there but not first moves up.
		for _, r := range existing.jumpRules {
			if fields := strings.Fields(r); fields[1] == j.from && target(fields) == j.to {
				b.WriteString("-D")
				b.WriteString(strings.TrimPrefix(r, "-A"))
				b.WriteByte('\n')
			}
		}
		fmt.Fprintf(&b, "-I %s 1 -m comment --comment %s -j %s\n", j.from, JumpComment, j.to)
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// RenderCleanup returns the iptables-restore --noflush input that removes
// every jump to a chain of ours, then our chains, given the current
// iptables-save -t filter output; "" when there is nothing of ours.
func RenderCleanup(save string) string {
	s := parseSave(save)
	if len(s.ours) == 0 && len(s.jumpRules) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteString("*filter\n")
	for _, r := range s.jumpRules {
		// The rule spec exactly as saved, so -D matches it.
		b.WriteString("-D")
		b.WriteString(strings.TrimPrefix(r, "-A"))
		b.WriteByte('\n')
	}
	// Flush all before deleting any: our chains jump to each other.
	for _, ch := range s.ours {
		fmt.Fprintf(&b, "-F %s\n", ch)
	}
	for _, ch := range s.ours {
		fmt.Fprintf(&b, "-X %s\n", ch)
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// saved is what we need to know about iptables-save -t filter output.
type saved struct {
	ours      []string            // our chains, in save order
	rules     map[string][]string // the rules of our chains, as saved
	jumpRules []string            // "-A CHAIN ... -j NFQPOLICY-x" rules in chains not ours
	first     map[string]string   // the first rule of each chain not ours
}

func parseSave(save string) saved {
	var s saved
	for line := range strings.Lines(save) {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, ":"+Prefix):
			name, _, _ := strings.Cut(line[1:], " ")
			s.ours = append(s.ours, name)
		case strings.HasPrefix(line, "-A "):
			fields := strings.Fields(line)
			if len(fields) < 2 {
				continue
			}
			if strings.HasPrefix(fields[1], Prefix) {
				if s.rules == nil {
					s.rules = map[string][]string{}
				}
				s.rules[fields[1]] = append(s.rules[fields[1]], line)
				continue
			}
			if _, ok := s.first[fields[1]]; !ok {
				if s.first == nil {
					s.first = map[string]string{}
				}
				s.first[fields[1]] = line
			}
			if t := target(fields); strings.HasPrefix(t, Prefix) {
				s.jumpRules = append(s.jumpRules, line)
			}
		}
	}
	return s
}

// target returns the argument of -j (or -g) in a saved rule's fields.
func target(fields []string) string {
	for i := 0; i+1 < len(fields); i++ {
		if fields[i] == "-j" || fields[i] == "-g" {
			return fields[i+1]
		}
	}
	return ""
}

func (s saved) hasJump(from, to string) bool {
	for _, r := range s.jumpRules {
		fields := strings.Fields(r)
		if fields[1] == from && target(fields) == to {
			return true
		}
	}
	return false
}

// jumpFirst reports whether the first rule of chain from jumps to our
// chain to.
func (s saved) jumpFirst(from, to string) bool {
	r, ok := s.first[from]
	return ok && target(strings.Fields(r)) == to
}
