package flowlog

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/nfqpolicy/nfqpolicy/filter"
	"github.com/rs/zerolog"
)

// Record is what the verdict path hands over for one decided flow. It is a
// plain value with no strings or slices of its own so that taking one
// allocates nothing; the Ruleset pointer inside the Verdict keeps the
// compiled state that decided the flow alive until the record is rendered,
// so names and reasons are those of the policies that actually applied.
type Record struct {
	Time    int64 // unix nanoseconds
	Seq     uint64
	Flow    filter.Flow
	Verdict filter.Verdict
	Latency time.Duration
	// Lost and RateLimited count the records dropped (buffer full) and
	// suppressed (per-source rate limit) since the previous record that
	// made it into the same buffer, so that a reader sees every gap.
	Lost        uint64
	RateLimited uint64
}

// Mode is the agent's enforcement mode. Staged (audit-mode) policies are
// reported per flow (audit_verdict) whatever the mode; Mode says whether
// the enforced verdict was applied at all.
type Mode uint8

const (
	// Enforce: the verdict was applied to the packet.
	Enforce Mode = iota
	// Audit: every flow was let through; the verdict is only reported.
	Audit
)

func (m Mode) String() string {
	if m == Audit {
		return "audit"
	}
	return "enforce"
}

// ParseMode reads "enforce" or "audit".
func ParseMode(s string) (Mode, error) {
	switch s {
	case "enforce", "":
		return Enforce, nil
	case "audit":
		return Audit, nil
	}
	return 0, fmt.Errorf("flowlog: unknown mode %q (want enforce or audit)", s)
}

// Renderer turns records into JSON fields. The zero value renders
// everything the record holds except pod labels.
type Renderer struct {
	Node string
	// Run names this run of the agent (NewRunID): sequence numbers start
	// again at every run, so a restart is not mistaken for a gap.
	Run  string
	Mode Mode
	// Labels adds each side's pod labels (src_labels, dst_labels).
	Labels bool
}

// NewRunID returns a name for one run of the agent: its start time and
// random bits, so that two runs never share one even on a node whose
// clock went back.
func NewRunID() string {
	var b [4]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux
	return time.Now().UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b[:])
}

// ProtoName names the IP protocols the engine tells apart; others are
// rendered as their number.
func ProtoName(p uint8) string {
	switch p {
	case filter.ProtoTCP:
		return "tcp"
	case filter.ProtoUDP:
		return "udp"
	case filter.ProtoSCTP:
		return "sctp"
	case filter.ProtoICMP:
		return "icmp"
	case filter.ProtoICMPv6:
		return "icmpv6"
	}
	return strconv.Itoa(int(p))
}

// Family is 4 or 6 for the flow's address family, 0 if it has no address.
func Family(a netip.Addr) int {
	switch {
	case a.Is4() || a.Is4In6():
		return 4
	case a.Is6():
		return 6
	}
	return 0
}

// PodNames returns the source (egress side) and destination (ingress side)
// pod names of a verdict, "" when a side is not a pod or the verdict has no
// Ruleset.
func PodNames(v *filter.Verdict) (src, dst string) {
	if v.Ruleset == nil {
		return "", ""
	}
	return v.Ruleset.PodName(v.Egress.Pod), v.Ruleset.PodName(v.Ingress.Pod)
}

// AuditVerdict is "would-allow" or "would-deny": the verdict with staged
// policies enforced too.
func AuditVerdict(v *filter.Verdict) string {
	if v.Audit.Allow {
		return "would-allow"
	}
	return "would-deny"
}

// Reason is the one-line human explanation of flow f's verdict, "" without
// a Ruleset. The flow lets it name an address that belongs to no known pod.
func Reason(f filter.Flow, v *filter.Verdict) string {
	if v.Ruleset == nil {
		return ""
	}
	return v.Ruleset.DescribeFlow(f, *v)
}

