package filter_test

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"unsafe"

	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
	"sigs.k8s.io/yaml"

	"github.com/nfqpolicy/nfqpolicy/cluster"
	"github.com/nfqpolicy/nfqpolicy/filter"
)

// compileCNP compiles base plus docs; ClusterNetworkPolicy documents are
// decoded here into the model's type, the rest by the cluster loader.
func compileCNP(t testing.TB, docs string) *filter.Ruleset {
	t.Helper()
	c, err := decodeCNP(docs)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := filter.Compile(c)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs.Warnings) > 0 {
		t.Fatalf("compile warnings: %v", rs.Warnings)
	}
	return rs
}

func decodeCNP(docs string) (*cluster.Cluster, error) {
	var rest []string
	var cnps []*cnpv1beta1.ClusterNetworkPolicy
	for _, d := range strings.Split(docs, "\n---\n") {
		if !strings.Contains(d, "kind: ClusterNetworkPolicy") {
			rest = append(rest, d)
			continue
		}
		cnp := &cnpv1beta1.ClusterNetworkPolicy{}
		if err := yaml.UnmarshalStrict([]byte(d), cnp); err != nil {
			return nil, err
		}
		cnps = append(cnps, cnp)
	}
	c, err := cluster.Decode("test.yaml", []byte(base+strings.Join(rest, "\n---\n")))
	if err != nil {
		return nil, err
	}
	c.ClusterPolicies = append(c.ClusterPolicies, cnps...)
	return c, nil
}

const cnpHead = `
---
apiVersion: policy.networking.k8s.io/v1beta1
kind: ClusterNetworkPolicy
`

