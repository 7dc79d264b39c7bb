package lint

import (
	"reflect"
	"strings"
	"testing"

	"github.com/nfqpolicy/nfqpolicy/cluster"
)

// base is a namespace with a web pod (named port http/TCP 80 and dns
// UDP 53) and a client pod; every case adds to it.
const base = `apiVersion: v1
kind: Namespace
metadata: {name: app, labels: {team: a}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: app, labels: {app: web}}
spec:
  containers: [{name: c, ports: [{name: http, containerPort: 80}, {name: dns, containerPort: 53, protocol: UDP}]}]
status: {phase: Running, podIP: 10.244.1.10}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: app, labels: {app: client}}
spec: {containers: [{name: c}]}
status: {phase: Running, podIP: 10.244.2.20}
---
apiVersion: v1
kind: Pod
metadata: {name: old, namespace: app, labels: {app: old}}
spec: {containers: [{name: c, ports: [{containerPort: 80, hostPort: 8080}]}]}
status: {phase: Succeeded, podIP: 10.244.2.30}
`

func policy(name, spec string) string {
	return "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: " + name + ", namespace: app}\nspec:\n" + spec
}

const hostNetworkPod = `---
apiVersion: v1
kind: Pod
metadata: {name: hn, namespace: app, labels: {app: hn}}
spec: {hostNetwork: true, dnsPolicy: ClusterFirstWithHostNet, nodeName: n1, containers: [{name: c, ports: [{containerPort: 9100, hostPort: 9100}]}]}
status: {phase: Running, hostIP: 192.168.1.1, podIP: 192.168.1.1}
`

