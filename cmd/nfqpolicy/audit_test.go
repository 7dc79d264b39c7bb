package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nfqpolicy/nfqpolicy/filter"
	"github.com/nfqpolicy/nfqpolicy/flowlog"
	"github.com/nfqpolicy/nfqpolicy/internal/testcluster"
)

// A hand-written flow log: x/staged-deny would cut three allowed flows,
// x/staged-allow would only open one; one record and a summary report
// loss; one line is garbage.
const handLog = `{"time":"2026-11-27T06:00:00Z","node":"node-1","seq":1,"verdict":"allow","mode":"enforce","audit_verdict":"would-deny","audit_differs":true,"staged_policies":["x/staged-deny"],"proto":"tcp","family":4,"src":"10.0.1.3","src_port":40000,"dst":"10.0.1.1","dst_port":443,"src_pod":"y/c","dst_pod":"x/a"}
{"time":"2026-11-27T06:00:01Z","node":"node-1","seq":2,"verdict":"allow","mode":"enforce","audit_verdict":"would-deny","audit_differs":true,"staged_policies":["x/staged-deny"],"proto":"tcp","family":4,"src":"10.0.1.3","src_port":40001,"dst":"10.0.1.1","dst_port":443,"src_pod":"y/c","dst_pod":"x/a","lost":1}
{"time":"2026-11-27T06:00:02Z","node":"node-2","seq":3,"verdict":"allow","mode":"enforce","audit_verdict":"would-deny","audit_differs":true,"staged_policies":["x/staged-deny"],"proto":"tcp","family":4,"src":"203.0.113.5","src_port":1,"dst":"10.0.1.1","dst_port":80,"dst_pod":"x/a"}
{"time":"2026-11-27T06:00:03Z","node":"node-1","seq":4,"verdict":"deny","mode":"enforce","audit_verdict":"would-allow","audit_differs":true,"staged_policies":["x/staged-allow"],"proto":"udp","family":4,"src":"10.0.1.3","src_port":5353,"dst":"10.0.1.2","dst_port":53,"src_pod":"y/c","dst_pod":"x/b"}
{"time":"2026-11-27T06:00:04Z","node":"node-1","seq":5,"verdict":"deny","mode":"enforce","audit_verdict":"would-deny","proto":"tcp","family":4,"src":"10.0.1.3","src_port":1,"dst":"10.0.1.2","dst_port":80}
{"time":"2026-11-27T06:00:05Z","node":"node-1","seq":6,"verdict":"allow","mode":"enforce","audit_verdict":"would-allow","proto":"tcp","family":4,"src":"10.0.1.1","src_port":1,"dst":"10.0.1.2","dst_port":80}
this is not json
{"time":"2026-11-27T06:00:06Z","node":"node-1","lost":2,"message":"records dropped"}
`

// Only a staged policy that opens traffic: safe.
const safeLog = `{"time":"2026-11-27T06:00:03Z","seq":4,"verdict":"deny","mode":"enforce","audit_verdict":"would-allow","audit_differs":true,"staged_policies":["x/staged-allow"],"proto":"udp","family":4,"src":"10.0.1.3","src_port":5353,"dst":"10.0.1.2","dst_port":53}
{"time":"2026-11-27T06:00:05Z","seq":6,"verdict":"allow","mode":"enforce","audit_verdict":"would-allow","proto":"tcp","family":4,"src":"10.0.1.1","src_port":1,"dst":"10.0.1.2","dst_port":80}
`