// Pods: x/a 10.0.1.1 (node-1, named ports web=8080/TCP, dns=53/UDP), x/b
// 10.0.2.1 (node-2), y/c 10.0.1.2 (node-1), hostNetwork y/h (app=a) on
// node-2 at 192.168.0.2; node-1 192.168.0.1 and fd00::1 (zone=one), node-2
// 192.168.0.2 and ExternalIP 203.0.113.2 (zone=two).
func TestClusterNetworkPolicySemantics(t *testing.T) {
	tcp, udp, sctp, icmp := filter.ProtoTCP, filter.ProtoUDP, filter.ProtoSCTP, filter.ProtoICMP
	for _, tc := range []struct {
		name   string
		docs   string
		probes []probeCase
	}{
		{"admin deny egress to a namespace; ingress unaffected", cnpHead + `
metadata: {name: x-not-to-y}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {matchLabels: {team: a}}}
  egress: [{name: no-y, action: Deny, to: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: "y"}}}]}]
`, []probeCase{
			{"10.0.1.1", "10.0.1.2", 80, tcp, false, `denied by Admin ClusterNetworkPolicy/x-not-to-y (priority 10) egress[0] "no-y" Deny to[0] (namespaces{kubernetes.io/metadata.name=y})`},
			{"10.0.1.2", "10.0.1.1", 80, tcp, true, "y/c not isolated; ingress: x/a not isolated"},
			{"10.0.1.1", "10.0.2.1", 80, tcp, true, "x/a not isolated"},
		}},
		{"admin accept overrides a NetworkPolicy deny", cnpHead + `
metadata: {name: y-into-x}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {matchLabels: {team: a}}}
  ingress: [{action: Accept, from: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: "y"}}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {}}
`, []probeCase{
			{"10.0.1.2", "10.0.1.1", 80, tcp, true, "accepted by Admin ClusterNetworkPolicy/y-into-x (priority 1) ingress[0] Accept from[0]"},
			{"10.0.2.1", "10.0.1.1", 80, tcp, false, "default deny by isolation of x/a from x/deny"},
		}},
		{"admin pass goes to NetworkPolicy, skipping the rest of the Admin tier", cnpHead + `
metadata: {name: a-pass}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {}}
  ingress: [{name: y-to-np, action: Pass, from: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: "y"}}}]}]
` + cnpHead + `
metadata: {name: b-deny}
spec:
  tier: Admin
  priority: 20
  subject: {namespaces: {}}
  ingress: [{action: Deny, from: [{namespaces: {}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-y, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: "y"}}}]}]
`, []probeCase{
			{"10.0.1.2", "10.0.1.1", 80, tcp, true, `passed by Admin ClusterNetworkPolicy/a-pass (priority 10) ingress[0] "y-to-np" Pass; allowed by x/from-y ingress[0]`},
			{"10.0.1.2", "10.0.2.1", 80, tcp, true, "passed by Admin ClusterNetworkPolicy/a-pass (priority 10) ingress[0] \"y-to-np\" Pass; x/b not isolated"},
			{"10.0.2.1", "10.0.1.1", 80, tcp, false, "denied by Admin ClusterNetworkPolicy/b-deny"},
			{"10.0.1.1", "10.0.1.2", 80, tcp, false, "denied by Admin ClusterNetworkPolicy/b-deny"},
			{"192.168.0.1", "10.0.1.1", 80, tcp, true, "own node"},                                             // kubelet on node-1
			{"8.8.8.8", "10.0.1.1", 80, tcp, false, "ingress: default deny by isolation of x/a from x/from-y"}, // no Admin rule matches
		}},
		{"baseline decides only where no NetworkPolicy isolates, per direction", cnpHead + `
metadata: {name: default-deny}
spec:
  tier: Baseline
  priority: 5
  subject: {namespaces: {}}
  ingress: [{name: all, action: Deny, from: [{namespaces: {}}]}]
  egress: [{name: all, action: Deny, to: [{networks: [0.0.0.0/0]}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-y, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: "y"}}}]}]
`, []probeCase{
			{"10.0.1.2", "10.0.1.1", 80, tcp, false, `egress: denied by Baseline ClusterNetworkPolicy/default-deny (priority 5) egress[0] "all" Deny to[0] (networks 0.0.0.0/0)`},
			{"8.8.8.8", "10.0.2.1", 80, tcp, false, "ingress: default deny by isolation of x/b from x/b-from-y"},
			{"8.8.8.8", "10.0.1.1", 80, tcp, true, "ingress: x/a not isolated"}, // the baseline ingress rule names pods only
			{"10.0.2.1", "8.8.8.8", 80, tcp, false, "egress: denied by Baseline"},
		}},
		{"baseline pass goes to the default allow; admin priority order", cnpHead + `
metadata: {name: b-pass}
spec:
  tier: Baseline
  priority: 1
  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: a}}}}
  egress: [{action: Pass, to: [{pods: {namespaceSelector: {}, podSelector: {}}}]}]
` + cnpHead + `
metadata: {name: b-deny}
spec:
  tier: Baseline
  priority: 2
  subject: {namespaces: {}}
  egress: [{action: Deny, to: [{namespaces: {}}]}]
` + cnpHead + `
metadata: {name: z-late}
spec:
  tier: Admin
  priority: 500
  subject: {namespaces: {}}
  egress: [{action: Accept, to: [{networks: [10.0.2.0/24]}]}]
` + cnpHead + `
metadata: {name: a-early}
spec:
  tier: Admin
  priority: 100
  subject: {namespaces: {}}
  egress: [{action: Deny, to: [{networks: [10.0.2.1/32]}]}]
`, []probeCase{
			{"10.0.1.1", "10.0.1.2", 80, tcp, true, "passed by Baseline ClusterNetworkPolicy/b-pass (priority 1) egress[0] Pass to[0] (pods{namespaces{} pods{}}) to the default (allow)"},
			{"10.0.1.2", "10.0.1.1", 80, tcp, false, "denied by Baseline ClusterNetworkPolicy/b-deny"},
			{"10.0.1.1", "10.0.2.1", 80, tcp, false, "denied by Admin ClusterNetworkPolicy/a-early (priority 100)"},
		}},
		{"same tier and priority: the name that sorts first decides", cnpHead + `
metadata: {name: zeta}
spec:
  tier: Admin
  priority: 7
  subject: {namespaces: {}}
  egress: [{action: Accept, to: [{namespaces: {}}]}]
` + cnpHead + `
metadata: {name: alpha}
spec:
  tier: Admin
  priority: 7
  subject: {namespaces: {}}
  egress: [{action: Deny, to: [{namespaces: {}}]}]
`, []probeCase{
			{"10.0.1.1", "10.0.1.2", 80, tcp, false, "denied by Admin ClusterNetworkPolicy/alpha"},
		}},
		{"networks match pods, nodes and external addresses; IPv6", cnpHead + `
metadata: {name: nets}
spec:
  tier: Admin
  priority: 3
  subject: {pods: {namespaceSelector: {matchLabels: {team: a}}, podSelector: {matchLabels: {app: a}}}}
  egress:
  - {action: Deny, to: [{networks: [10.0.1.0/24, "fd00::/120"]}]}
  - {action: Accept, to: [{networks: [8.8.8.0/24]}]}
  - {action: Deny, to: [{networks: [0.0.0.0/0]}]}
`, []probeCase{
			{"10.0.1.1", "10.0.1.2", 80, tcp, false, "egress[0] Deny to[0] (networks 10.0.1.0/24,fd00::/120)"},
			{"fd00:10::1", "fd00::1", 80, tcp, false, "egress[0] Deny"},
			{"fd00:10::1", "fd00:20::1", 80, tcp, true, "x/a"}, // no IPv6 rule matches
			{"10.0.1.1", "8.8.8.8", 53, udp, true, "accepted by Admin ClusterNetworkPolicy/nets (priority 3) egress[1]"},
			{"10.0.1.1", "10.0.2.1", 80, tcp, false, "egress[2] Deny"},
			{"10.0.2.1", "10.0.1.2", 80, tcp, true, "x/b not isolated"}, // not a subject
		}},
		{"nodes peers match node addresses and their hostNetwork pods, not pods", cnpHead + `
metadata: {name: nodes}
spec:
  tier: Admin
  priority: 3
  subject: {namespaces: {}}
  egress: [{action: Deny, to: [{nodes: {matchLabels: {zone: two}}}]}]
`, []probeCase{
			{"10.0.1.1", "192.168.0.2", 80, tcp, false, "to[0] (nodes{zone=two})"}, // node-2, and hostNetwork y/h
			{"10.0.1.1", "203.0.113.2", 80, tcp, false, "nodes{zone=two}"},         // node-2's ExternalIP
			{"10.0.1.1", "192.168.0.1", 80, tcp, true, "x/a"},
			{"10.0.1.1", "10.0.2.1", 80, tcp, true, "x/a"}, // a pod on node-2 is not node-2
		}},
		{"hostNetwork pods are never subjects nor pod peers", cnpHead + `
metadata: {name: hn}
spec:
  tier: Admin
  priority: 3
  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: a}}}}
  ingress: [{action: Deny, from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: a}}}}, {namespaces: {matchLabels: {kubernetes.io/metadata.name: "y"}}}]}]
  egress: [{action: Deny, to: [{networks: [0.0.0.0/0]}]}]
`, []probeCase{
			{"192.168.0.2", "10.0.1.1", 80, tcp, true, "x/a"}, // y/h (app=a, in y) is node traffic
			{"192.168.0.2", "8.8.8.8", 80, tcp, true, "source is not a pod"},
			{"10.0.1.2", "10.0.1.1", 80, tcp, false, "from[1]"},
		}},
		{"protocols: number, inclusive range, udp, sctp, named port, absent", cnpHead + `
metadata: {name: ports}
spec:
  tier: Admin
  priority: 3
  subject: {namespaces: {matchLabels: {team: a}}}
  ingress:
  - name: web
    action: Accept
    from: [{namespaces: {}}]
    protocols: [{tcp: {destinationPort: {number: 80}}}, {tcp: {destinationPort: {range: {start: 1000, end: 1002}}}}, {udp: {destinationPort: {number: 53}}}, {sctp: {destinationPort: {number: 9000}}}, {destinationNamedPort: web}, {destinationNamedPort: dns}]
  - {name: rest, action: Deny, from: [{namespaces: {}}]}
`, []probeCase{
			{"10.0.1.2", "10.0.1.1", 80, tcp, true, `"web" Accept`},
			{"10.0.1.2", "10.0.1.1", 1002, tcp, true, `"web" Accept`},
			{"10.0.1.2", "10.0.1.1", 1003, tcp, false, `"rest" Deny`},
			{"10.0.1.2", "10.0.1.1", 53, udp, true, `"web" Accept`},
			{"10.0.1.2", "10.0.1.1", 53, tcp, false, `"rest" Deny`},
			{"10.0.1.2", "10.0.1.1", 9000, sctp, true, `"web" Accept`},
			{"10.0.1.2", "10.0.1.1", 9000, udp, false, `"rest" Deny`},
			{"10.0.1.2", "10.0.1.1", 8080, tcp, true, `"web" Accept`}, // named port web on x/a
			{"10.0.1.2", "10.0.2.1", 8080, tcp, false, `"rest" Deny`}, // x/b has no port named web
			{"10.0.1.2", "10.0.1.1", 8080, udp, false, `"rest" Deny`}, // web is TCP
			{"10.0.1.2", "10.0.1.1", 0, icmp, false, `"rest" Deny`},   // no protocols: everything
		}},
		{"domainNames peers match nothing: the Accept falls to the Deny after it", cnpHead + `
metadata: {name: fqdn}
spec:
  tier: Admin
  priority: 3
  subject: {namespaces: {}}
  egress:
  - {name: allow-example, action: Accept, to: [{domainNames: [example.com, "*.example.org"]}, {networks: [1.1.1.1/32]}]}
  - {name: deny-rest, action: Deny, to: [{networks: [0.0.0.0/0]}]}
`, []probeCase{
			{"10.0.1.1", "93.184.216.34", 443, tcp, false, `"deny-rest" Deny`},
			{"10.0.1.1", "1.1.1.1", 443, tcp, true, `"allow-example" Accept to[1] (networks 1.1.1.1/32)`},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := compileCNP(t, tc.docs)
			sameWithoutClasses(t, rs)
			for _, p := range tc.probes {
				f := filter.Flow{Src: netip.MustParseAddr(p.src), Dst: netip.MustParseAddr(p.dst), SrcPort: 40000, DstPort: p.port, Proto: p.proto}
				v := rs.Decide(f)
				why := rs.Describe(v)
				if v.Allow != p.allow {
					t.Errorf("%s -> %s %d/%s: allow=%v, want %v (%s)", p.src, p.dst, p.port, filter.ProtoName(p.proto), v.Allow, p.allow, why)
				}
				if !strings.Contains(why, p.reason) {
					t.Errorf("%s -> %s %d/%s: reason %q lacks %q", p.src, p.dst, p.port, filter.ProtoName(p.proto), why, p.reason)
				}
				// The explanation walks the same tiers: same verdict.
				if e := rs.Explain(f); (e.Verdict == "allow") != v.Allow {
					t.Errorf("%s -> %s: explain says %s", p.src, p.dst, e.Verdict)
				}
			}
		})
	}
}

