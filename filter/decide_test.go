package filter_test

import (
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/nfqpolicy/nfqpolicy/cluster"
	"github.com/nfqpolicy/nfqpolicy/filter"
)

// cluster: namespaces x (team=a) and y; pods x/a (app=a, named port web=8080/TCP,
// dns=53/UDP) on node-1, x/b on node-2, y/c on node-1, a hostNetwork pod
// y/h on node-2; nodes node-1 and node-2. Policies are appended per case.
const base = `
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: a}}
---
apiVersion: v1
kind: Namespace
metadata: {name: y}
---
apiVersion: v1
kind: Node
metadata: {name: node-1, labels: {zone: one}}
status: {addresses: [{type: InternalIP, address: 192.168.0.1}, {type: InternalIP, address: "fd00::1"}]}
---
apiVersion: v1
kind: Node
metadata: {name: node-2, labels: {zone: two}}
status: {addresses: [{type: InternalIP, address: 192.168.0.2}, {type: ExternalIP, address: 203.0.113.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec:
  nodeName: node-1
  containers: [{name: c, ports: [{name: web, containerPort: 8080}, {name: dns, containerPort: 53, protocol: UDP}]}]
status: {phase: Running, podIP: 10.0.1.1, podIPs: [{ip: 10.0.1.1}, {ip: "fd00:10::1"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
spec: {nodeName: node-2, containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.2.1}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: y, labels: {app: c}}
spec: {nodeName: node-1, containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: h, namespace: y, labels: {app: a}}
spec: {nodeName: node-2, hostNetwork: true, containers: [{name: c}]}
status: {phase: Running, podIP: 192.168.0.2, hostIP: 192.168.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: done, namespace: x, labels: {app: a}}
spec: {nodeName: node-2, containers: [{name: c}]}
status: {phase: Succeeded, podIP: 10.0.2.9}
`