func writeTemp(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestAuditReportJSON(t *testing.T) {
	path := writeTemp(t, "flows.log", handLog)
	var out, errb bytes.Buffer
	code := dispatch(context.Background(), []string{"audit", "report", "-o", "json", "--top", "1", path}, &out, &errb)
	if code != 1 {
		t.Fatalf("exit %d, want 1 (a policy would cut traffic); stderr %s", code, errb.String())
	}
	var rep auditReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, out.String())
	}
	if rep.Records != 6 || rep.Lost != 3 || rep.Complete || rep.Malformed != 1 || !strings.Contains(rep.FirstMalformed, "flows.log:7") {
		t.Errorf("records %d lost %d complete %v malformed %d (%s); want 6, 3, false, 1 at line 7", rep.Records, rep.Lost, rep.Complete, rep.Malformed, rep.FirstMalformed)
	}
	if strings.Join(rep.Nodes, ",") != "node-1,node-2" {
		t.Errorf("nodes %v", rep.Nodes)
	}
	if len(rep.Policies) != 2 {
		t.Fatalf("%d policies, want 2", len(rep.Policies))
	}
	deny, allow := rep.Policies[0], rep.Policies[1]
	if deny.Policy != "x/staged-deny" || deny.WouldCut != 3 || deny.Safe {
		t.Errorf("first policy %+v, want x/staged-deny cutting 3, not safe", deny)
	}
	if len(deny.Sources) != 1 || deny.Sources[0] != (countEntry{"y/c", 2}) {
		t.Errorf("top source %v, want y/c (2)", deny.Sources)
	}
	if len(deny.Destinations) != 1 || deny.Destinations[0] != (countEntry{"x/a", 3}) {
		t.Errorf("top destination %v, want x/a (3)", deny.Destinations)
	}
	if len(deny.Ports) != 1 || deny.Ports[0] != (countEntry{"443/TCP", 2}) {
		t.Errorf("top port %v, want 443/TCP (2)", deny.Ports)
	}
	if allow.Policy != "x/staged-allow" || allow.WouldCut != 0 || allow.WouldAllow != 1 || !allow.Safe {
		t.Errorf("second policy %+v, want x/staged-allow, safe, opening 1", allow)
	}
}

func TestAuditReportText(t *testing.T) {
	hand := writeTemp(t, "flows.log", handLog)
	safe := writeTemp(t, "safe.log", safeLog)
	empty := writeTemp(t, "empty.log", "")
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stdout []string
		stderr string
	}{
		{"unsafe", []string{"audit", "report", hand}, 1, []string{
			"Audit report: 6 flow records from 1 file(s), nodes node-1, node-2",
			"WARNING: the log is incomplete (3 records lost, 0 rate-limited)",
			"WARNING: 1 malformed lines skipped",
			"x/staged-deny: NOT safe to promote: would cut 3 allowed flow(s)",
			"top sources:       y/c (2), 203.0.113.5 (1)",
			"top ports:         443/TCP (2), 80/TCP (1)",
			"x/staged-allow: SAFE to promote: would cut no allowed flow; would newly allow 1 denied flow(s)",
		}, ""},
		{"safe", []string{"audit", "report", safe}, 0, []string{"x/staged-allow: SAFE to promote"}, ""},
		{"two files add up", []string{"audit", "report", safe, hand}, 1, []string{"8 flow records from 2 file(s)", "would newly allow 2 denied"}, ""},
		{"nothing staged", []string{"audit", "report", empty}, 0, []string{"No staged policy changed any logged verdict."}, ""},
		{"missing file", []string{"audit", "report", filepath.Join(t.TempDir(), "none")}, 2, nil, "no such file"},
		{"no files", []string{"audit", "report"}, 2, nil, "usage"},
		{"no subcommand", []string{"audit"}, 2, nil, "usage: nfqpolicy audit report"},
		{"bad output", []string{"audit", "report", "-o", "xml", hand}, 2, nil, `-o "xml"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := dispatch(context.Background(), tc.args, &out, &errb)
			if code != tc.code {
				t.Errorf("exit %d, want %d; stderr %s", code, tc.code, errb.String())
			}
			for _, s := range tc.stdout {
				if !strings.Contains(out.String(), s) {
					t.Errorf("stdout lacks %q:\n%s", s, out.String())
				}
			}
			if !strings.Contains(errb.String(), tc.stderr) {
				t.Errorf("stderr lacks %q: %s", tc.stderr, errb.String())
			}
		})
	}
}

// The report reads what the flow log writes: log real verdicts of a
// compiled cluster with a staged policy and report on them.
func TestAuditReportReadsFlowLog(t *testing.T) {
	rs := testcluster.CompileDocs(t, `
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {nodeName: n, containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
spec: {nodeName: n, containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.1.2}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: lock-b, namespace: x, annotations: {nfqpolicy.io/mode: audit}}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress: [{ports: [{port: 8080}]}]
`)
	path := filepath.Join(t.TempDir(), "flows.log")
	sink, err := flowlog.OpenSink(path, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	l, err := flowlog.New(flowlog.Options{Out: sink, Select: flowlog.SelectAll, Renderer: flowlog.Renderer{Node: "n"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, port := range []uint16{80, 80, 443, 8080} {
		f := filter.Flow{Src: netip.MustParseAddr("10.0.1.1"), Dst: netip.MustParseAddr("10.0.1.2"), SrcPort: 1, DstPort: port, Proto: filter.ProtoTCP}
		l.OnVerdict(f, rs.Decide(f), nil, time.Now(), 0)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	sink.Close()
	var out, errb bytes.Buffer
	code := dispatch(context.Background(), []string{"audit", "report", path}, &out, &errb)
	if code != 1 {
		t.Errorf("exit %d, want 1; stderr %s", code, errb.String())
	}
	for _, s := range []string{
		"4 flow records",
		"x/lock-b: NOT safe to promote: would cut 3 allowed flow(s)",
		"top sources:       x/a (3)",
		"top ports:         80/TCP (2), 443/TCP (1)",
	} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("report lacks %q:\n%s", s, out.String())
		}
	}
}

// A staged ClusterNetworkPolicy is summarised like a staged NetworkPolicy,
// by its name.
func TestAuditReportClusterNetworkPolicy(t *testing.T) {
	rs := testcluster.CompileDocs(t, `
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {nodeName: n, containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
spec: {nodeName: n, containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.1.2}
---
apiVersion: policy.networking.k8s.io/v1beta1
kind: ClusterNetworkPolicy
metadata: {name: no-egress, annotations: {nfqpolicy.io/mode: audit}}
spec:
  tier: Baseline
  priority: 10
  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: a}}}}
  egress: [{name: off, action: Deny, to: [{networks: [0.0.0.0/0]}], protocols: [{tcp: {destinationPort: {range: {start: 80, end: 443}}}}]}]