func TestClusterNetworkPolicyDomainNameRules(t *testing.T) {
	rs := compileCNP(t, cnpHead+`
metadata: {name: fqdn}
spec:
  tier: Admin
  priority: 3
  subject: {namespaces: {}}
  egress:
  - {name: allow-example, action: Accept, to: [{domainNames: [example.com, "*.example.org"]}]}
  - {action: Deny, to: [{networks: [0.0.0.0/0]}]}
`)
	got := rs.DomainNameRules()
	want := filter.DomainNameRule{Policy: "ClusterNetworkPolicy/fqdn", Tier: "Admin", Rule: 0, RuleName: "allow-example", Action: "Accept", DomainNames: []string{"example.com", "*.example.org"}}
	if len(got) != 1 || got[0].Policy != want.Policy || got[0].Tier != want.Tier || got[0].Rule != want.Rule || got[0].RuleName != want.RuleName || got[0].Action != want.Action || !slices.Equal(got[0].DomainNames, want.DomainNames) {
		t.Fatalf("DomainNameRules = %+v, want [%+v]", got, want)
	}
	e := rs.Explain(filter.Flow{Src: netip.MustParseAddr("10.0.1.1"), Dst: netip.MustParseAddr("93.184.216.34"), DstPort: 443, Proto: filter.ProtoTCP})
	r := e.Egress.Policies[0].Rules[0]
	if r.Matched || !strings.Contains(r.Why, "not enforced: matches no traffic") {
		t.Errorf("explain of the domainNames rule = %+v, want it unmatched and saying it is not enforced", r)
	}
}

