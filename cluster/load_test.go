package cluster

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
)

// policyDoc wraps a NetworkPolicy spec (YAML, indented by 2) into a document.
func policyDoc(name, spec string) string {
	return "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: " + name + ", namespace: default}\nspec:\n" + spec
}

func errorStrings(t *testing.T, err error) []string {
	t.Helper()
	if err == nil {
		return nil
	}
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("error %v is %T, not *ValidationError", err, err)
	}
	out := make([]string, len(ve.Errors))
	for i, e := range ve.Errors {
		out[i] = e.Error()
	}
	return out
}

func TestValidationErrors(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want []string
	}{
		{"except outside cidr", policyDoc("x", `  podSelector: {}
  ingress:
  - from:
    - podSelector: {}
    - ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/16]}
`), []string{`bad.yaml:1: spec.ingress[0].from[1].ipBlock.except[0]: "10.1.0.0/16" is not within cidr "10.0.0.0/16" (NetworkPolicy default/x)`}},
		{"except equal to cidr", policyDoc("x", `  podSelector: {}
  egress:
  - to:
    - ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.0/16]}
`), []string{`bad.yaml:1: spec.egress[0].to[0].ipBlock.except[0]: "10.0.0.0/16" is not within cidr "10.0.0.0/16" (NetworkPolicy default/x)`}},
		{"except of other family", policyDoc("x", `  podSelector: {}
  ingress:
  - from:
    - ipBlock: {cidr: 10.0.0.0/8, except: ["fd00::/64"]}
`), []string{`bad.yaml:1: spec.ingress[0].from[0].ipBlock.except[0]: "fd00::/64" is not of the address family of cidr "10.0.0.0/8" (NetworkPolicy default/x)`}},
		{"bad cidr", policyDoc("x", `  podSelector: {}
  ingress:
  - from:
    - ipBlock: {cidr: 10.0.0/8}
`), []string{`bad.yaml:1: spec.ingress[0].from[0].ipBlock.cidr: "10.0.0/8" is not a valid CIDR (e.g. 10.9.8.0/24 or 2001:db8::/64) (NetworkPolicy default/x)`}},
		{"bad except", policyDoc("x", `  podSelector: {}
  ingress:
  - from:
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/33]}
`), []string{`bad.yaml:1: spec.ingress[0].from[0].ipBlock.except[0]: "10.1.0.0/33" is not a valid CIDR (e.g. 10.9.8.0/24 or 2001:db8::/64) (NetworkPolicy default/x)`}},
		{"empty cidr", policyDoc("x", `  podSelector: {}
  ingress:
  - from:
    - ipBlock: {cidr: ""}
`), []string{`bad.yaml:1: spec.ingress[0].from[0].ipBlock.cidr: required value (NetworkPolicy default/x)`}},
		{"endPort below port", policyDoc("x", `  podSelector: {}
  ingress:
  - ports: [{port: 80, endPort: 79}]
`), []string{"bad.yaml:1: spec.ingress[0].ports[0].endPort: invalid value 79: must be greater than or equal to `port` (80) (NetworkPolicy default/x)"}},
		{"endPort with named port", policyDoc("x", `  podSelector: {}
  ingress:
  - ports: [{port: http, endPort: 90}]
`), []string{"bad.yaml:1: spec.ingress[0].ports[0].endPort: may not be specified when `port` is a named port (\"http\") (NetworkPolicy default/x)"}},
		{"endPort without port", policyDoc("x", `  podSelector: {}
  egress:
  - ports: [{protocol: UDP, endPort: 90}]
`), []string{"bad.yaml:1: spec.egress[0].ports[0].endPort: may not be specified when `port` is not specified (NetworkPolicy default/x)"}},
		{"port zero", policyDoc("x", `  podSelector: {}
  ingress:
  - ports: [{port: 0}]
`), []string{"bad.yaml:1: spec.ingress[0].ports[0].port: invalid value 0: must be between 1 and 65535, inclusive (NetworkPolicy default/x)"}},
		{"port too big", policyDoc("x", `  podSelector: {}
  ingress:
  - ports: [{port: 65536}]
`), []string{"bad.yaml:1: spec.ingress[0].ports[0].port: invalid value 65536: must be between 1 and 65535, inclusive (NetworkPolicy default/x)"}},
		{"endPort too big", policyDoc("x", `  podSelector: {}
  ingress:
  - ports: [{port: 80, endPort: 70000}]
`), []string{"bad.yaml:1: spec.ingress[0].ports[0].endPort: invalid value 70000: must be between 1 and 65535, inclusive (NetworkPolicy default/x)"}},
		{"bad named port", policyDoc("x", `  podSelector: {}
  ingress:
  - ports: [{port: "80"}]
`), []string{`bad.yaml:1: spec.ingress[0].ports[0].port: invalid port name "80": must contain at least one letter (a-z) (NetworkPolicy default/x)`}},
		{"unknown protocol", policyDoc("x", `  podSelector: {}
  ingress:
  - ports: [{port: 80, protocol: ICMP}]
`), []string{`bad.yaml:1: spec.ingress[0].ports[0].protocol: unsupported value "ICMP": supported values: "TCP", "UDP", "SCTP" (NetworkPolicy default/x)`}},
		{"lower-case protocol", policyDoc("x", `  podSelector: {}
  ingress:
  - ports: [{port: 80, protocol: tcp}]
`), []string{`bad.yaml:1: spec.ingress[0].ports[0].protocol: unsupported value "tcp": supported values: "TCP", "UDP", "SCTP" (NetworkPolicy default/x)`}},
		{"bad operator", policyDoc("x", `  podSelector:
    matchExpressions: [{key: app, operator: Equals, values: [a]}]
`), []string{`bad.yaml:1: spec.podSelector.matchExpressions[0].operator: invalid value "Equals": not a valid selector operator (NetworkPolicy default/x)`}},
		{"In without values", policyDoc("x", `  podSelector: {}
  ingress:
  - from:
    - namespaceSelector:
        matchExpressions: [{key: ns, operator: In}]
`), []string{"bad.yaml:1: spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values: required value: must be specified when `operator` is 'In' or 'NotIn' (NetworkPolicy default/x)"}},
		{"Exists with values", policyDoc("x", `  podSelector: {}
  egress:
  - to:
    - podSelector:
        matchExpressions: [{key: app, operator: Exists, values: [a]}]
`), []string{"bad.yaml:1: spec.egress[0].to[0].podSelector.matchExpressions[0].values: forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist' (NetworkPolicy default/x)"}},
		{"bad label key", policyDoc("x", `  podSelector:
    matchLabels: {"bad key": a}
`), []string{`bad.yaml:1: spec.podSelector.matchLabels: invalid value "bad key": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') (NetworkPolicy default/x)`}},
		{"bad label value in expression", policyDoc("x", `  podSelector:
    matchExpressions: [{key: app, operator: NotIn, values: ["a b"]}]
`), []string{`bad.yaml:1: spec.podSelector.matchExpressions[0].values[0]: invalid value "a b": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?') (NetworkPolicy default/x)`}},
		{"bad policyType", policyDoc("x", `  podSelector: {}
  policyTypes: [Ingress, Outgress]
`), []string{`bad.yaml:1: spec.policyTypes[1]: unsupported value "Outgress": supported values: "Ingress", "Egress" (NetworkPolicy default/x)`}},
		{"too many policyTypes", policyDoc("x", `  podSelector: {}
  policyTypes: [Ingress, Egress, Ingress]
`), []string{`bad.yaml:1: spec.policyTypes: may not specify more than two policyTypes (NetworkPolicy default/x)`}},
		{"empty peer", policyDoc("x", `  podSelector: {}
  ingress:
  - from: [{}]
`), []string{`bad.yaml:1: spec.ingress[0].from[0]: required value: must specify a peer (podSelector, namespaceSelector or ipBlock) (NetworkPolicy default/x)`}},
		{"ipBlock with selector", policyDoc("x", `  podSelector: {}
  ingress:
  - from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]
`), []string{`bad.yaml:1: spec.ingress[0].from[0]: forbidden: may not specify both ipBlock and another peer (NetworkPolicy default/x)`}},
		{"missing name", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: default}\nspec: {podSelector: {}}\n",
			[]string{`bad.yaml:1: metadata.name: required value: name or generateName is required (NetworkPolicy default/)`}},
		{"bad name", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: Bad_Name}\nspec: {podSelector: {}}\n",
			[]string{`bad.yaml:1: metadata.name: invalid value "Bad_Name": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*') (NetworkPolicy default/Bad_Name)`}},
		{"pod without name", "apiVersion: v1\nkind: Pod\nmetadata: {namespace: x}\nspec: {containers: [{name: c}]}\n",
			[]string{`bad.yaml:1: metadata.name: required value: name or generateName is required (Pod x/)`}},
		{"bad pod IP", "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c}]}\nstatus: {podIP: 10.0.0.300}\n",
			[]string{`bad.yaml:1: status.podIP: "10.0.0.300" is not a valid IP address (Pod x/a)`}},
		{"bad pod IPs entry", "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c}]}\nstatus: {podIP: 10.0.0.3, podIPs: [{ip: 10.0.0.3}, {ip: 'fd00::zz'}]}\n",
			[]string{`bad.yaml:1: status.podIPs[1].ip: "fd00::zz" is not a valid IP address (Pod x/a)`}},
		{"podIPs disagree with podIP", "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c}]}\nstatus: {podIP: 10.0.0.3, podIPs: [{ip: 10.0.0.4}]}\n",
			[]string{`bad.yaml:1: status.podIPs[0].ip: "10.0.0.4" must be equal to status.podIP "10.0.0.3" (Pod x/a)`}},
		{"two IPv4 pod IPs", "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c}]}\nstatus: {podIPs: [{ip: 10.0.0.4}, {ip: 10.0.0.5}]}\n",
			[]string{`bad.yaml:1: status.podIPs[1].ip: "10.0.0.5": may specify no more than one IP for each IP family (Pod x/a)`}},
		{"leading zeros in pod IP", "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c}]}\nstatus: {podIP: 010.0.0.4}\n",
			[]string{`bad.yaml:1: status.podIP: "010.0.0.4" is not a valid IP address (Pod x/a)`}},
		{"container port protocol", "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c, ports: [{containerPort: 80, protocol: ICMP}]}]}\n",
			[]string{`bad.yaml:1: spec.containers[0].ports[0].protocol: unsupported value "ICMP": supported values: "TCP", "UDP", "SCTP" (Pod x/a)`}},
		{"container port range", "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c, ports: [{containerPort: 0}]}]}\n",
			[]string{`bad.yaml:1: spec.containers[0].ports[0].containerPort: invalid value 0: must be between 1 and 65535, inclusive (Pod x/a)`}},
		{"duplicate port name", "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c, ports: [{name: http, containerPort: 80}]}, {name: d, ports: [{name: http, containerPort: 81}]}]}\n",
			[]string{`bad.yaml:1: spec.containers[1].ports[0].name: duplicate value "http" (Pod x/a)`}},
		{"bad node address", "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nstatus: {addresses: [{type: Hostname, address: n1}, {type: InternalIP, address: not-an-ip}]}\n",
			[]string{`bad.yaml:1: status.addresses[1].address: "not-an-ip" is not a valid IP address (Node n1)`}},
		{"bad namespace name", "apiVersion: v1\nkind: Namespace\nmetadata: {name: a.b}\n",
			[]string{`bad.yaml:1: metadata.name: invalid value "a.b": must not contain dots (Namespace a.b)`}},
		{"wrong type", policyDoc("x", `  podSelector: {}
  ingress:
  - ports: [{port: 80}]
  - ports: [{port: 81}, {port: [80]}]
`), []string{`bad.yaml:1: spec.ingress[1].ports[1].port: expected an integer, got array (NetworkPolicy default/x)`}},
		{"wrong type in a list", policyDoc("x", `  podSelector: {}
  policyTypes: [Ingress, 5]
`), []string{`bad.yaml:1: spec.policyTypes[1]: expected a string, got number (NetworkPolicy default/x)`}},
		{"wrong type of a label", policyDoc("x", `  podSelector: {matchLabels: {version: 2}}
`), []string{`bad.yaml:1: spec.podSelector.matchLabels.version: expected a string, got number (NetworkPolicy default/x)`}},
		{"unknown field", policyDoc("x", `  podSelecter: {matchLabels: {app: a}}
`), []string{`bad.yaml:1: spec.podSelecter: unknown field (NetworkPolicy default/x)`}},
		{"wrong apiVersion", "apiVersion: extensions/v1beta1\nkind: NetworkPolicy\nmetadata: {name: x}\nspec: {podSelector: {}}\n",
			[]string{`bad.yaml:1: apiVersion: unsupported value "extensions/v1beta1": NetworkPolicy is read as apiVersion networking.k8s.io/v1 (NetworkPolicy default/x)`}},
		{"no kind", "apiVersion: v1\nmetadata: {name: x}\n",
			[]string{`bad.yaml:1: kind: required value: object has no kind`}},
		{"several errors in one policy", policyDoc("x", `  podSelector: {}
  ingress:
  - ports: [{port: 0, protocol: ICMP}]
    from: [{ipBlock: {cidr: 10.0.0.0/24, except: [10.0.1.0/24]}}]
`), []string{
			`bad.yaml:1: spec.ingress[0].ports[0].protocol: unsupported value "ICMP": supported values: "TCP", "UDP", "SCTP" (NetworkPolicy default/x)`,
			`bad.yaml:1: spec.ingress[0].ports[0].port: invalid value 0: must be between 1 and 65535, inclusive (NetworkPolicy default/x)`,
			`bad.yaml:1: spec.ingress[0].from[0].ipBlock.except[0]: "10.0.1.0/24" is not within cidr "10.0.0.0/24" (NetworkPolicy default/x)`,
		}},
		{"valid policy", policyDoc("x", `  podSelector: {matchExpressions: [{key: app, operator: DoesNotExist}]}
  ingress:
  - ports: [{port: 80, endPort: 80}, {port: http}, {protocol: SCTP}]
    from: [{ipBlock: {cidr: 10.0.0.1/8, except: [10.1.0.0/16]}}, {podSelector: {}, namespaceSelector: {}}]
`), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Decode("bad.yaml", []byte(tt.doc))
			got := errorStrings(t, err)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("errors:\n got %q\nwant %q", got, tt.want)
			}
			if c == nil {
				t.Fatal("nil Cluster")
			}
			n := len(c.Policies) + len(c.Pods) + len(c.Nodes)
			for _, ns := range c.Namespaces {
				if ns.Name == "a.b" {
					n++
				}
			}
			if want := map[bool]int{true: 0, false: 1}[tt.want != nil]; n != want {
				t.Errorf("%d objects kept, want %d", n, want)
			}
		})
	}
}