func compileYAML(t testing.TB, policies string) *filter.Ruleset {
	t.Helper()
	c, err := cluster.Decode("test.yaml", []byte(base+policies))
	if err != nil {
		t.Fatalf("decode: %v", err)
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

type probeCase struct {
	src, dst string
	port     uint16
	proto    uint8
	allow    bool
	reason   string // substring of Describe
}

func TestDecideSemantics(t *testing.T) {
	tcp, udp, sctp, icmp := filter.ProtoTCP, filter.ProtoUDP, filter.ProtoSCTP, filter.ProtoICMP
	for _, tc := range []struct {
		name     string
		policies string
		probes   []probeCase
	}{
		{"no policy allows everything", "", []probeCase{
			{"10.0.2.1", "10.0.1.1", 80, tcp, true, "x/a not isolated"},
			{"10.0.1.1", "8.8.8.8", 53, udp, true, "destination is not a pod"},
		}},
		{"deny-all ingress isolates, node-local passes, egress unaffected", `
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {}}
`, []probeCase{
			{"10.0.2.1", "10.0.1.1", 80, tcp, false, "default deny by isolation of x/a from x/deny"},
			{"10.0.1.2", "10.0.1.1", 80, tcp, false, "x/deny"},
			{"192.168.0.1", "10.0.1.1", 80, tcp, true, "own node"},      // kubelet probe from node-1
			{"192.168.0.2", "10.0.1.1", 80, tcp, false, "default deny"}, // another node, and hostNetwork y/h
			{"10.0.1.1", "10.0.1.2", 80, tcp, true, "y/c not isolated"},
			{"10.0.1.1", "10.0.2.1", 80, tcp, false, "x/b from x/deny"},
		}},
		{"pod selector peer is namespace-local; hostNetwork pods never match", `
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-app-a, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress: [{from: [{podSelector: {matchLabels: {app: a}}}]}]
`, []probeCase{
			{"10.0.1.1", "10.0.2.1", 9999, tcp, true, "x/allow-app-a ingress[0] from[0]"},
			{"192.168.0.2", "10.0.2.1", 80, tcp, true, "own node"}, // y/h (app=a) is node traffic, and on node-2
			{"10.0.1.2", "10.0.2.1", 80, tcp, false, "default deny"},
		}},
		{"namespaceSelector AND podSelector in one peer", `
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: and, namespace: y}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: a}}, podSelector: {matchLabels: {app: b}}}]}]
`, []probeCase{
			{"10.0.2.1", "10.0.1.2", 80, tcp, true, "namespaceSelector{team=a} and podSelector{app=b}"},
			{"10.0.1.1", "10.0.1.2", 80, tcp, false, "default deny"},
		}},
		{"named ports, endPort, protocols", `
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ports, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress: [{ports: [{port: web}, {port: dns, protocol: UDP}, {port: 1000, endPort: 1010, protocol: SCTP}]}]
  egress: [{ports: [{port: web}]}]
`, []probeCase{
			{"10.0.1.2", "10.0.1.1", 8080, tcp, true, "x/ports ingress[0]"},
			{"10.0.1.2", "10.0.1.1", 8080, udp, false, "default deny"},
			{"10.0.1.2", "10.0.1.1", 53, udp, true, ""},
			{"10.0.1.2", "10.0.1.1", 1005, sctp, true, ""},
			{"10.0.1.2", "10.0.1.1", 1011, sctp, false, ""},
			{"10.0.1.2", "10.0.1.1", 0, icmp, false, ""},                                      // a rule with ports admits no ICMP
			{"10.0.2.1", "10.0.1.1", 8080, tcp, true, "egress: allowed by x/ports egress[0]"}, // x/b's egress to web on x/a
			{"10.0.2.1", "10.0.1.2", 8080, tcp, false, "egress: default deny"},                // y/c declares no web port
			{"10.0.2.1", "1.2.3.4", 8080, tcp, false, "egress: default deny"},                 // named ports never match non-pods
		}},
		{"ipBlock with except, both families; ipBlock matches pod and node addresses", `
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: blocks, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.2.0/24]}}, {ipBlock: {cidr: "fd00::/16", except: ["fd00:10::/32"]}}, {ipBlock: {cidr: 192.168.0.2/32}}]}]
`, []probeCase{
			{"10.0.1.2", "10.0.1.1", 80, tcp, true, "ipBlock 10.0.0.0/16 except 10.0.2.0/24"},
			{"10.0.2.1", "10.0.1.1", 80, tcp, false, "default deny"},
			{"fd00:20::5", "fd00:10::1", 80, tcp, true, "from[1]"},
			{"fd00:10::7", "fd00:10::1", 80, tcp, false, "default deny"},
			{"192.168.0.2", "10.0.1.1", 80, tcp, true, "from[2]"},
		}},
		{"additive policies, empty from allows all sources, ICMP with no ports", `
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: one, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{from: [{podSelector: {matchLabels: {app: b}}}], ports: [{port: 80}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: two, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{}]
`, []probeCase{
			{"10.0.2.1", "10.0.1.1", 80, tcp, true, "x/one ingress[0] from[0]"},
			{"1.2.3.4", "10.0.1.1", 0, icmp, true, "x/two ingress[0] (any peer)"},
		}},
		{"egress isolation with empty egress list denies all egress", `
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: no-egress, namespace: y}
spec: {podSelector: {}, policyTypes: [Egress]}
`, []probeCase{
			{"10.0.1.2", "10.0.1.1", 80, tcp, false, "egress: default deny by isolation of y/c from y/no-egress"},
			{"10.0.1.2", "192.168.0.1", 10250, tcp, false, "egress: default deny"}, // egress to nodes is policed too
			{"10.0.1.1", "10.0.1.2", 80, tcp, true, "y/c not isolated"},            // ingress to y/c untouched
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := compileYAML(t, tc.policies)
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
			}
		})
	}
}

func TestAuditMode(t *testing.T) {
	rs := compileYAML(t, `
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: staged-deny, namespace: x, annotations: {nfqpolicy.io/mode: audit}}
spec: {podSelector: {matchLabels: {app: a}}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: enforced-deny, namespace: x}
spec: {podSelector: {matchLabels: {app: b}}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: staged-allow, namespace: x, annotations: {nfqpolicy.io/mode: audit}}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress: [{from: [{podSelector: {}}]}]
`)
	toA := rs.Decide(filter.Flow{Src: netip.MustParseAddr("10.0.1.2"), Dst: netip.MustParseAddr("10.0.1.1"), DstPort: 80, Proto: filter.ProtoTCP})
	if !toA.Allow || toA.Audit.Allow || !toA.AuditDiffers() {
		t.Fatalf("to x/a: enforced %v audit %v; want allowed, would deny", toA.Allow, toA.Audit.Allow)
	}
	if got := rs.StagedCause(toA); len(got) != 1 || got[0] != "x/staged-deny" {
		t.Errorf("would-deny cause = %v, want [x/staged-deny]", got)
	}
	if d := rs.DescribeAudit(toA); !strings.HasPrefix(d, "would deny with staged x/staged-deny") {
		t.Errorf("DescribeAudit = %q", d)
	}
	toB := rs.Decide(filter.Flow{Src: netip.MustParseAddr("10.0.1.1"), Dst: netip.MustParseAddr("10.0.2.1"), DstPort: 80, Proto: filter.ProtoTCP})
	if toB.Allow || !toB.Audit.Allow {
		t.Fatalf("to x/b: enforced %v audit %v; want denied, would allow", toB.Allow, toB.Audit.Allow)
	}
	if got := rs.StagedCause(toB); len(got) != 1 || got[0] != "x/staged-allow" {
		t.Errorf("would-allow cause = %v, want [x/staged-allow]", got)
	}
	// The same cluster without the annotation enforces the policy.
	staged := rs.DecideAudit(filter.Flow{Src: netip.MustParseAddr("10.0.1.2"), Dst: netip.MustParseAddr("10.0.1.1"), DstPort: 80, Proto: filter.ProtoTCP})
	if staged.Allow {
		t.Error("DecideAudit allowed what the staged policy denies")
	}
}

func TestNamespaceAuditLabel(t *testing.T) {
	c, err := cluster.Decode("t.yaml", []byte(strings.Replace(base, "metadata: {name: x, labels: {team: a}}", "metadata: {name: x, labels: {team: a, nfqpolicy.io/mode: audit}}", 1)+`
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {}}
`))
	if err != nil {
		t.Fatal(err)
	}
	rs, _ := filter.Compile(c)
	v := rs.Decide(filter.Flow{Src: netip.MustParseAddr("10.0.1.2"), Dst: netip.MustParseAddr("10.0.1.1"), DstPort: 80, Proto: filter.ProtoTCP})
	if !v.Allow || v.Audit.Allow {
		t.Fatalf("policy in an audit namespace: enforced %v audit %v; want allowed, would deny", v.Allow, v.Audit.Allow)
	}
}

func TestEngineCacheFollowsSwap(t *testing.T) {
	open := compileYAML(t, "")
	closed := compileYAML(t, `
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {}}
`)
	e := filter.NewEngine(open, 1024)
	f := filter.Flow{Src: netip.MustParseAddr("10.0.1.2"), Dst: netip.MustParseAddr("10.0.1.1"), SrcPort: 1, DstPort: 80, Proto: filter.ProtoTCP}
	if v := e.Decide(f); !v.Allow || v.Cached {
		t.Fatalf("first decision: allow=%v cached=%v", v.Allow, v.Cached)
	}
	f.SrcPort = 2 // another connection of the same flow class hits the cache
	if v := e.Decide(f); !v.Allow || !v.Cached {
		t.Fatalf("second decision: allow=%v cached=%v", v.Allow, v.Cached)
	}
	e.Swap(closed)
	if v := e.Decide(f); v.Allow || v.Cached {
		t.Fatalf("after swap: allow=%v cached=%v; the old verdict leaked", v.Allow, v.Cached)
	}
}

func TestDecideNoAllocs(t *testing.T) {
	rs := compileYAML(t, `
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x, annotations: {nfqpolicy.io/mode: audit}}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress: [{from: [{namespaceSelector: {}}, {ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}], ports: [{port: web}]}]
  egress: [{to: [{podSelector: {}}]}]
`)
	f := filter.Flow{Src: netip.MustParseAddr("10.0.1.2"), Dst: netip.MustParseAddr("10.0.1.1"), SrcPort: 1, DstPort: 8080, Proto: filter.ProtoTCP}
	if n := testing.AllocsPerRun(1000, func() { rs.Decide(f) }); n != 0 {
		t.Errorf("Ruleset.Decide allocates %.1f times", n)
	}
	e := filter.NewEngine(rs, 1024)
	e.Decide(f)
	if n := testing.AllocsPerRun(1000, func() { e.Decide(f) }); n != 0 {
		t.Errorf("Engine.Decide on a cache hit allocates %.1f times", n)
	}
}

func TestCompileSkipsWhatItCannotUse(t *testing.T) {
	// Objects that bypass validation (e.g. an informer fed by a newer API
	// server) must not crash the compiler or widen what is allowed.
	c, err := cluster.Decode("t.yaml", []byte(base))
	if err != nil {
		t.Fatal(err)
	}
	bad, _ := cluster.Decode("p.yaml", []byte(`
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ok, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}}], ports: [{port: 80}]}]
`))
	np := bad.Policies[0].DeepCopy()
	np.Spec.Ingress[0].From[0].IPBlock.CIDR = "not-a-cidr"
	proto := "ICMP"
	np.Spec.Ingress[0].Ports[0].Protocol = (*corev1.Protocol)(&proto)
	c.Policies = append(c.Policies, np, nil)
	rs, err := filter.Compile(c)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs.Warnings) != 2 {
		t.Errorf("warnings = %q, want one for the CIDR and one for the protocol", rs.Warnings)
	}
	v := rs.Decide(filter.Flow{Src: netip.MustParseAddr("10.0.1.2"), Dst: netip.MustParseAddr("10.0.1.1"), DstPort: 80, Proto: filter.ProtoTCP})
	if v.Allow {
		t.Errorf("an unusable rule allowed traffic: %s", rs.Describe(v))
	}
	if _, err := filter.Compile(nil); err == nil {
		t.Error("Compile(nil) did not fail")
	}
}