func TestClusterNetworkPolicyExplainTierWalk(t *testing.T) {
	rs := compileCNP(t, cnpHead+`
metadata: {name: pass-y}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {}}
  ingress: [{name: "y", action: Pass, from: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: "y"}}}]}, {name: never, action: Deny, from: [{namespaces: {}}]}]
`+cnpHead+`
metadata: {name: deny-all}
spec:
  tier: Admin
  priority: 2
  subject: {namespaces: {}}
  ingress: [{action: Deny, from: [{namespaces: {}}]}]
`+cnpHead+`
metadata: {name: base}
spec:
  tier: Baseline
  priority: 1
  subject: {namespaces: {}}
  ingress: [{action: Accept, from: [{namespaces: {}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {}}
`)
	e := rs.Explain(filter.Flow{Src: netip.MustParseAddr("10.0.1.2"), Dst: netip.MustParseAddr("10.0.1.1"), DstPort: 80, Proto: filter.ProtoTCP})
	if e.Verdict != "deny" {
		t.Fatalf("verdict %s (%s), want deny by x/deny after the Pass", e.Verdict, e.Reason)
	}
	var walk []string
	for _, p := range e.Ingress.Policies {
		for _, r := range p.Rules {
			mark := "-"
			switch {
			case r.Decided:
				mark = "decided"
			case r.Matched:
				mark = "match"
			case strings.HasPrefix(r.Why, "not reached"):
				mark = "not-reached"
			}
			walk = append(walk, p.Tier+" "+p.Policy+" "+r.Rule+" "+mark)
		}
	}
	want := []string{
		"Admin ClusterNetworkPolicy/pass-y ingress[0] decided",
		"Admin ClusterNetworkPolicy/pass-y ingress[1] not-reached",
		"Admin ClusterNetworkPolicy/deny-all ingress[0] not-reached",
		"NetworkPolicy x/deny (none) -",
		"Baseline ClusterNetworkPolicy/base ingress[0] not-reached",
	}
	if !slices.Equal(walk, want) {
		t.Errorf("tier walk:\n%s\nwant:\n%s", strings.Join(walk, "\n"), strings.Join(want, "\n"))
	}
	if !strings.Contains(e.Ingress.Summary, `passed by Admin ClusterNetworkPolicy/pass-y (priority 1) ingress[0] "y" Pass; default deny by isolation of x/a from x/deny`) {
		t.Errorf("summary %q", e.Ingress.Summary)
	}
}

