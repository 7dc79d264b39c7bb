package filter_test

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/nfqpolicy/nfqpolicy/cluster"
	"github.com/nfqpolicy/nfqpolicy/filter"
)

// podCIDRCluster: node-1 hands out 10.244.1.0/24 and fd00:244:1::/64
// (spec.podCIDRs) and has its own InternalIP inside the IPv4 range; node-2
// uses the older spec.podCIDR 10.244.2.0/24. Known pods: x/a on node-1
// (dual-stack), x/b on node-2, the hostNetwork pod y/h on node-2 whose
// reported podIP lies inside node-2's range, and a finished pod whose
// address is free again.
const podCIDRCluster = `
apiVersion: v1
kind: Node
metadata: {name: node-1}
spec: {podCIDR: 10.244.1.0/24, podCIDRs: [10.244.1.0/24, "fd00:244:1::/64"]}
status: {addresses: [{type: InternalIP, address: 10.244.1.250}]}
---
apiVersion: v1
kind: Node
metadata: {name: node-2}
spec: {podCIDR: 10.244.2.0/24}
status: {addresses: [{type: InternalIP, address: 192.168.0.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {nodeName: node-1, containers: [{name: c}]}
status: {phase: Running, podIP: 10.244.1.10, podIPs: [{ip: 10.244.1.10}, {ip: "fd00:244:1::10"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
spec: {nodeName: node-2, containers: [{name: c}]}
status: {phase: Running, podIP: 10.244.2.10}
---
apiVersion: v1
kind: Pod
metadata: {name: h, namespace: y}
spec: {nodeName: node-2, hostNetwork: true, containers: [{name: c}]}
status: {phase: Running, podIP: 10.244.2.250, hostIP: 192.168.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: done, namespace: x, labels: {app: a}}
spec: {nodeName: node-1, containers: [{name: c}]}
status: {phase: Succeeded, podIP: 10.244.1.99}
`

// allowAll lets every pod of x talk to anything: an unknown pod must stay
// denied even where the known side's policies would admit it.
const allowAll = `
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress: [{from: [{ipBlock: {cidr: 0.0.0.0/0}}, {ipBlock: {cidr: "::/0"}}]}]
  egress: [{to: [{ipBlock: {cidr: 0.0.0.0/0}}, {ipBlock: {cidr: "::/0"}}]}]
`