// Fields appends the record's fields to a zerolog event.
func (rd *Renderer) Fields(e *zerolog.Event, r *Record) *zerolog.Event {
	v := &r.Verdict
	// Stack scratch for the time and addresses: rendering allocates
	// nothing for records whose Ruleset renders without allocating.
	var scratch [64]byte
	e = e.Bytes("time", time.Unix(0, r.Time).UTC().AppendFormat(scratch[:0], time.RFC3339Nano))
	if rd.Node != "" {
		e = e.Str("node", rd.Node)
	}
	if rd.Run != "" {
		e = e.Str("run", rd.Run)
	}
	verdict := "deny"
	if v.Allow {
		verdict = "allow"
	}
	e = e.Uint64("seq", r.Seq).Str("verdict", verdict)
	e = e.Str("mode", rd.Mode.String())
	// The audit verdict is what the flow would get with staged policies
	// enforced; it is only meaningful when some policy is staged.
	if v.Ruleset != nil && v.Ruleset.HasStaged() {
		e = e.Str("audit_verdict", AuditVerdict(v))
		if v.AuditDiffers() {
			e = e.Bool("audit_differs", true).
				Strs("staged_policies", v.Ruleset.StagedCause(*v)).
				Str("audit_reason", v.Ruleset.DescribeAudit(*v))
		}
	}
	f := &r.Flow
	e = e.Str("proto", ProtoName(f.Proto)).Int("family", Family(f.Src)).
		Bytes("src", f.Src.AppendTo(scratch[:0])).Uint16("src_port", f.SrcPort).
		Bytes("dst", f.Dst.AppendTo(scratch[:0])).Uint16("dst_port", f.DstPort)
	src, dst := PodNames(v)
	if src != "" {
		e = e.Str("src_pod", src).Str("src_namespace", namespaceOf(src))
		if l := v.Ruleset.PodLabels(v.Egress.Pod); rd.Labels && len(l) > 0 {
			e = e.Dict("src_labels", labelDict(l))
		}
	}
	if dst != "" {
		e = e.Str("dst_pod", dst).Str("dst_namespace", namespaceOf(dst))
		if l := v.Ruleset.PodLabels(v.Ingress.Pod); rd.Labels && len(l) > 0 {
			e = e.Dict("dst_labels", labelDict(l))
		}
	}
	if reason := Reason(r.Flow, v); reason != "" {
		e = e.Str("reason", reason)
	}
	e = e.Dict("egress", sideDict(v.Ruleset, &v.Egress, "egress")).
		Dict("ingress", sideDict(v.Ruleset, &v.Ingress, "ingress")).
		Float64("latency_us", float64(r.Latency)/float64(time.Microsecond)).
		Bool("cached", v.Cached)
	if r.Lost > 0 {
		e = e.Uint64("lost", r.Lost)
	}
	if r.RateLimited > 0 {
		e = e.Uint64("rate_limited", r.RateLimited)
	}
	return e
}

// namespaceOf returns the namespace of "ns/name"; a separate field lets
// log queries select a namespace without parsing pod names.
func namespaceOf(pod string) string {
	ns, _, _ := strings.Cut(pod, "/")
	return ns
}

func labelDict(l map[string]string) *zerolog.Event {
	d := zerolog.Dict()
	for k, v := range l {
		d = d.Str(k, v)
	}
	return d
}

// sideDict renders one side: its decision and, when a rule decided, the
// tier, policy, rule (index, and name for a ClusterNetworkPolicy rule),
// action and peer; when an Admin Pass rule sent the side on to the lower
// tiers, that rule as "pass".
func sideDict(rs *filter.Ruleset, s *filter.Side, direction string) *zerolog.Event {
	d := zerolog.Dict().Str("decision", s.Decision.String())
	if s.Policy >= 0 && s.Decision.ByRule() {
		if rs != nil {
			if ref, ok := rs.DecidingRule(*s, direction); ok {
				d = d.Str("tier", ref.Tier).Str("policy", ref.Policy).Str("action", ref.Action)
				if ref.Name != "" {
					d = d.Str("rule_name", ref.Name)
				}
			}
		}
		d = d.Int32("policy_index", s.Policy).Int16("rule", s.Rule).Int16("peer", s.Peer)
	}
	if s.Pass != 0 && rs != nil {
		if ref, ok := rs.PassRule(*s); ok {
			p := zerolog.Dict().Str("tier", ref.Tier).Str("policy", ref.Policy).Int("rule", ref.Index)
			if ref.Name != "" {
				p = p.Str("rule_name", ref.Name)
			}
			d = d.Dict("pass", p)
		}
	}
	return d
}