func TestClusterNetworkPolicyAudit(t *testing.T) {
	rs := compileCNP(t, cnpHead+`
metadata: {name: staged, annotations: {nfqpolicy.io/mode: audit}}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {matchLabels: {team: a}}}
  ingress: [{action: Deny, from: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: "y"}}}]}]
`+cnpHead+`
metadata: {name: staged-pass, annotations: {nfqpolicy.io/mode: audit}}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: "y"}}}
  ingress: [{action: Pass, from: [{namespaces: {}}]}]
`+cnpHead+`
metadata: {name: enforced}
spec:
  tier: Admin
  priority: 2
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: "y"}}}
  ingress: [{action: Deny, from: [{namespaces: {}}]}]
`)
	if !rs.HasStaged() {
		t.Fatal("HasStaged() = false with a staged ClusterNetworkPolicy")
	}
	for _, tc := range []struct {
		src, dst        string
		allow, audit    bool
		cause           string
		auditReasonPart string
	}{
		{"10.0.1.2", "10.0.1.1", true, false, "ClusterNetworkPolicy/staged", "denied by Admin ClusterNetworkPolicy/staged"},
		{"10.0.1.1", "10.0.1.2", false, true, "ClusterNetworkPolicy/staged-pass", "passed by Admin ClusterNetworkPolicy/staged-pass"},
		{"10.0.2.1", "10.0.1.1", true, true, "", ""},
	} {
		f := filter.Flow{Src: netip.MustParseAddr(tc.src), Dst: netip.MustParseAddr(tc.dst), DstPort: 80, Proto: filter.ProtoTCP}
		v := rs.Decide(f)
		if v.Allow != tc.allow || v.Audit.Allow != tc.audit {
			t.Errorf("%s -> %s: allow=%v audit=%v, want %v %v (%s / %s)", tc.src, tc.dst, v.Allow, v.Audit.Allow, tc.allow, tc.audit, rs.Describe(v), rs.DescribeAudit(v))
			continue
		}
		cause := strings.Join(rs.StagedCause(v), ",")
		if cause != tc.cause {
			t.Errorf("%s -> %s: StagedCause = %q, want %q", tc.src, tc.dst, cause, tc.cause)
		}
		if !strings.Contains(rs.DescribeAudit(v), tc.auditReasonPart) {
			t.Errorf("%s -> %s: DescribeAudit = %q, want %q in it", tc.src, tc.dst, rs.DescribeAudit(v), tc.auditReasonPart)
		}
		if a := rs.DecideAudit(f); a.Allow != tc.audit {
			t.Errorf("%s -> %s: DecideAudit allow=%v, want %v", tc.src, tc.dst, a.Allow, tc.audit)
		}
	}
}

