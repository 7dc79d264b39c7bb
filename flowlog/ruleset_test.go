package flowlog

import (
	"time"

	"slices"
	"strings"
	"testing"

	"github.com/nfqpolicy/nfqpolicy/filter"
	"github.com/nfqpolicy/nfqpolicy/internal/testcluster"
)

// TestRulesetFields logs verdicts of flows through testcluster.YAML.
func TestRulesetFields(t *testing.T) {
	rs := testcluster.Compile(t)
	tests := []struct {
		name       string
		f          filter.Flow
		verdict    string
		src, dst   string
		dstLabels  map[string]string
		reason     string // substring
		ingress    SideEntry
		audit      string
		differs    bool
		staged     []string
		auditCause string // substring of audit_reason
	}{
		{
			name: "allowed by rule", f: testcluster.Flow("10.0.1.1", "10.0.1.2", 4000, 80, filter.ProtoTCP),
			verdict: "allow", src: "x/a", dst: "x/b", dstLabels: map[string]string{"app": "b"},
			reason:  "allowed by x/allow-a ingress[0]",
			ingress: SideEntry{Decision: "allowed-by-rule", Policy: "x/allow-a"},
			audit:   "would-allow",
		},
		{
			name: "default deny", f: testcluster.Flow("10.0.1.3", "10.0.1.2", 4000, 80, filter.ProtoTCP),
			verdict: "deny", src: "y/c", dst: "x/b", dstLabels: map[string]string{"app": "b"},
			reason:  "default deny by isolation of x/b from x/allow-a",
			ingress: SideEntry{Decision: "denied-isolated"},
			audit:   "would-deny",
		},
		{
			name: "staged policy would deny", f: testcluster.Flow("10.0.1.3", "10.0.1.1", 4000, 443, filter.ProtoTCP),
			verdict: "allow", src: "y/c", dst: "x/a", dstLabels: map[string]string{"app": "a"},
			reason:  "x/a not isolated",
			ingress: SideEntry{Decision: "not-isolated"},
			audit:   "would-deny", differs: true, staged: []string{"x/staged-deny"},
			auditCause: "would deny with staged x/staged-deny",
		},
		{
			name: "external source", f: testcluster.Flow("203.0.113.9", "10.0.1.3", 4000, 53, filter.ProtoUDP),
			verdict: "allow", dst: "y/c", dstLabels: map[string]string{"app": "c"},
			reason:  "source is not a pod",
			ingress: SideEntry{Decision: "not-isolated"},
			audit:   "would-allow",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf syncBuffer
			l, err := New(Options{Out: &buf, Select: SelectAll, Renderer: Renderer{Node: "node-1", Labels: true}})
			if err != nil {
				t.Fatal(err)
			}
			l.OnVerdict(tc.f, rs.Decide(tc.f), nil, time.Now(), 0)
			l.Close()
			es := buf.entries(t)
			if len(es) != 1 {
				t.Fatalf("%d lines, want 1", len(es))
			}
			e := es[0]
			if ns, _, _ := strings.Cut(tc.dst, "/"); e.DstNamespace != ns {
				t.Errorf("dst_namespace %q, want %q", e.DstNamespace, ns)
			}
			if ns, _, _ := strings.Cut(tc.src, "/"); e.SrcNamespace != ns {
				t.Errorf("src_namespace %q, want %q", e.SrcNamespace, ns)
			}
			if e.Verdict != tc.verdict || e.SrcPod != tc.src || e.DstPod != tc.dst {
				t.Errorf("verdict %s %s -> %s, want %s %s -> %s", e.Verdict, e.SrcPod, e.DstPod, tc.verdict, tc.src, tc.dst)
			}
			if e.DstLabels["app"] != tc.dstLabels["app"] || len(e.DstLabels) != len(tc.dstLabels) {
				t.Errorf("dst_labels %v, want %v", e.DstLabels, tc.dstLabels)
			}
			if !strings.Contains(e.Reason, tc.reason) {
				t.Errorf("reason %q does not contain %q", e.Reason, tc.reason)
			}
			if e.Ingress == nil || e.Ingress.Decision != tc.ingress.Decision || e.Ingress.Policy != tc.ingress.Policy {
				t.Errorf("ingress %+v, want %+v", e.Ingress, tc.ingress)
			}
			if tc.ingress.Policy != "" && (e.Ingress.Rule == nil || *e.Ingress.Rule != 0 || e.Ingress.Peer == nil || *e.Ingress.Peer != 0) {
				t.Errorf("ingress rule/peer %+v, want rule 0 peer 0", e.Ingress)
			}
			if e.Mode != "enforce" || e.AuditVerdict != tc.audit || e.AuditDiffers != tc.differs || !slices.Equal(e.StagedPolicies, tc.staged) {
				t.Errorf("mode %q audit %q differs %v staged %v, want enforce %q %v %v", e.Mode, e.AuditVerdict, e.AuditDiffers, e.StagedPolicies, tc.audit, tc.differs, tc.staged)
			}
			if !strings.Contains(e.AuditReason, tc.auditCause) {
				t.Errorf("audit_reason %q does not contain %q", e.AuditReason, tc.auditCause)
			}
		})
	}
}