func compilePodCIDR(t testing.TB, docs string) *filter.Ruleset {
	t.Helper()
	c, err := cluster.Decode("podcidr.yaml", []byte(docs))
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	rs, err := filter.Compile(c)
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

func TestUnknownPodDenied(t *testing.T) {
	tcp := filter.ProtoTCP
	const (
		unknownSrc = "10.244.1.77 is in node-1's pod CIDR 10.244.1.0/24 but belongs to no known pod (not synced yet): denied"
		unknown    = "unknown-pod"
		notPoliced = "not-policed"
		unknownDst = "10.244.2.77 is in node-2's pod CIDR 10.244.2.0/24 but belongs to no known pod (not synced yet): denied"
	)
	for _, policies := range []string{"", allowAll} {
		rs := compilePodCIDR(t, podCIDRCluster+policies)
		if len(rs.Warnings) > 0 {
			t.Fatalf("compile warnings: %v", rs.Warnings)
		}
		for _, tc := range []struct {
			name        string
			src, dst    string
			allow       bool
			egress      string // the source's side's decision; "" any
			ingress     string // the destination's side's decision; "" any
			describe    string // substring of Describe
			describeFlw string // substring of DescribeFlow and Explain's reason
		}{
			{name: "unknown source to known pod", src: "10.244.1.77", dst: "10.244.1.10",
				egress: unknown, describe: "egress: source is in node-1's pod CIDR 10.244.1.0/24 but belongs to no known pod", describeFlw: unknownSrc},
			{name: "known pod to unknown destination via spec.podCIDR", src: "10.244.1.10", dst: "10.244.2.77",
				ingress: unknown, describe: "ingress: destination is in node-2's pod CIDR 10.244.2.0/24", describeFlw: unknownDst},
			{name: "unknown IPv6 source", src: "fd00:244:1::77", dst: "fd00:244:1::10",
				egress: unknown, describeFlw: "fd00:244:1::77 is in node-1's pod CIDR fd00:244:1::/64"},
			{name: "IPv4-mapped unknown source", src: "::ffff:10.244.1.77", dst: "10.244.1.10",
				egress: unknown, describe: "node-1's pod CIDR 10.244.1.0/24"},
			{name: "unknown pod to the internet", src: "10.244.1.77", dst: "8.8.8.8",
				egress: unknown, ingress: notPoliced, describeFlw: unknownSrc},
			{name: "both ends unknown", src: "10.244.1.77", dst: "10.244.2.77",
				egress: unknown, ingress: unknown, describeFlw: unknownDst},
			{name: "a finished pod's address is no pod any more", src: "10.244.1.99", dst: "10.244.2.10",
				egress: unknown, describe: "node-1's pod CIDR"},
			{name: "node address inside its pod CIDR is the node", src: "10.244.1.250", dst: "10.244.1.10",
				allow: true, egress: notPoliced},
			{name: "hostNetwork pod address inside a pod CIDR is node traffic", src: "10.244.2.250", dst: "10.244.2.10",
				allow: true, egress: notPoliced},
			{name: "a pod CIDR's network address is the node's (overlay tunnel)", src: "10.244.2.0", dst: "10.244.1.10",
				allow: true, egress: notPoliced},
			{name: "a pod CIDR's first host is the node's (bridge gateway)", src: "10.244.1.10", dst: "10.244.1.1",
				allow: true, ingress: notPoliced},
			{name: "IPv6 bridge gateway", src: "fd00:244:1::10", dst: "fd00:244:1::1",
				allow: true, ingress: notPoliced},
			{name: "the second host is a pod's", src: "10.244.1.2", dst: "10.244.1.10",
				egress: unknown},
			{name: "address in no node's range is external", src: "10.244.3.5", dst: "10.244.1.10",
				allow: true, egress: notPoliced},
			{name: "known pod to the internet", src: "10.244.1.10", dst: "8.8.8.8",
				allow: true, ingress: notPoliced},
		} {
			name := tc.name
			if policies != "" {
				name += " with allow-all"
			}
			t.Run(name, func(t *testing.T) {
				f := filter.Flow{Src: netip.MustParseAddr(tc.src), Dst: netip.MustParseAddr(tc.dst), SrcPort: 40000, DstPort: 80, Proto: tcp}
				v := rs.Decide(f)
				if v.Allow != tc.allow {
					t.Fatalf("allow = %v, want %v: %s", v.Allow, tc.allow, rs.DescribeFlow(f, v))
				}
				if v.Audit.Allow != v.Allow {
					t.Errorf("audit allow = %v, want %v (nothing is staged)", v.Audit.Allow, v.Allow)
				}
				if tc.egress != "" && v.Egress.Decision.String() != tc.egress {
					t.Errorf("egress = %v, want %v", v.Egress.Decision, tc.egress)
				}
				if tc.ingress != "" && v.Ingress.Decision.String() != tc.ingress {
					t.Errorf("ingress = %v, want %v", v.Ingress.Decision, tc.ingress)
				}
				for _, s := range []filter.Side{v.Egress, v.Ingress} {
					if s.Decision == filter.UnknownPod && (s.Pod != -1 || s.Decision.Allowed()) {
						t.Errorf("unknown-pod side %+v names a pod or allows", s)
					}
				}
				if got := rs.Describe(v); tc.describe != "" && !strings.Contains(got, tc.describe) {
					t.Errorf("Describe = %q, want containing %q", got, tc.describe)
				}
				if got := rs.DescribeFlow(f, v); tc.describeFlw != "" && !strings.Contains(got, tc.describeFlw) {
					t.Errorf("DescribeFlow = %q, want containing %q", got, tc.describeFlw)
				}
				e := rs.Explain(f)
				if wantVerdict := map[bool]string{true: "allow", false: "deny"}[tc.allow]; e.Verdict != wantVerdict {
					t.Errorf("Explain verdict %q, want %q", e.Verdict, wantVerdict)
				}
				if tc.describeFlw != "" && !strings.Contains(e.Reason, tc.describeFlw) {
					t.Errorf("Explain reason %q, want containing %q", e.Reason, tc.describeFlw)
				}
				if tc.egress != "" && e.Egress.Decision != tc.egress {
					t.Errorf("Explain egress decision %q, want unknown-pod", e.Egress.Decision)
				}
			})
		}
	}
}

func TestLocalPodCIDRs(t *testing.T) {
	rs := compilePodCIDR(t, podCIDRCluster)
	for _, tc := range []struct {
		node string
		want []string
	}{
		{"node-1", []string{"10.244.1.0/24", "fd00:244:1::/64"}},
		{"node-2", []string{"10.244.2.0/24"}},
		{"node-9", nil},
	} {
		t.Run(tc.node, func(t *testing.T) {
			var got []string
			for _, p := range rs.LocalPodCIDRs(tc.node) {
				got = append(got, p.String())
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("LocalPodCIDRs(%s) = %v, want %v", tc.node, got, tc.want)
			}
		})
	}
}

func TestPodCIDRWarnings(t *testing.T) {
	for _, tc := range []struct {
		name, node string
		warning    string // substring of the only warning; "" for none
		unknown    string // an address that must be an unknown pod
		external   string // an address that must not be
	}{
		{name: "unparsable range is skipped",
			node:     `{name: node-3}, spec: {podCIDRs: [nope, 10.244.3.0/24]}`,
			warning:  `node node-3: spec.podCIDRs: "nope" is not a CIDR`,
			unknown:  "10.244.3.7",
			external: "10.244.4.7"},
		{name: "a range claimed twice stays with its first node",
			node:    `{name: node-3}, spec: {podCIDR: 10.244.2.0/24}`,
			warning: "node node-3: pod CIDR 10.244.2.0/24 already belongs to node node-2, which keeps it",
			unknown: "10.244.2.7"},
		{name: "unmasked range is masked",
			node:     `{name: node-3}, spec: {podCIDR: 10.244.3.9/24}`,
			unknown:  "10.244.3.200",
			external: "10.244.30.1"},
		{name: "ranges of other prefix lengths",
			node:     `{name: node-3}, spec: {podCIDRs: [10.245.0.0/16, "fd00:245::/48"]}`,
			unknown:  "10.245.200.1",
			external: "fd00:246::1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc := podCIDRCluster + "---\napiVersion: v1\nkind: Node\nmetadata: " + strings.Replace(tc.node, "}, spec:", "}\nspec:", 1) + "\n"
			rs := compilePodCIDR(t, doc)
			switch {
			case tc.warning == "" && len(rs.Warnings) > 0:
				t.Errorf("warnings %v, want none", rs.Warnings)
			case tc.warning != "" && (len(rs.Warnings) != 1 || !strings.Contains(rs.Warnings[0], tc.warning)):
				t.Errorf("warnings %v, want one containing %q", rs.Warnings, tc.warning)
			}
			if tc.unknown != "" {
				f := filter.Flow{Src: netip.MustParseAddr(tc.unknown), Dst: netip.MustParseAddr("10.244.1.10"), DstPort: 80, Proto: filter.ProtoTCP}
				if v := rs.Decide(f); v.Allow || v.Egress.Decision != filter.UnknownPod {
					t.Errorf("%s: %s, want an unknown pod", tc.unknown, rs.DescribeFlow(f, v))
				}
			}
			if tc.external != "" {
				f := filter.Flow{Src: netip.MustParseAddr(tc.external), Dst: netip.MustParseAddr("10.244.1.10"), DstPort: 80, Proto: filter.ProtoTCP}
				if v := rs.Decide(f); !v.Allow || v.Egress.Decision != filter.NotPoliced {
					t.Errorf("%s: %s, want an external address", tc.external, rs.DescribeFlow(f, v))
				}
			}
		})
	}
}