func TestClusterNetworkPolicyFailsClosed(t *testing.T) {
	c, err := decodeCNP(cnpHead + `
metadata: {name: odd}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {matchLabels: {team: a}}}
  ingress: [{action: Pass, from: [{namespaces: {}}]}]
  egress: [{action: Accept, to: [{networks: [0.0.0.0/0]}]}]
`)
	if err != nil {
		t.Fatal(err)
	}
	// A peer with no field set (a newer CRD's peer type) makes a Pass or
	// Deny rule deny everything, and an Accept rule match nothing.
	c.ClusterPolicies[0].Spec.Ingress[0].From = append(c.ClusterPolicies[0].Spec.Ingress[0].From, cnpv1beta1.ClusterNetworkPolicyIngressPeer{})
	c.ClusterPolicies[0].Spec.Egress[0].To[0] = cnpv1beta1.ClusterNetworkPolicyEgressPeer{}
	bad := c.ClusterPolicies[0].DeepCopy()
	bad.Name, bad.Spec.Tier = "bad-tier", "Middle"
	c.ClusterPolicies = append(c.ClusterPolicies, bad, nil)
	rs, err := filter.Compile(c)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs.Warnings) != 4 {
		t.Errorf("warnings = %q, want the two peers, the fail-closed rule and the tier", rs.Warnings)
	}
	v := rs.Decide(filter.Flow{Src: netip.MustParseAddr("10.0.1.2"), Dst: netip.MustParseAddr("10.0.1.1"), DstPort: 80, Proto: filter.ProtoTCP})
	if v.Allow || v.Ingress.Decision != filter.AdminDenied {
		t.Errorf("a Pass rule with an unreadable peer: %s, want denied", rs.Describe(v))
	}
	v = rs.Decide(filter.Flow{Src: netip.MustParseAddr("10.0.1.1"), Dst: netip.MustParseAddr("8.8.8.8"), DstPort: 80, Proto: filter.ProtoTCP})
	if v.Egress.Decision != filter.NotIsolated {
		t.Errorf("an Accept rule with an unreadable peer decided: %s", rs.Describe(v))
	}
}