func TestRulesetVerdictsAllocateNothing(t *testing.T) {
	rs := testcluster.Compile(t)
	gate := make(chan struct{})
	defer close(gate)
	l, err := New(Options{Out: &gateWriter{gate: gate}, Select: SelectAll, Buffer: 1 << 16})
	if err != nil {
		t.Fatal(err)
	}
	f := testcluster.Flow("10.0.1.3", "10.0.1.1", 4000, 443, filter.ProtoTCP)
	v := rs.Decide(f)
	if n := testing.AllocsPerRun(1000, func() { l.OnVerdict(f, v, nil, time.Now(), 0) }); n != 0 {
		t.Errorf("OnVerdict with a real verdict allocates %v per call", n)
	}
}

// TestClusterPolicyFields: a side decided by a ClusterNetworkPolicy names
// its tier, policy, rule index and name, and action; a side an Admin Pass
// sent on names the Pass rule.
func TestClusterPolicyFields(t *testing.T) {
	rs := testcluster.CompileCNP(t, testcluster.CNP)
	i16 := func(v int16) *int16 { return &v }
	for _, tc := range []struct {
		name     string
		f        filter.Flow
		egress   bool // check the egress side, else ingress
		want     SideEntry
		reason   string
		verdict  string
		wantPass *PassEntry
	}{
		{
			name: "admin accept", f: testcluster.Flow("10.0.1.3", "10.0.1.2", 4000, 8080, filter.ProtoTCP),
			want:    SideEntry{Decision: "admin-accept", Tier: "Admin", Policy: "ClusterNetworkPolicy/guard", Action: "Accept", RuleName: "y-web", Rule: i16(0), Peer: i16(0)},
			reason:  `accepted by Admin ClusterNetworkPolicy/guard (priority 5) ingress[0] "y-web" Accept`,
			verdict: "allow",
		},
		{
			name: "admin pass then NetworkPolicy", f: testcluster.Flow("10.0.1.3", "10.0.1.2", 4000, 80, filter.ProtoTCP),
			want:     SideEntry{Decision: "denied-isolated"},
			wantPass: &PassEntry{Tier: "Admin", Policy: "ClusterNetworkPolicy/guard", Rule: 1, RuleName: "y-rest"},
			reason:   `passed by Admin ClusterNetworkPolicy/guard (priority 5) ingress[1] "y-rest" Pass; default deny by isolation of x/b from x/allow-a`,
			verdict:  "deny",
		},
		{
			name: "admin deny egress", f: testcluster.Flow("10.0.1.2", "203.0.113.9", 4000, 443, filter.ProtoTCP), egress: true,
			want:    SideEntry{Decision: "admin-deny", Tier: "Admin", Policy: "ClusterNetworkPolicy/guard", Action: "Deny", RuleName: "no-net", Rule: i16(0), Peer: i16(0)},
			reason:  `denied by Admin ClusterNetworkPolicy/guard (priority 5) egress[0] "no-net" Deny to[0] (networks 203.0.113.0/24)`,
			verdict: "deny",
		},
		{
			name: "NetworkPolicy rule", f: testcluster.Flow("10.0.1.1", "10.0.1.2", 4000, 80, filter.ProtoTCP),
			want:    SideEntry{Decision: "allowed-by-rule", Tier: "NetworkPolicy", Policy: "x/allow-a", Action: "Allow", Rule: i16(0), Peer: i16(0)},
			reason:  "allowed by x/allow-a ingress[0]",
			verdict: "allow",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf syncBuffer
			l, err := New(Options{Out: &buf, Select: SelectAll})
			if err != nil {
				t.Fatal(err)
			}
			l.OnVerdict(tc.f, rs.Decide(tc.f), nil, time.Now(), 0)
			l.Close()
			es := buf.entries(t)
			if len(es) != 1 {
				t.Fatalf("%d lines, want 1", len(es))
			}
			e := es[0]
			side := e.Ingress
			if tc.egress {
				side = e.Egress
			}
			if e.Verdict != tc.verdict || !strings.Contains(e.Reason, tc.reason) {
				t.Errorf("verdict %s reason %q, want %s with %q", e.Verdict, e.Reason, tc.verdict, tc.reason)
			}
			if side == nil {
				t.Fatal("side missing")
			}
			got, want := *side, tc.want
			if got.Decision != want.Decision || got.Tier != want.Tier || got.Policy != want.Policy || got.Action != want.Action || got.RuleName != want.RuleName {
				t.Errorf("side %+v, want %+v", got, want)
			}
			if (want.Rule == nil) != (got.Rule == nil) || want.Rule != nil && *got.Rule != *want.Rule {
				t.Errorf("rule %v, want %v", got.Rule, want.Rule)
			}
			if (tc.wantPass == nil) != (got.Pass == nil) || tc.wantPass != nil && *got.Pass != *tc.wantPass {
				t.Errorf("pass %+v, want %+v", got.Pass, tc.wantPass)
			}
		})
	}
}