`)
	path := filepath.Join(t.TempDir(), "flows.log")
	sink, err := flowlog.OpenSink(path, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	l, err := flowlog.New(flowlog.Options{Out: sink, Select: flowlog.SelectAll, Renderer: flowlog.Renderer{Node: "n"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, port := range []uint16{80, 443, 8080} {
		f := filter.Flow{Src: netip.MustParseAddr("10.0.1.1"), Dst: netip.MustParseAddr("10.0.1.2"), SrcPort: 1, DstPort: port, Proto: filter.ProtoTCP}
		l.OnVerdict(f, rs.Decide(f), nil, time.Now(), 0)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	sink.Close()
	var out, errb bytes.Buffer
	if code := dispatch(context.Background(), []string{"audit", "report", path}, &out, &errb); code != 1 {
		t.Errorf("exit %d, want 1; stderr %s", code, errb.String())
	}
	for _, s := range []string{
		"ClusterNetworkPolicy/no-egress: NOT safe to promote: would cut 2 allowed flow(s)",
		"top ports:         443/TCP (1), 80/TCP (1)",
	} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("report lacks %q:\n%s", s, out.String())
		}
	}
}

// TestAuditReportUncleanEnds: a run killed without closing its log makes
// the log incomplete only when what it lost is unknown (no state file) or
// not zero; an unclean end counted at 0 lost leaves it complete.
func TestAuditReportUncleanEnds(t *testing.T) {
	rec := `{"time":"2026-11-27T06:00:05Z","run":"a","seq":1,"verdict":"allow","mode":"enforce","proto":"tcp","family":4,"src":"10.0.1.1","src_port":1,"dst":"10.0.1.2","dst_port":80}` + "\n"
	for _, tc := range []struct {
		name, line string
		complete   bool
		lost       uint64
		uncounted  int
	}{
		{"counted, nothing lost", `{"run":"b","unclean_run":"a","last_seq":1,"lost":0,"rate_limited":0}`, true, 0, 0},
		{"counted, one lost", `{"run":"b","unclean_run":"a","last_seq":1,"lost":1,"rate_limited":0}`, false, 1, 0},
		{"uncounted", `{"run":"b","unclean_run":"a","last_seq":1,"lost_unknown":true}`, false, 0, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var rep auditReport
			if err := rep.read("flows.log", strings.NewReader(rec+tc.line+"\n"), map[string]*policyAudit{}, map[string]bool{}); err != nil {
				t.Fatal(err)
			}
			rep.finish(map[string]*policyAudit{}, map[string]bool{}, 1)
			if rep.Complete != tc.complete || rep.Lost != tc.lost || rep.UncleanEnds != 1 || rep.UncountedEnds != tc.uncounted {
				t.Errorf("complete %v lost %d unclean %d uncounted %d; want %v %d 1 %d", rep.Complete, rep.Lost, rep.UncleanEnds, rep.UncountedEnds, tc.complete, tc.lost, tc.uncounted)
			}
		})
	}
}