// One bad object must not hide the others: the valid ones are kept and
// every problem is listed, with the number of its document.
func TestInvalidObjectsDropped(t *testing.T) {
	in := policyDoc("good1", "  podSelector: {}\n") + "---\n" +
		policyDoc("bad1", "  podSelector: {}\n  ingress: [{ports: [{port: 0}]}]\n") + "---\n" +
		"apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nstatus: {podIP: nope}\n" + "---\n" +
		policyDoc("good2", "  podSelector: {}\n")
	c, err := Decode("f.yaml", []byte(in))
	got := errorStrings(t, err)
	want := []string{
		"f.yaml:2: spec.ingress[0].ports[0].port: invalid value 0: must be between 1 and 65535, inclusive (NetworkPolicy default/bad1)",
		`f.yaml:3: status.podIP: "nope" is not a valid IP address (Pod default/p)`,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("errors:\n got %q\nwant %q", got, want)
	}
	if names := policyNames(c); !reflect.DeepEqual(names, []string{"default/good1", "default/good2"}) {
		t.Errorf("policies %v", names)
	}
	if len(c.Pods) != 0 {
		t.Errorf("invalid pod kept")
	}
}

func policyNames(c *Cluster) []string {
	var out []string
	for _, p := range c.Policies {
		out = append(out, p.Namespace+"/"+p.Name)
	}
	return out
}

