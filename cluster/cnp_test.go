package cluster

import (
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// cnpDoc wraps a ClusterNetworkPolicy spec (YAML, indented by 2) into a
// v1beta1 document.
func cnpDoc(name, spec string) string {
	return "apiVersion: policy.networking.k8s.io/v1beta1\nkind: ClusterNetworkPolicy\nmetadata: {name: " + name + "}\nspec:\n" + spec
}

const cnpHead = "  tier: Admin\n  priority: 10\n  subject: {namespaces: {}}\n"

func TestClusterPolicyValidation(t *testing.T) {
	obj := " (ClusterNetworkPolicy x)"
	tests := []struct {
		name string
		doc  string
		want []string // without the "bad.yaml:1: " prefix and the object suffix
	}{
		{"valid, every peer and protocol", cnpDoc("x", cnpHead+`  ingress:
  - name: from-monitoring
    action: Accept
    from: [{namespaces: {matchLabels: {team: mon}}}, {pods: {namespaceSelector: {}, podSelector: {matchExpressions: [{key: app, operator: Exists}]}}}]
    protocols: [{tcp: {destinationPort: {number: 80}}}, {udp: {destinationPort: {range: {start: 1000, end: 2000}}}}, {sctp: {destinationPort: {number: 9}}}, {destinationNamedPort: http}]
  egress:
  - action: Deny
    to: [{networks: [10.0.0.0/8, "fd00::/8", 0.0.0.0/0]}, {nodes: {}}, {domainNames: [example.com, "*.example.org", kubernetes.io.]}]
  - action: Pass
    to: [{pods: {podSelector: {}}}]
    protocols: [{destinationNamedPort: dns}]
`), nil},
		{"valid, priority 0 and 1000 bounds", cnpDoc("x", "  tier: Baseline\n  priority: 0\n  subject: {pods: {podSelector: {}}}\n"), nil},
		{"missing priority", cnpDoc("x", "  tier: Admin\n  subject: {namespaces: {}}\n"), []string{"spec.priority: required value"}},
		{"priority too high", cnpDoc("x", "  tier: Admin\n  priority: 1001\n  subject: {namespaces: {}}\n"),
			[]string{"spec.priority: invalid value 1001: must be between 0 and 1000, inclusive"}},
		{"priority negative", cnpDoc("x", "  tier: Admin\n  priority: -1\n  subject: {namespaces: {}}\n"),
			[]string{"spec.priority: invalid value -1: must be between 0 and 1000, inclusive"}},
		{"missing tier", cnpDoc("x", "  priority: 1\n  subject: {namespaces: {}}\n"), []string{"spec.tier: required value"}},
		{"bad tier", cnpDoc("x", "  tier: admin\n  priority: 1\n  subject: {namespaces: {}}\n"),
			[]string{`spec.tier: unsupported value "admin": supported values: "Admin", "Baseline"`}},
		{"missing spec", "apiVersion: policy.networking.k8s.io/v1beta1\nkind: ClusterNetworkPolicy\nmetadata: {name: x}\n",
			[]string{"spec: required value", "spec.tier: required value", "spec.subject: required value: must specify exactly one of namespaces, pods"}},
		{"empty subject", cnpDoc("x", "  tier: Admin\n  priority: 1\n  subject: {}\n"),
			[]string{"spec.subject: required value: must specify exactly one of namespaces, pods"}},
		{"two subjects", cnpDoc("x", "  tier: Admin\n  priority: 1\n  subject: {namespaces: {}, pods: {podSelector: {}}}\n"),
			[]string{"spec.subject: forbidden: must specify exactly one of namespaces, pods, not 2"}},
		{"subject pods without podSelector", cnpDoc("x", "  tier: Admin\n  priority: 1\n  subject: {pods: {namespaceSelector: {}}}\n"),
			[]string{"spec.subject.pods.podSelector: required value"}},
		{"bad subject selector", cnpDoc("x", "  tier: Admin\n  priority: 1\n  subject: {namespaces: {matchExpressions: [{key: a, operator: Equals, values: [b]}]}}\n"),
			[]string{`spec.subject.namespaces.matchExpressions[0].operator: invalid value "Equals": not a valid selector operator`}},
		{"bad action", cnpDoc("x", cnpHead+"  ingress: [{action: Allow, from: [{namespaces: {}}]}]\n"),
			[]string{`spec.ingress[0].action: unsupported value "Allow": supported values: "Accept", "Deny", "Pass"`}},
		{"missing action", cnpDoc("x", cnpHead+"  egress: [{to: [{namespaces: {}}]}]\n"), []string{"spec.egress[0].action: required value"}},
		{"missing from", cnpDoc("x", cnpHead+"  ingress: [{action: Deny}]\n"), []string{"spec.ingress[0].from: required value"}},
		{"empty to", cnpDoc("x", cnpHead+"  egress: [{action: Deny, to: []}]\n"), []string{"spec.egress[0].to: invalid value: must have at least 1 item"}},
		{"rule name too long", cnpDoc("x", cnpHead+"  ingress: [{name: "+strings.Repeat("a", 101)+", action: Deny, from: [{namespaces: {}}]}]\n"),
			[]string{"spec.ingress[0].name: too long: may not be more than 100 bytes"}},
		{"empty peer", cnpDoc("x", cnpHead+"  ingress: [{action: Deny, from: [{}]}]\n"),
			[]string{"spec.ingress[0].from[0]: required value: must specify exactly one of namespaces, pods"}},
		{"two peers in one", cnpDoc("x", cnpHead+"  egress: [{action: Deny, to: [{namespaces: {}, networks: [10.0.0.0/8]}]}]\n"),
			[]string{"spec.egress[0].to[0]: forbidden: must specify exactly one of namespaces, pods, nodes, networks, domainNames, not 2"}},
		{"ingress networks peer", cnpDoc("x", cnpHead+"  ingress: [{action: Deny, from: [{networks: [10.0.0.0/8]}]}]\n"),
			[]string{"spec.ingress[0].from[0].networks: unknown field"}},
		{"peer pods without podSelector", cnpDoc("x", cnpHead+"  egress: [{action: Deny, to: [{namespaces: {}}, {pods: {namespaceSelector: {}}}]}]\n"),
			[]string{"spec.egress[0].to[1].pods.podSelector: required value"}},
		{"non-canonical network", cnpDoc("x", cnpHead+"  egress: [{action: Deny, to: [{networks: [10.0.0.1/8]}]}]\n"),
			[]string{`spec.egress[0].to[0].networks[0]: invalid value "10.0.0.1/8": Invalid CIDR format provided (not canonical: did you mean "10.0.0.0/8"?)`}},
		{"non-canonical IPv6 network", cnpDoc("x", cnpHead+"  egress: [{action: Deny, to: [{networks: [\"FD00::/8\"]}]}]\n"),
			[]string{`spec.egress[0].to[0].networks[0]: invalid value "FD00::/8": Invalid CIDR format provided (not canonical: did you mean "fd00::/8"?)`}},
		{"bad network", cnpDoc("x", cnpHead+"  egress: [{action: Deny, to: [{networks: [10.0.0.0]}]}]\n"),
			[]string{`spec.egress[0].to[0].networks[0]: invalid value "10.0.0.0": Invalid CIDR format provided (is not a valid CIDR (e.g. 10.9.8.0/24 or 2001:db8::/64))`}},
		{"duplicate network", cnpDoc("x", cnpHead+"  egress: [{action: Deny, to: [{networks: [10.0.0.0/8, 10.0.0.0/8]}]}]\n"),
			[]string{`spec.egress[0].to[0].networks[1]: duplicate value "10.0.0.0/8"`}},
		{"empty networks", cnpDoc("x", cnpHead+"  egress: [{action: Deny, to: [{networks: []}]}]\n"),
			[]string{"spec.egress[0].to[0].networks: invalid value: must have at least 1 item"}},
		{"26 networks", cnpDoc("x", cnpHead+"  egress: [{action: Deny, to: [{networks: ["+networks(26)+"]}]}]\n"),
			[]string{"spec.egress[0].to[0].networks: too many: 26: must have at most 25 items"}},
		{"bad domain name", cnpDoc("x", cnpHead+"  egress: [{action: Accept, to: [{domainNames: [localhost]}]}]\n"),
			[]string{`spec.egress[0].to[0].domainNames[0]: invalid value "localhost": must be a domain name with at least two labels, optionally starting with "*." (e.g. example.com, *.example.com)`}},
		{"wildcard inside domain name", cnpDoc("x", cnpHead+"  egress: [{action: Accept, to: [{domainNames: [\"a.*.example.com\"]}]}]\n"),
			[]string{`spec.egress[0].to[0].domainNames[0]: invalid value "a.*.example.com": must be a domain name with at least two labels, optionally starting with "*." (e.g. example.com, *.example.com)`}},
		{"named port with networks", cnpDoc("x", cnpHead+"  egress: [{action: Deny, to: [{pods: {podSelector: {}}}, {networks: [10.0.0.0/8]}], protocols: [{destinationNamedPort: http}]}]\n"),
			[]string{"spec.egress[0]: invalid value: networks/nodes/domainNames peer cannot be set with namedPorts since there are no namedPorts for networks/nodes/domainNames"}},
		{"empty protocols", cnpDoc("x", cnpHead+"  ingress: [{action: Deny, from: [{namespaces: {}}], protocols: []}]\n"),
			[]string{"spec.ingress[0].protocols: invalid value: must have at least 1 item"}},
		{"empty protocol", cnpDoc("x", cnpHead+"  ingress: [{action: Deny, from: [{namespaces: {}}], protocols: [{}]}]\n"),
			[]string{"spec.ingress[0].protocols[0]: required value: must specify exactly one of tcp, udp, sctp, destinationNamedPort"}},
		{"two protocols in one", cnpDoc("x", cnpHead+"  ingress: [{action: Deny, from: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {number: 1}}, udp: {destinationPort: {number: 1}}}]}]\n"),
			[]string{"spec.ingress[0].protocols[0]: forbidden: must specify exactly one of tcp, udp, sctp, destinationNamedPort, not 2"}},
		{"tcp without port", cnpDoc("x", cnpHead+"  ingress: [{action: Deny, from: [{namespaces: {}}], protocols: [{tcp: {}}]}]\n"),
			[]string{"spec.ingress[0].protocols[0].tcp.destinationPort: required value"}},
		{"port without number or range", cnpDoc("x", cnpHead+"  ingress: [{action: Deny, from: [{namespaces: {}}], protocols: [{udp: {destinationPort: {}}}]}]\n"),
			[]string{"spec.ingress[0].protocols[0].udp.destinationPort: required value: must specify exactly one of number, range"}},
		{"port number and range", cnpDoc("x", cnpHead+"  ingress: [{action: Deny, from: [{namespaces: {}}], protocols: [{udp: {destinationPort: {number: 5, range: {start: 1, end: 2}}}}]}]\n"),
			[]string{"spec.ingress[0].protocols[0].udp.destinationPort: forbidden: must specify exactly one of number, range, not 2"}},
		{"port too big", cnpDoc("x", cnpHead+"  ingress: [{action: Deny, from: [{namespaces: {}}], protocols: [{sctp: {destinationPort: {number: 65536}}}]}]\n"),
			[]string{"spec.ingress[0].protocols[0].sctp.destinationPort.number: invalid value 65536: must be between 1 and 65535, inclusive"}},
		{"range start equal to end", cnpDoc("x", cnpHead+"  egress: [{action: Deny, to: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {range: {start: 80, end: 80}}}}]}]\n"),
			[]string{"spec.egress[0].protocols[0].tcp.destinationPort.range: invalid value: Start port must be less than End port (start 80, end 80)"}},
		{"range end zero", cnpDoc("x", cnpHead+"  egress: [{action: Deny, to: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {range: {start: 80}}}}]}]\n"),
			[]string{"spec.egress[0].protocols[0].tcp.destinationPort.range.end: invalid value 0: must be between 1 and 65535, inclusive"}},
		{"26 ingress rules", cnpDoc("x", cnpHead+"  ingress:\n"+strings.Repeat("  - {action: Deny, from: [{namespaces: {}}]}\n", 26)),
			[]string{"spec.ingress: too many: 26: must have at most 25 items"}},
		{"26 peers", cnpDoc("x", cnpHead+"  ingress: [{action: Deny, from: ["+strings.Repeat("{namespaces: {}}, ", 25)+"{namespaces: {}}]}]\n"),
			[]string{"spec.ingress[0].from: too many: 26: must have at most 25 items"}},
		{"bad name", "apiVersion: policy.networking.k8s.io/v1beta1\nkind: ClusterNetworkPolicy\nmetadata: {name: X_1}\nspec:\n" + cnpHead,
			[]string{`metadata.name: invalid value "X_1": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')`}},
		{"unknown field", cnpDoc("x", cnpHead+"  egress: [{action: Deny, to: [{networks: [10.0.0.0/8]}], ports: [80]}]\n"),
			[]string{"spec.egress[0].ports: unknown field"}},
		{"wrong type", cnpDoc("x", "  tier: Admin\n  priority: high\n  subject: {namespaces: {}}\n"),
			[]string{"spec.priority: expected an integer, got string"}},
		{"v1alpha1 apiVersion", strings.Replace(cnpDoc("x", cnpHead), "v1beta1", "v1alpha1", 1),
			[]string{`apiVersion: unsupported value "policy.networking.k8s.io/v1alpha1": ClusterNetworkPolicy is read as apiVersion policy.networking.k8s.io/v1beta1 or policy.networking.k8s.io/v1alpha2`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Decode("bad.yaml", []byte(tt.doc))
			got := errorStrings(t, err)
			var want []string
			for _, w := range tt.want {
				want = append(want, "bad.yaml:1: "+w+obj)
			}
			if tt.name == "bad name" {
				want[0] = strings.Replace(want[0], "(ClusterNetworkPolicy x)", "(ClusterNetworkPolicy X_1)", 1)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("errors:\n got %q\nwant %q", got, want)
			}
			if kept := len(c.ClusterPolicies); kept != map[bool]int{true: 0, false: 1}[want != nil] {
				t.Errorf("%d ClusterNetworkPolicies kept", kept)
			}
			for _, p := range c.ClusterPolicies {
				if errs := ValidateClusterPolicy(p); len(errs) > 0 {
					t.Errorf("kept policy fails validation: %v", errs)
				}
			}
		})
	}
}

func networks(n int) string {
	var s []string
	for i := range n {
		s = append(s, "10.0."+strconv.Itoa(i)+".0/24")
	}
	return strings.Join(s, ", ")
}

// Both served versions are read, into v1beta1; the namespace of a
// cluster-scoped object is dropped as the API server drops it; valid
// policies are kept next to an invalid one, which is named by its document.
func TestClusterPolicyVersionsAndDrop(t *testing.T) {
	in := strings.Replace(cnpDoc("alpha", cnpHead), "v1beta1", "v1alpha2", 1) + "---\n" +
		cnpDoc("bad", "  tier: Admin\n  priority: 5000\n  subject: {namespaces: {}}\n") + "---\n" +
		"apiVersion: policy.networking.k8s.io/v1beta1\nkind: ClusterNetworkPolicy\nmetadata: {name: beta, namespace: kube-system}\nspec:\n" + cnpHead +
		"  egress: [{name: no-metadata, action: Deny, to: [{networks: [169.254.169.254/32]}]}]\n" + "---\n" +
		cnpDoc("alpha", "  tier: Baseline\n  priority: 1\n  subject: {namespaces: {}}\n")
	c, err := Decode("f.yaml", []byte(in))
	got := errorStrings(t, err)
	want := []string{
		"f.yaml:2: spec.priority: invalid value 5000: must be between 0 and 1000, inclusive (ClusterNetworkPolicy bad)",
		"f.yaml:4: metadata.name: duplicate object: already defined at f.yaml:1 (ClusterNetworkPolicy alpha)",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("errors:\n got %q\nwant %q", got, want)
	}
	if len(c.ClusterPolicies) != 2 {
		t.Fatalf("%d ClusterNetworkPolicies kept, want 2", len(c.ClusterPolicies))
	}
	alpha, beta := c.ClusterPolicies[0], c.ClusterPolicies[1]
	if alpha.Name != "alpha" || alpha.APIVersion != "policy.networking.k8s.io/v1beta1" || alpha.Spec.Tier != cnpv1beta1.AdminTier || alpha.Spec.Priority != 10 {
		t.Errorf("v1alpha2 object read as %+v", alpha)
	}
	if beta.Name != "beta" || beta.Namespace != "" || len(beta.Spec.Egress) != 1 || beta.Spec.Egress[0].Name != "no-metadata" {
		t.Errorf("v1beta1 object read as %+v", beta)
	}
	for _, ns := range c.Namespaces {
		if ns.Name == "kube-system" {
			t.Errorf("a cluster-scoped object's namespace was added to the cluster")
		}
	}
}

// Every file of the public ClusterNetworkPolicy corpus loads without a
// problem and holds at least one ClusterNetworkPolicy.
func TestPublicCNPCorpusLoads(t *testing.T) {
	files, _ := filepath.Glob("../testdata/conformance/public-cnp/*.yaml")
	if len(files) == 0 {
		t.Skip("testdata/conformance/public-cnp not in this tree")
	}
	for _, f := range files {
		c, err := LoadFiles(f)
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if len(c.ClusterPolicies) == 0 || len(c.Skipped) > 0 {
			t.Errorf("%s: %d ClusterNetworkPolicies, skipped %v", f, len(c.ClusterPolicies), c.Skipped)
		}
	}
}
