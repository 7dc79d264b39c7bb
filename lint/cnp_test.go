package lint

import (
	"reflect"
	"strings"
	"testing"

	"github.com/nfqpolicy/nfqpolicy/cluster"
)

func cnp(name, spec string) string {
	return "---\napiVersion: policy.networking.k8s.io/v1beta1\nkind: ClusterNetworkPolicy\nmetadata: {name: " + name + "}\nspec:\n" + spec
}

const dnsPod = `---
apiVersion: v1
kind: Pod
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec: {containers: [{name: c, ports: [{name: dns, containerPort: 53, protocol: UDP}]}]}
status: {phase: Running, podIP: 10.244.0.53}
`

func TestLintClusterPolicies(t *testing.T) {
	app := "  subject: {namespaces: {matchLabels: {team: a}}}\n"
	tests := []struct {
		name string
		objs string
		want []string
	}{
		{"clean", base + dnsPod + cnp("guard", "  tier: Admin\n  priority: 1\n"+app+`  egress:
  - {action: Accept, to: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {k8s-app: kube-dns}}}}], protocols: [{udp: {destinationPort: {number: 53}}}]}
  - {action: Deny, to: [{networks: [0.0.0.0/0, "::/0"]}]}
`), nil},
		{"admin deny cuts DNS", base + dnsPod + cnp("lockdown", "  tier: Admin\n  priority: 1\n"+app+`  egress:
  - {name: nothing-out, action: Deny, to: [{networks: [0.0.0.0/0, "::/0"]}]}
`), []string{"warning: ClusterNetworkPolicy lockdown: spec.egress[0]: denies DNS (port 53) for 2 pods (app/web, app/client) before any Admin rule accepts or passes it: no NetworkPolicy can allow it back; add an Accept (or Pass) rule for DNS to the cluster's DNS pods before it"}},
		{"admin deny to other namespaces keeps DNS", base + dnsPod + cnp("iso", "  tier: Admin\n  priority: 1\n"+app+`  egress:
  - {action: Deny, to: [{namespaces: {matchLabels: {team: b}}}]}
`), nil},
		{"domainNames", base + cnp("fqdn", "  tier: Admin\n  priority: 1\n"+app+`  egress:
  - {action: Accept, to: [{domainNames: [example.com, "*.example.org"]}]}
  - {action: Deny, to: [{networks: [203.0.113.0/24]}]}
`), []string{"warning: ClusterNetworkPolicy fqdn: spec.egress[0]: domainNames peers (example.com, *.example.org) are not enforced by nfqpolicy: they match no traffic, so this Accept rule lets nothing through by name and those flows fall to the rules and tiers after it (typically a Deny); use networks peers with the addresses instead"}},
		{"subject selects only hostNetwork pods", base + hostNetworkPod + cnp("hn", "  tier: Baseline\n  priority: 1\n  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: hn}}}}\n  ingress: [{action: Deny, from: [{namespaces: {}}]}]\n"),
			[]string{"warning: ClusterNetworkPolicy hn: spec.subject: selects only hostNetwork pods (pod app/hn): ClusterNetworkPolicy never applies to them, so this policy has no effect"}},
		{"subject selects nothing", base + cnp("none", "  tier: Baseline\n  priority: 1\n  subject: {namespaces: {matchLabels: {team: z}}}\n"),
			[]string{"warning: ClusterNetworkPolicy none: spec.subject: selects no pod: this policy has no effect"}},
		{"shadowed by an earlier rule", base + cnp("order", "  tier: Admin\n  priority: 1\n"+app+`  ingress:
  - {action: Pass, from: [{namespaces: {}}]}
  - {action: Deny, from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: client}}}}], protocols: [{tcp: {destinationPort: {number: 80}}}]}
`), []string{"warning: ClusterNetworkPolicy order: spec.ingress[1]: never decides: the earlier rule spec.ingress[0] (Pass) matches every flow this rule matches first (for the pods selected now)"}},
		{"shadowed by a higher-priority policy; same priority conflict", base + cnp("first", "  tier: Baseline\n  priority: 1\n  subject: {namespaces: {}}\n  ingress: [{action: Accept, from: [{namespaces: {}}]}]\n") +
			cnp("second", "  tier: Baseline\n  priority: 2\n"+app+"  ingress: [{action: Deny, from: [{namespaces: {}}]}]\n") +
			cnp("twin", "  tier: Baseline\n  priority: 1\n"+app+"  ingress: [{action: Deny, from: [{namespaces: {matchLabels: {team: b}}}]}]\n"),
			[]string{
				"warning: ClusterNetworkPolicy twin: spec.priority: Baseline tier priority 1 is also ClusterNetworkPolicy first's, and both select 2 pods (app/web, app/client) with rules of different actions: where both match a flow the API leaves the result undefined (nfqpolicy applies first first, by name); give them different priorities",
				"warning: ClusterNetworkPolicy second: spec.ingress[0]: never decides: ClusterNetworkPolicy first spec.ingress[0] (Accept, priority 1) matches every flow this rule matches first (for the pods selected now)",
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := cluster.Decode("t.yaml", []byte(tt.objs))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, f := range Lint(c) {
				if strings.HasPrefix(f.Object, "ClusterNetworkPolicy ") {
					got = append(got, f.String())
				}
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("findings:\n got %q\nwant %q", got, tt.want)
			}
		})
	}
}