func TestDefaults(t *testing.T) {
	in := `apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: a}}
---
apiVersion: v1
kind: Namespace
metadata: {name: y, labels: {kubernetes.io/metadata.name: custom}}
---
apiVersion: v1
kind: Pod
metadata: {name: a}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 80}, {containerPort: 53, protocol: UDP}]}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ingress-only}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 80}, {port: 53, protocol: UDP}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: with-egress, namespace: x}
spec:
  podSelector: {}
  egress: [{ports: [{port: 443}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: empty-egress, namespace: x}
spec:
  podSelector: {}
  egress: []
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: explicit, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
`
	c, err := Decode("d.yaml", []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	nsLabels := map[string]map[string]string{}
	for _, ns := range c.Namespaces {
		nsLabels[ns.Name] = ns.Labels
	}
	wantNS := map[string]map[string]string{
		"x":       {"team": "a", "kubernetes.io/metadata.name": "x"},
		"y":       {"kubernetes.io/metadata.name": "custom"},
		"default": {"kubernetes.io/metadata.name": "default"}, // implicit: the pod lives there
	}
	if !reflect.DeepEqual(nsLabels, wantNS) {
		t.Errorf("namespaces %v, want %v", nsLabels, wantNS)
	}
	if len(c.Pods) != 1 || c.Pods[0].Namespace != "default" {
		t.Fatalf("pods %v", c.Pods)
	}
	ports := c.Pods[0].Spec.Containers[0].Ports
	if ports[0].Protocol != corev1.ProtocolTCP || ports[1].Protocol != corev1.ProtocolUDP {
		t.Errorf("container port protocols %q %q", ports[0].Protocol, ports[1].Protocol)
	}
	if ports[0].HostPort != 0 || c.Pods[0].Spec.DNSPolicy != corev1.DNSClusterFirst {
		t.Errorf("hostPort %d, dnsPolicy %q", ports[0].HostPort, c.Pods[0].Spec.DNSPolicy)
	}
	hn := &corev1.Pod{Spec: corev1.PodSpec{HostNetwork: true, Containers: []corev1.Container{{Ports: []corev1.ContainerPort{{ContainerPort: 9100}}}}}}
	DefaultPod(hn)
	if got := hn.Spec.Containers[0].Ports[0]; got.HostPort != 9100 || got.Protocol != corev1.ProtocolTCP || hn.Namespace != "default" {
		t.Errorf("hostNetwork pod defaults: %+v in %q", got, hn.Namespace)
	}
	types := map[string][]networkingv1.PolicyType{}
	for _, p := range c.Policies {
		types[p.Namespace+"/"+p.Name] = p.Spec.PolicyTypes
	}
	in1, eg := networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress
	wantTypes := map[string][]networkingv1.PolicyType{
		"default/ingress-only": {in1},
		"x/with-egress":        {in1, eg},
		"x/empty-egress":       {in1},
		"x/explicit":           {eg},
	}
	if !reflect.DeepEqual(types, wantTypes) {
		t.Errorf("policyTypes %v, want %v", types, wantTypes)
	}
	pp := c.Policies[0].Spec.Ingress[0].Ports
	if *pp[0].Protocol != corev1.ProtocolTCP || *pp[1].Protocol != corev1.ProtocolUDP {
		t.Errorf("policy port protocols %q %q", *pp[0].Protocol, *pp[1].Protocol)
	}
}

func TestListsAndSkippedKinds(t *testing.T) {
	in := `apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: svc}
  spec: {ports: [{port: 80}]}
- apiVersion: v1
  kind: List
  items:
  - apiVersion: v1
    kind: Pod
    metadata: {name: a, namespace: x}
    status: {podIP: 10.0.0.1}
  - apiVersion: apps/v1
    kind: Deployment
    metadata: {name: d}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: p, namespace: x}
  spec: {podSelector: {}}
- apiVersion: v1
  kind: Node
  metadata: {name: n1}
  status: {addresses: [{type: InternalIP, address: 192.168.1.1}]}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cm}
data: {a: b}
`
	c, err := Decode("list.yaml", []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Pods) != 1 || c.Pods[0].Name != "a" || len(c.Policies) != 1 || len(c.Nodes) != 1 || len(c.Namespaces) != 1 {
		t.Errorf("got %d pods, %d policies, %d nodes, %d namespaces", len(c.Pods), len(c.Policies), len(c.Nodes), len(c.Namespaces))
	} // Skipped kinds are listed, never dropped silently.
	var skipped []string
	for _, fe := range c.Skipped {
		skipped = append(skipped, fe.Error())
	}
	want := []string{
		"list.yaml:1: kind Service (v1) is not read by nfqpolicy (it reads Namespace, Node, Pod, NetworkPolicy and ClusterNetworkPolicy); object skipped (Service svc)",
		"list.yaml:1: kind Deployment (apps/v1) is not read by nfqpolicy (it reads Namespace, Node, Pod, NetworkPolicy and ClusterNetworkPolicy); object skipped (Deployment d)",
		"list.yaml:2: kind ConfigMap (v1) is not read by nfqpolicy (it reads Namespace, Node, Pod, NetworkPolicy and ClusterNetworkPolicy); object skipped (ConfigMap cm)",
	}
	if !reflect.DeepEqual(skipped, want) {
		t.Errorf("skipped:\n got %q\nwant %q", skipped, want)
	}
	c, err = Decode("anp.yaml", []byte("apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {name: a}\nspec: {priority: 1}\n"))
	if err != nil || len(c.Skipped) != 1 || !strings.Contains(c.Skipped[0].Msg, "replaced it by ClusterNetworkPolicy") {
		t.Errorf("AdminNetworkPolicy: %v, skipped %v", err, c.Skipped)
	}
}

func TestJSON(t *testing.T) {
	in := `{
    "apiVersion": "v1",
    "items": [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "web", "namespace": "shop", "creationTimestamp": "2026-01-02T03:04:05Z"},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                     "ingress": [{"ports": [{"port": 8080, "protocol": "TCP"}, {"port": "metrics"}]}]}
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "ports": [{"name": "metrics", "containerPort": 9090}]}]},
            "status": {"phase": "Running", "podIP": "10.1.0.5", "podIPs": [{"ip": "10.1.0.5"}]}
        }
    ],
    "kind": "List",
    "metadata": {"resourceVersion": ""}
}
{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}}
`
	c, err := Decode("kubectl.json", []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Policies) != 1 || len(c.Pods) != 1 || len(c.Namespaces) != 2 {
		t.Fatalf("got %d policies, %d pods, %d namespaces", len(c.Policies), len(c.Pods), len(c.Namespaces))
	}
	ports := c.Policies[0].Spec.Ingress[0].Ports
	if ports[0].Port.IntValue() != 8080 || ports[1].Port.StrVal != "metrics" || *ports[1].Protocol != corev1.ProtocolTCP {
		t.Errorf("ports %+v", ports)
	}
	_, err = Decode("bad.json", []byte(`{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": 5}}`))
	if got := errorStrings(t, err); len(got) != 1 || got[0] != "bad.json:1: metadata.name: expected a string, got number (Pod default/)" {
		t.Errorf("type error in JSON: %q", got)
	}
}

func TestBrokenYAML(t *testing.T) {
	in := policyDoc("first", "  podSelector: {}\n") + "---\n" +
		"apiVersion: v1\nkind: Pod\nmetadata: {name: a\n  namespace: x\n" + "---\n" +
		"# only a comment\n---\n" +
		policyDoc("third", "  podSelector: {}\n") + "---\n" +
		"key: [unclosed\n" + "---\n" +
		"apiVersion: v1\nkind: Pod\nmetadata:\n  name: b\n\tnamespace: x\n"
	c, err := Decode("broken.yaml", []byte(in))
	got := errorStrings(t, err)
	want := []string{
		"broken.yaml:2: invalid YAML: line 9: did not find expected ',' or '}'",
		"broken.yaml:4: invalid YAML: line 20: did not find expected ',' or ']'",
		"broken.yaml:5: invalid YAML: line 26: found a tab character that violates indentation",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("errors:\n got %q\nwant %q", got, want)
	}
	if names := policyNames(c); !reflect.DeepEqual(names, []string{"default/first", "default/third"}) {
		t.Errorf("policies %v", names)
	}
	// The line numbers point into the file.
	lines := strings.Split(in, "\n")
	for _, l := range []struct {
		n    int
		text string
	}{{9, "metadata: {name: a"}, {20, "key: [unclosed"}, {26, "\tnamespace: x"}} {
		if lines[l.n-1] != l.text {
			t.Errorf("line %d is %q, want %q", l.n, lines[l.n-1], l.text)
		}
	}
}

func TestAnchorsAndMergeKeys(t *testing.T) {
	in := `apiVersion: v1
kind: List
items:
- &base
  apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: a, namespace: x, labels: &labels {team: a}}
  spec: {podSelector: {matchLabels: *labels}}
- <<: *base
  metadata: {name: b, namespace: x}
- <<: [{metadata: {name: c, namespace: y}}, *base]
  spec: {podSelector: {}}
`
	c, err := Decode("merge.yaml", []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, p := range c.Policies {
		got[p.Namespace+"/"+p.Name] = fmt.Sprint(p.Spec.PodSelector.MatchLabels)
	}
	want := map[string]string{"x/a": "map[team:a]", "x/b": "map[team:a]", "y/c": "map[]"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("policies %v, want %v", got, want)
	}
	_, err = Decode("merge.yaml", []byte("a: &a [1]\nb: {<<: *a}\n"))
	if got := errorStrings(t, err); len(got) != 1 || !strings.Contains(got[0], "merge key (<<) must refer to a mapping") {
		t.Errorf("merge of a list: %q", got)
	}
}

func TestAliasBomb(t *testing.T) {
	in := "a: &a [x,x,x,x,x,x,x,x,x,x]\n"
	prev := "a"
	for _, n := range []string{"b", "c", "d", "e", "f", "g", "h", "i"} {
		in += n + ": &" + n + " [*" + prev + ",*" + prev + ",*" + prev + ",*" + prev + ",*" + prev + ",*" + prev + ",*" + prev + ",*" + prev + ",*" + prev + ",*" + prev + "]\n"
		prev = n
	}
	done := make(chan error, 1)
	go func() { _, err := Decode("bomb.yaml", []byte(in)); done <- err }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "aliases expand to more than") {
			t.Errorf("err = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("alias expansion not bounded")
	}
}

func TestDuplicates(t *testing.T) {
	in := policyDoc("x", "  podSelector: {}\n") + "---\n" + policyDoc("x", "  podSelector: {matchLabels: {a: b}}\n")
	c, err := Decode("dup.yaml", []byte(in))
	got := errorStrings(t, err)
	want := []string{"dup.yaml:2: metadata.name: duplicate object: already defined at dup.yaml:1 (NetworkPolicy default/x)"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("errors %q, want %q", got, want)
	}
	if len(c.Policies) != 1 || len(c.Policies[0].Spec.PodSelector.MatchLabels) != 0 {
		t.Errorf("the first definition must be kept: %+v", c.Policies)
	}
}

func TestLoadFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("b.yaml", policyDoc("b", "  podSelector: {}\n"))
	write("a.json", `{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "a"}, "spec": {"podSelector": {}}}`)
	write("c.yml", policyDoc("c", "  podSelector: {}\n"))
	write("notes.txt", "not read")
	c, err := LoadFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	if names := policyNames(c); !reflect.DeepEqual(names, []string{"default/a", "default/b", "default/c"}) {
		t.Errorf("policies %v", names)
	}
	_, err = LoadFiles(filepath.Join(dir, "missing.yaml"))
	if err == nil || !strings.Contains(err.Error(), "missing.yaml: no such file or directory") {
		t.Errorf("missing file: %v", err)
	}
	var ve *ValidationError
	if errors.As(err, &ve) {
		t.Errorf("a missing file is not a validation error")
	}
	if _, err := LoadFiles(t.TempDir()); err == nil {
		t.Error("an empty directory must be an error")
	}
	if _, err := LoadFiles(); err == nil {
		t.Error("no paths must be an error")
	}
}

func TestPublicCorpusLoads(t *testing.T) {
	files, err := filepath.Glob("../testdata/conformance/public/*.yaml")
	if err != nil || len(files) < 50 {
		t.Fatalf("corpus: %d files, %v", len(files), err)
	}
	for _, f := range files {
		c, err := LoadFiles(f)
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if len(c.Pods) == 0 || len(c.Namespaces) == 0 {
			t.Errorf("%s: %d pods, %d namespaces", f, len(c.Pods), len(c.Namespaces))
		}
	}
}

func TestKNPWorkload(t *testing.T) {
	start, startCPU := time.Now(), cpuTime(t)
	c, err := LoadFiles("../testdata/bench/knp-workload.yaml")
	took, cpu := time.Since(start), cpuTime(t)-startCPU
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Pods) != 1000 || len(c.Policies) != 100 || len(c.Namespaces) != 10 {
		t.Errorf("got %d pods, %d policies, %d namespaces", len(c.Pods), len(c.Policies), len(c.Namespaces))
	}
	t.Logf("knp-workload.yaml loaded in %v (%v CPU)", took, cpu)
	if cpu > time.Second && !testing.Short() && !raceEnabled {
		t.Errorf("loading took %v of CPU", cpu)
	}
}

// Real `kubectl get -o yaml` output (managedFields, ownerReferences,
// generateName, status conditions...) loads without complaint.
func TestKubectlOutput(t *testing.T) {
	c, err := LoadFiles("testdata/kubectl-pod.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Pods) != 1 || c.Pods[0].Name != "web-7d9f8b6c5d-abcde" || !PodActive(c.Pods[0]) || len(c.Namespaces) != 1 {
		t.Errorf("got %d pods, %d namespaces", len(c.Pods), len(c.Namespaces))
	}
}