func TestClusterNetworkPolicyDecideNoAllocs(t *testing.T) {
	rs := compileCNP(t, cnpHead+`
metadata: {name: pass, annotations: {nfqpolicy.io/mode: audit}}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {}}
  ingress: [{action: Pass, from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: c}}}}], protocols: [{destinationNamedPort: web}]}]
  egress: [{action: Deny, to: [{nodes: {matchLabels: {zone: two}}}, {networks: [8.8.8.0/24]}]}]
`+cnpHead+`
metadata: {name: base}
spec:
  tier: Baseline
  priority: 1
  subject: {namespaces: {}}
  ingress: [{action: Deny, from: [{namespaces: {}}]}]
  egress: [{action: Pass, to: [{networks: [0.0.0.0/0]}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {}}], ports: [{port: web}]}]
`)
	e := filter.NewEngine(rs, 1024)
	for _, f := range []filter.Flow{
		{Src: netip.MustParseAddr("10.0.1.2"), Dst: netip.MustParseAddr("10.0.1.1"), SrcPort: 1, DstPort: 8080, Proto: filter.ProtoTCP},
		{Src: netip.MustParseAddr("10.0.1.1"), Dst: netip.MustParseAddr("203.0.113.2"), SrcPort: 1, DstPort: 80, Proto: filter.ProtoTCP},
		{Src: netip.MustParseAddr("10.0.2.1"), Dst: netip.MustParseAddr("10.0.1.2"), SrcPort: 1, DstPort: 80, Proto: filter.ProtoUDP},
	} {
		if n := testing.AllocsPerRun(1000, func() { rs.Decide(f) }); n != 0 {
			t.Errorf("%v: Ruleset.Decide allocates %.1f times", f, n)
		}
		e.Decide(f)
		if n := testing.AllocsPerRun(1000, func() { e.Decide(f) }); n != 0 {
			t.Errorf("%v: Engine.Decide on a cache hit allocates %.1f times", f, n)
		}
	}
}

// The flow cache copies verdicts by value: the tier walk's Pass must not
// grow a Side.
func TestSideSize(t *testing.T) {
	if n := unsafe.Sizeof(filter.Side{}); n != 16 {
		t.Errorf("Side is %d bytes, want 16", n)
	}
}

// sameWithoutClasses checks that picking rules by peer class decides every
// flow between the test cluster's addresses exactly like testing every
// rule.
func sameWithoutClasses(t *testing.T, rs *filter.Ruleset) {
	t.Helper()
	if !filter.HasClasses(rs) {
		t.Fatal("the class bitmaps are off")
	}
	plain := filter.WithoutClasses(rs)
	addrs := []string{"10.0.1.1", "10.0.2.1", "10.0.1.2", "192.168.0.1", "192.168.0.2", "203.0.113.2", "8.8.8.8", "1.1.1.1", "10.0.2.9"}
	n := 0
	for _, src := range addrs {
		for _, dst := range addrs {
			for _, pp := range []struct {
				port  uint16
				proto uint8
			}{{80, filter.ProtoTCP}, {8080, filter.ProtoTCP}, {1002, filter.ProtoTCP}, {53, filter.ProtoUDP}, {9000, filter.ProtoSCTP}, {0, filter.ProtoICMP}} {
				f := filter.Flow{Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst), SrcPort: 1, DstPort: pp.port, Proto: pp.proto}
				a, b := rs.Decide(f), plain.Decide(f)
				a.Ruleset, b.Ruleset = nil, nil
				if a != b {
					t.Errorf("%v: by class %+v, every rule %+v", f, a, b)
				}
				n++
			}
		}
	}
	if n == 0 {
		t.Fatal("no flow compared")
	}
}