// Entry is one flow-log line as read back (audit report, tests, trace
// clients). Lines without a verdict are summaries (lost and rate_limited
// counts that no later record could carry).
type Entry struct {
	Time           time.Time         `json:"time"`
	Node           string            `json:"node,omitempty"`
	Run            string            `json:"run,omitempty"`
	Seq            uint64            `json:"seq"`
	Verdict        string            `json:"verdict,omitempty"`
	Mode           string            `json:"mode,omitempty"`
	AuditVerdict   string            `json:"audit_verdict,omitempty"`
	AuditDiffers   bool              `json:"audit_differs,omitempty"`
	StagedPolicies []string          `json:"staged_policies,omitempty"`
	AuditReason    string            `json:"audit_reason,omitempty"`
	Proto          string            `json:"proto,omitempty"`
	Family         int               `json:"family,omitempty"`
	Src            string            `json:"src,omitempty"`
	SrcPort        uint16            `json:"src_port,omitempty"`
	Dst            string            `json:"dst,omitempty"`
	DstPort        uint16            `json:"dst_port,omitempty"`
	SrcPod         string            `json:"src_pod,omitempty"`
	SrcNamespace   string            `json:"src_namespace,omitempty"`
	DstPod         string            `json:"dst_pod,omitempty"`
	DstNamespace   string            `json:"dst_namespace,omitempty"`
	SrcLabels      map[string]string `json:"src_labels,omitempty"`
	DstLabels      map[string]string `json:"dst_labels,omitempty"`
	Reason         string            `json:"reason,omitempty"`
	Egress         *SideEntry        `json:"egress,omitempty"`
	Ingress        *SideEntry        `json:"ingress,omitempty"`
	LatencyUS      float64           `json:"latency_us,omitempty"`
	Cached         bool              `json:"cached,omitempty"`
	Lost           uint64            `json:"lost,omitempty"`
	RateLimited    uint64            `json:"rate_limited,omitempty"`
	Message        string            `json:"message,omitempty"`
	// LastSeq (on a run's closing line, and on an unclean-end line) is
	// the last sequence number of the run; UncleanRun names a run that
	// ended without closing its log. Its Lost and RateLimited count what
	// that run lost; LostUnknown says nobody could count it (no state
	// file).
	LastSeq     uint64 `json:"last_seq,omitempty"`
	UncleanRun  string `json:"unclean_run,omitempty"`
	LostUnknown bool   `json:"lost_unknown,omitempty"`
}

// SideEntry is the decision of one side as logged.
type SideEntry struct {
	Decision string `json:"decision"`
	// Tier is the tier of the deciding rule's policy: Admin or Baseline
	// (a ClusterNetworkPolicy), NetworkPolicy.
	Tier        string `json:"tier,omitempty"`
	Policy      string `json:"policy,omitempty"`
	Action      string `json:"action,omitempty"` // Allow (NetworkPolicy), Accept, Deny, Pass
	RuleName    string `json:"rule_name,omitempty"`
	PolicyIndex *int32 `json:"policy_index,omitempty"`
	Rule        *int16 `json:"rule,omitempty"`
	Peer        *int16 `json:"peer,omitempty"`
	// Pass is the Admin Pass rule that sent the side on to the lower tiers.
	Pass *PassEntry `json:"pass,omitempty"`
}

// PassEntry names an Admin tier Pass rule.
type PassEntry struct {
	Tier     string `json:"tier"`
	Policy   string `json:"policy"`
	Rule     int    `json:"rule"`
	RuleName string `json:"rule_name,omitempty"`
}

// IsSummary reports whether the line is a loss summary rather than a flow.
func (e *Entry) IsSummary() bool { return e.Verdict == "" }