func TestLint(t *testing.T) {
	tests := []struct {
		name string
		objs string
		want []string
	}{
		{"clean", base + policy("web", `  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: http}, {port: dns, protocol: UDP}]
`) + policy("client-egress", `  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: http}]
  - ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]
  - to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.244.0.0/16]}}]
`) + hostNetworkPod, nil},
		{"selects nothing", base + policy("typo", `  podSelector: {matchLabels: {app: wbe}}
`), []string{"warning: NetworkPolicy app/typo: spec.podSelector: selects no pod in namespace app: this policy has no effect"}},
		{"selects only a terminated pod", base + policy("old", `  podSelector: {matchLabels: {app: old}}
`), []string{"warning: NetworkPolicy app/old: spec.podSelector: selects no pod in namespace app: this policy has no effect"}},
		{"selects only hostNetwork pods", base + hostNetworkPod + policy("hn", `  podSelector: {matchLabels: {app: hn}}
  policyTypes: [Ingress]
`), []string{"warning: NetworkPolicy app/hn: spec.podSelector: selects only hostNetwork pods (pod app/hn): NetworkPolicy does not apply to pods with hostNetwork, so this policy has no effect"}},
		{"hostNetwork pod without ClusterFirstWithHostNet", base + strings.Replace(hostNetworkPod, "dnsPolicy: ClusterFirstWithHostNet, ", "", 1),
			[]string{"warning: Pod app/hn: spec.dnsPolicy: hostNetwork pod with dnsPolicy ClusterFirst resolves names with the node's DNS settings, not the cluster's; set dnsPolicy: ClusterFirstWithHostNet"}},
		{"hostPort", base + `---
apiVersion: v1
kind: Pod
metadata: {name: hp, namespace: app}
spec: {containers: [{name: c}, {name: d, ports: [{containerPort: 80}, {containerPort: 443, hostPort: 8443}]}]}
status: {phase: Running, podIP: 10.244.2.40}
`, []string{"warning: Pod app/hp: spec.containers[1].ports[1].hostPort: hostPort 8443 is in use: not recommended in production (it limits where the pod can be scheduled and exposes it on the node's address); use a NodePort Service instead"}},
		{"egress without DNS", base + policy("deny-egress", `  podSelector: {}
  policyTypes: [Egress]
`), []string{"warning: NetworkPolicy app/deny-egress: spec.policyTypes: isolates 2 pods (app/web, app/client) for egress and no egress rule of the policies selecting them allows DNS (UDP and TCP port 53)"}},
		{"egress with UDP DNS only", base + policy("udp-dns", `  podSelector: {matchLabels: {app: client}}
  egress:
  - to: [{namespaceSelector: {}}]
    ports: [{port: 53, protocol: UDP}]
`), []string{"warning: NetworkPolicy app/udp-dns: spec.egress: isolates pod app/client for egress and no egress rule of the policies selecting them allows DNS over TCP (port 53), which resolvers fall back to for large answers"}},
		{"DNS allowed by another policy and a port range", base + policy("egress-web", `  podSelector: {matchLabels: {app: client}}
  egress: [{ports: [{port: 80}]}]
`) + policy("dns", `  podSelector: {}
  egress:
  - ports: [{port: 50, endPort: 60, protocol: UDP}, {port: 53}]
`), nil},
		{"DNS allowed by named port", base + policy("dns-named", `  podSelector: {matchLabels: {app: client}}
  egress:
  - to: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: dns, protocol: UDP}, {port: 53, protocol: TCP}]
`), nil},
		{"ingress named port nobody declares", base + policy("web", `  podSelector: {matchLabels: {app: web}}
  ingress:
  - ports: [{port: 80}, {port: https}]
`), []string{`warning: NetworkPolicy app/web: spec.ingress[0].ports[1].port: named port "https" is declared by no selected pod`}},
		{"ingress named port of another protocol", base + policy("web", `  podSelector: {matchLabels: {app: web}}
  ingress:
  - ports: [{port: dns}]
`), []string{`warning: NetworkPolicy app/web: spec.ingress[0].ports[0].port: named port "dns" is declared by no selected pod for protocol TCP (only for UDP)`}},
		{"ingress named port declared only by unselected pods", base + policy("client", `  podSelector: {matchLabels: {app: client}}
  ingress:
  - ports: [{port: http}]
`), []string{`warning: NetworkPolicy app/client: spec.ingress[0].ports[0].port: named port "http" is declared by no selected pod`}},
		{"egress named port the peers do not declare", base + policy("client", `  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - ports: [{port: 53, protocol: UDP}, {port: 53}]
  - to: [{namespaceSelector: {matchLabels: {team: a}}, podSelector: {matchLabels: {app: client}}}]
    ports: [{port: http}]
`), []string{`warning: NetworkPolicy app/client: spec.egress[1].ports[0].port: named port "http" is declared by no pod the rule's peers select`}},
		{"egress named port to any pod", base + policy("client", `  podSelector: {matchLabels: {app: client}}
  egress:
  - ports: [{port: 53, protocol: UDP}, {port: 53}]
  - to: [{ipBlock: {cidr: 192.0.2.0/24}}]
    ports: [{port: http}, {port: metrics}]
`), []string{`warning: NetworkPolicy app/client: spec.egress[1].ports[1].port: named port "metrics" is declared by no pod the rule's peers select`}},
		{"ipBlock covering pods", base + policy("web", `  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{ipBlock: {cidr: 10.244.0.0/16, except: [10.244.1.0/24]}}]
`), []string{"warning: NetworkPolicy app/web: spec.ingress[0].from[0].ipBlock: cidr 10.244.0.0/16 covers the addresses of pod app/client: ipBlock is meant for addresses outside the cluster (pod IPs are ephemeral; select pods with podSelector/namespaceSelector)"}},
		{"ipBlock in egress covering pods", base + policy("client", `  podSelector: {matchLabels: {app: client}}
  egress:
  - ports: [{port: 53, protocol: UDP}, {port: 53}]
  - to: [{ipBlock: {cidr: 0.0.0.0/0}}]
`), []string{"warning: NetworkPolicy app/client: spec.egress[1].to[0].ipBlock: cidr 0.0.0.0/0 covers the addresses of 2 pods (app/web, app/client): ipBlock is meant for addresses outside the cluster (pod IPs are ephemeral; select pods with podSelector/namespaceSelector)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := cluster.Decode(tt.name+".yaml", []byte(tt.objs))
			if err != nil {
				t.Fatalf("test snapshot invalid: %v", err)
			}
			var got []string
			for _, f := range Lint(c) {
				got = append(got, f.String())
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("findings:\n got %q\nwant %q", got, tt.want)
			}
		})
	}
}

func TestPodListTruncates(t *testing.T) {
	objs := base
	for _, n := range []string{"p1", "p2", "p3", "p4"} {
		objs += "---\napiVersion: v1\nkind: Pod\nmetadata: {name: " + n + ", namespace: app}\nspec: {containers: [{name: c}]}\nstatus: {phase: Running}\n"
	}
	objs += policy("deny", "  podSelector: {}\n  policyTypes: [Egress]\n")
	c, err := cluster.Decode("t.yaml", []byte(objs))
	if err != nil {
		t.Fatal(err)
	}
	fs := Lint(c)
	if len(fs) != 1 || !strings.Contains(fs[0].Message, "isolates 6 pods (app/web, app/client, app/p1 and 3 more) for egress") || fs[0].Check != CheckNoDNSEgress {
		t.Errorf("findings %v", fs)
	}
}

func TestKNPWorkloadLints(t *testing.T) {
	c, err := cluster.LoadFiles("../testdata/bench/knp-workload.yaml")
	if err != nil {
		t.Fatal(err)
	}
	fs := Lint(c)
	checks := map[string]int{}
	for _, f := range fs {
		checks[f.Check]++
	}
	t.Logf("%d findings: %v", len(fs), checks)
}
