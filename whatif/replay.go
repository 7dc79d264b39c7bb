package whatif

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/nfqpolicy/nfqpolicy/cluster"
	"github.com/nfqpolicy/nfqpolicy/filter"
	"github.com/nfqpolicy/nfqpolicy/probe"
)

// State is one side of the comparison: a cluster and its compiled rules.
type State struct {
	Cluster *cluster.Cluster
	Rules   *filter.Ruleset
	index   *cluster.Index
	path    *probe.Path
}

// NewState compiles c.
func NewState(c *cluster.Cluster) (*State, error) {
	rs, err := filter.Compile(c)
	if err != nil {
		return nil, err
	}
	return &State{Cluster: c, Rules: rs, index: cluster.NewIndex(c), path: probe.NewPath(rs, 0)}, nil
}

// Change is one flow whose verdict the proposed change flips.
type Change struct {
	*Flow
	Before, After string // "allow" or "deny"
	// Reason is the new verdict's reason; BeforeReason the current one.
	Reason, BeforeReason string
	// Policies are the changed policies that decide the flip (the policy
	// that now allows or denies it, or the one whose removal does); empty
	// when no changed policy is named (the change moved pods or labels).
	Policies []string
}

// Gone is a recorded flow that cannot be replayed: a pod the agent logged
// no longer exists (or no longer has the address), now or after the
// change. Its verdict is not guessed.
type Gone struct {
	*Flow
	Why string
}

// Result is the outcome of a replay.
type Result struct {
	Replayed int
	Changes  []Change
	Gone     []Gone
}

// Replay decides every flow of log against before and after, through the
// agent's decode and decide path (probe.Path), and returns the flows whose
// verdict differs and those whose pods are gone. changed names the
// policies the change applies or deletes (Ruleset.PolicyName's form:
// "ns/name", "ClusterNetworkPolicy/name").
func Replay(log *Log, before, after *State, changed map[string]bool) (*Result, error) {
	res := &Result{}
	for _, f := range log.Flows {
		if why := gone(f, before.index, "no longer exists"); why != "" {
			res.Gone = append(res.Gone, Gone{f, why})
			continue
		}
		if why := gone(f, after.index, "is deleted by the change"); why != "" {
			res.Gone = append(res.Gone, Gone{f, why})
			continue
		}
		res.Replayed++
		vb, err := before.path.Decide(f.Src, f.Dst, int(f.Port), f.Proto, false)
		if err != nil {
			return nil, fmt.Errorf("replay %s -> %s: %w", f.Src, f.Dst, err)
		}
		va, err := after.path.Decide(f.Src, f.Dst, int(f.Port), f.Proto, false)
		if err != nil {
			return nil, fmt.Errorf("replay %s -> %s: %w", f.Src, f.Dst, err)
		}
		if vb.Allow == va.Allow {
			continue
		}
		fl := filter.Flow{Src: f.Src, Dst: f.Dst, DstPort: f.Port, Proto: f.Proto}
		res.Changes = append(res.Changes, Change{
			Flow:         f,
			Before:       verdictName(vb.Allow),
			After:        verdictName(va.Allow),
			Reason:       after.Rules.DescribeFlow(fl, va),
			BeforeReason: before.Rules.DescribeFlow(fl, vb),
			Policies:     culprits(before.Rules, vb, after.Rules, va, changed),
		})
	}
	return res, nil
}

func verdictName(allow bool) string {
	if allow {
		return "allow"
	}
	return "deny"
}

// gone says why a flow's logged pods are not in ix (or no longer have the
// logged address), "" when both are there.
func gone(f *Flow, ix *cluster.Index, missing string) string {
	var why []string
	for _, s := range []struct {
		side, pod string
		addr      netip.Addr
	}{{"source", f.SrcPod, f.Src}, {"destination", f.DstPod, f.Dst}} {
		if s.pod == "" {
			continue
		}
		ns, name, _ := strings.Cut(s.pod, "/")
		p, ok := ix.Pod(ns, name)
		switch {
		case !ok:
			why = append(why, fmt.Sprintf("%s pod %s %s", s.side, s.pod, missing))
		case p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed:
			why = append(why, fmt.Sprintf("%s pod %s has terminated", s.side, s.pod))
		case !hasAddr(p, s.addr):
			why = append(why, fmt.Sprintf("%s pod %s no longer has address %s (it was recreated)", s.side, s.pod, s.addr))
		}
	}
	return strings.Join(why, "; ")
}

func hasAddr(p *corev1.Pod, a netip.Addr) bool {
	if p.Spec.HostNetwork {
		return true // node traffic: its address is the node's
	}
	for _, pa := range cluster.PodAddrs(p) {
		if pa == a {
			return true
		}
	}
	return false
}

// culprits returns the changed policies among those that decide the flow
// after the change (the rule or isolation that now allows or denies it)
// or decided it before (a removed or rewritten policy).
func culprits(before *filter.Ruleset, vb filter.Verdict, after *filter.Ruleset, va filter.Verdict, changed map[string]bool) []string {
	set := map[string]bool{}
	for _, s := range []struct {
		rs   *filter.Ruleset
		side filter.Side
		dir  string
	}{
		{after, va.Egress, "egress"}, {after, va.Ingress, "ingress"},
		{before, vb.Egress, "egress"}, {before, vb.Ingress, "ingress"},
	} {
		for _, name := range sidePolicies(s.rs, s.side, s.dir) {
			if changed[name] {
				set[name] = true
			}
		}
	}
	out := make([]string, 0, len(set))
	for n := range set {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// sidePolicies names the policies behind one side's decision: the rule's
// policy, the Admin Pass rule's, and the policies isolating the pod.
func sidePolicies(rs *filter.Ruleset, s filter.Side, dir string) []string {
	var out []string
	if r, ok := rs.DecidingRule(s, dir); ok {
		out = append(out, r.Policy)
	}
	if r, ok := rs.PassRule(s); ok {
		out = append(out, r.Policy)
	}
	if s.Pod >= 0 {
		out = append(out, rs.Isolators(s.Pod, dir, false)...)
	}
	return out
}

// ChangedNames names the policies a change touches, as Ruleset.PolicyName
// does: every NetworkPolicy and ClusterNetworkPolicy applied or deleted.
func ChangedNames(applied *cluster.Cluster, deleted []cluster.Ref) map[string]bool {
	out := map[string]bool{}
	if applied != nil {
		for _, p := range applied.Policies {
			out[p.Namespace+"/"+p.Name] = true
		}
		for _, p := range applied.ClusterPolicies {
			out[filter.CNPName(p.Name)] = true
		}
	}
	for _, r := range deleted {
		switch r.Kind {
		case "NetworkPolicy":
			out[r.Namespace+"/"+r.Name] = true
		case "ClusterNetworkPolicy":
			out[filter.CNPName(r.Name)] = true
		}
	}
	return out
}