func TestUnknownPodNoAllocs(t *testing.T) {
	rs := compilePodCIDR(t, podCIDRCluster+allowAll)
	for _, src := range []string{"10.244.1.77", "fd00:244:1::77", "8.8.8.8"} {
		f := filter.Flow{Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr("10.244.1.10"), SrcPort: 1, DstPort: 80, Proto: filter.ProtoTCP}
		if n := testing.AllocsPerRun(1000, func() { rs.Decide(f) }); n != 0 {
			t.Errorf("Decide from %s allocates %.1f times", src, n)
		}
	}
}

// BenchmarkDecidePodCIDR decides flows from addresses outside the maps on
// a cluster of 1000 nodes with a /24 each: the pod CIDR search is one map
// probe per distinct prefix length, not one check per node.
func BenchmarkDecidePodCIDR(b *testing.B) {
	var doc strings.Builder
	doc.WriteString(podCIDRCluster)
	for i := 3; i < 1003; i++ {
		fmt.Fprintf(&doc, "---\napiVersion: v1\nkind: Node\nmetadata: {name: n%d}\nspec: {podCIDR: 10.%d.%d.0/24}\n", i, 100+i/256, i%256)
	}
	rs := compilePodCIDR(b, doc.String())
	if len(rs.Warnings) > 0 {
		b.Fatalf("compile warnings: %v", rs.Warnings)
	}
	// The same flow on a cluster whose nodes have no pod CIDRs: what the
	// search adds.
	bare := compilePodCIDR(b, strings.NewReplacer("spec: {podCIDR: 10.244.1.0/24, podCIDRs: [10.244.1.0/24, \"fd00:244:1::/64\"]}\n", "", "spec: {podCIDR: 10.244.2.0/24}\n", "").Replace(podCIDRCluster))
	if len(bare.LocalPodCIDRs("node-1")) != 0 {
		b.Fatal("the bare cluster still has pod CIDRs")
	}
	f := filter.Flow{Src: netip.MustParseAddr("8.8.8.8"), Dst: netip.MustParseAddr("10.244.1.10"), SrcPort: 1, DstPort: 80, Proto: filter.ProtoTCP}
	b.Run("external-no-pod-cidrs", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			bare.Decide(f)
		}
	})
	for _, tc := range []struct{ name, src string }{
		{"external", "8.8.8.8"},
		{"unknown-pod", "10.103.200.9"},
	} {
		f := filter.Flow{Src: netip.MustParseAddr(tc.src), Dst: netip.MustParseAddr("10.244.1.10"), SrcPort: 1, DstPort: 80, Proto: filter.ProtoTCP}
		if v := rs.Decide(f); v.Allow == (tc.name == "unknown-pod") {
			b.Fatalf("%s: %s", tc.name, rs.DescribeFlow(f, v))
		}
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				rs.Decide(f)
			}
		})
	}
}
