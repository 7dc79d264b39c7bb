package filter

import (
	"net/netip"
)

// IP protocol numbers the engine tells apart.
const (
	ProtoICMP   uint8 = 1
	ProtoTCP    uint8 = 6
	ProtoUDP    uint8 = 17
	ProtoICMPv6 uint8 = 58
	ProtoSCTP   uint8 = 132
)

// Flow is what a verdict depends on, read from the first packet of a
// connection. Ports are zero for protocols without them (ICMP).
type Flow struct {
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
	Proto            uint8
}

// Decision says how one side (the source's egress or the destination's
// ingress) of a flow was decided.
type Decision uint8

// The allowing decisions come first, so that Allowed is one comparison.
const (
	// NotPoliced: the endpoint on this side is not a pod (external address,
	// node, hostNetwork pod), so nothing on this side restricts the flow.
	NotPoliced Decision = iota
	// NotIsolated: the pod is selected by no policy for this direction
	// (or only by ClusterNetworkPolicies none of whose rules matched).
	NotIsolated
	// AllowedByRule: a rule of a NetworkPolicy that isolates the pod
	// allowed it; Policy, Rule and Peer name the first rule that did.
	AllowedByRule
	// NodeLocal: traffic from the pod's own node (kubelet probes) skips the
	// ingress check.
	NodeLocal
	// AdminAccepted: an Admin tier ClusterNetworkPolicy rule accepted the
	// flow; Policy, Rule and Peer name it. Final for this side.
	AdminAccepted
	// BaselineAccepted, BaselinePassed: a Baseline tier
	// ClusterNetworkPolicy rule accepted the flow, or passed it to the
	// default, which allows (no NetworkPolicy isolates the pod in this
	// direction); Policy, Rule and Peer name it.
	BaselineAccepted
	BaselinePassed
	// DeniedIsolated: the pod is isolated for this direction and no rule of
	// the policies that isolate it allowed the flow (default deny).
	DeniedIsolated
	// Malformed: the packet could not be decoded; it is denied.
	Malformed
	// UnknownPod: the endpoint on this side is in a node's pod CIDR but is
	// no pod the Ruleset knows (created after the last compile): its
	// policies cannot be known, so the flow is denied until it is synced.
	// Side.Policy indexes the range (Ruleset.PodCIDR).
	UnknownPod
	// AdminDenied, BaselineDenied: a ClusterNetworkPolicy rule of that
	// tier denied the flow; Policy, Rule and Peer name it. Final.
	AdminDenied
	BaselineDenied
)

func (d Decision) String() string {
	switch d {
	case NotPoliced:
		return "not-policed"
	case NotIsolated:
		return "not-isolated"
	case AllowedByRule:
		return "allowed-by-rule"
	case NodeLocal:
		return "node-local"
	case DeniedIsolated:
		return "denied-isolated"
	case Malformed:
		return "malformed"
	case UnknownPod:
		return "unknown-pod"
	case AdminAccepted:
		return "admin-accept"
	case AdminDenied:
		return "admin-deny"
	case BaselineAccepted:
		return "baseline-accept"
	case BaselineDenied:
		return "baseline-deny"
	case BaselinePassed:
		return "baseline-pass"
	}
	return "unknown"
}

// Allowed reports whether the side lets the flow through.
func (d Decision) Allowed() bool { return d <= BaselinePassed }

// ByRule reports whether a rule decided the side, so that Side.Policy,
// Rule and Peer name it: a NetworkPolicy rule that allowed the flow or a
// ClusterNetworkPolicy rule of either tier.
func (d Decision) ByRule() bool {
	switch d {
	case AllowedByRule, AdminAccepted, AdminDenied, BaselineAccepted, BaselineDenied, BaselinePassed:
		return true
	}
	return false
}

// Tier names the policy tier that decided: "Admin", "NetworkPolicy",
// "Baseline", or "" when no tier did (the side is not a pod, not isolated,
// node-local, unknown or malformed).
func (d Decision) Tier() string {
	switch d {
	case AdminAccepted, AdminDenied:
		return "Admin"
	case AllowedByRule, DeniedIsolated:
		return "NetworkPolicy"
	case BaselineAccepted, BaselineDenied, BaselinePassed:
		return "Baseline"
	}
	return ""
}

// Side is the decision of one direction together with what made it. All
// fields are indexes into the Ruleset that produced the verdict so that a
// decision allocates nothing; Ruleset.Describe renders them.
type Side struct {
	Decision Decision
	// Pass is set when an Admin tier Pass rule sent this side on to the
	// NetworkPolicy tier: 1 + its index in the Ruleset's Pass rules
	// (Ruleset.PassRule names it), 0 when none did. It sits in the
	// padding after Decision, so a Side, and the verdicts the cache
	// copies, stay 16 bytes.
	Pass uint16
	// Pod is the index of the pod this side polices, -1 when none.
	Pod int32
	// Policy, Rule and Peer name the policy (Ruleset index: NetworkPolicy
	// or ClusterNetworkPolicy), rule and peer index within it that decided
	// the flow; -1 when no rule did (Decision.ByRule). Peer is -1 too when
	// the rule has no peers (it matches every peer).
	//
	// For UnknownPod, Policy is instead the index of the node pod CIDR the
	// address is in (Ruleset.PodCIDR names it): a field of its own would
	// grow every verdict the hot path copies, for a rare decision.
	Policy int32
	Rule   int16
	Peer   int16
}

// Verdict is the decision for a flow: allowed only if the source's egress
// and the destination's ingress both allow it.
type Verdict struct {
	Allow   bool
	Cached  bool // answered by the flow cache
	Egress  Side // the source pod's egress
	Ingress Side // the destination pod's ingress
	// Audit is the verdict with staged (audit-mode) policies enforced too.
	// It equals the enforced verdict unless a staged policy changes the
	// outcome: then the flow "would be denied" or "would be allowed".
	Audit AuditVerdict
	// Ruleset is the compiled state that decided; its Describe renders
	// the indexes above. A pointer, so carrying it costs no allocation.
	Ruleset *Ruleset
}

// AuditVerdict is a verdict computed with staged policies enforced.
type AuditVerdict struct {
	Allow   bool
	Egress  Side
	Ingress Side
}

// AuditDiffers reports whether staged policies change the outcome.
func (v Verdict) AuditDiffers() bool { return v.Audit.Allow != v.Allow }
