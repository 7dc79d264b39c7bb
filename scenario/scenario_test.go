package scenario

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nfqpolicy/nfqpolicy/cluster"
)

const objects = `objects:
  - apiVersion: v1
    kind: Node
    metadata: {name: node-1}
    status: {addresses: [{type: InternalIP, address: 192.168.56.1}]}
  - apiVersion: v1
    kind: Pod
    metadata: {name: a, namespace: x, labels: {pod: a}}
    spec: {nodeName: node-1, containers: [{name: c, ports: [{name: http, containerPort: 80}]}]}
    status: {phase: Running, podIP: 10.244.1.10, podIPs: [{ip: 10.244.1.10}, {ip: "fd00::10"}]}
  - apiVersion: v1
    kind: Pod
    metadata: {name: b, namespace: y, labels: {pod: b}}
    spec: {nodeName: node-1, containers: [{name: c}]}
    status: {phase: Running, podIP: 10.244.1.11}
  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: deny-all, namespace: x}
    spec: {podSelector: {}}
`

func errorStrings(t *testing.T, err error) []string {
	t.Helper()
	if err == nil {
		return nil
	}
	var ve *cluster.ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("error %v is %T, not *cluster.ValidationError", err, err)
	}
	out := make([]string, len(ve.Errors))
	for i, e := range ve.Errors {
		out[i] = e.Error()
	}
	return out
}

func TestParse(t *testing.T) {
	in := "name: s1\nsource: a test\n" + objects + `probes:
  - {from: y/b, to: x/a, port: 80, expect: deny}
  - {from: y/b, to: x/a, port: 80, protocol: UDP, family: 4, expect: allow}
  - from: node/node-1
    to: 10.244.1.10
    port: 8080
    protocol: SCTP
    expect: allow
  - {from: x/a, to: 2001:db8::1, port: 443, family: 6, expect: allow}
`
	ss, err := Parse("s.yaml", []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(ss) != 1 {
		t.Fatalf("%d scenarios", len(ss))
	}
	s := ss[0]
	if s.Name != "s1" || s.Source != "a test" || s.File != "s.yaml" || s.Doc != 1 {
		t.Errorf("scenario %q %q %q %d", s.Name, s.Source, s.File, s.Doc)
	}
	if len(s.Cluster.Pods) != 2 || len(s.Cluster.Policies) != 1 || len(s.Cluster.Nodes) != 1 {
		t.Errorf("cluster: %d pods %d policies %d nodes", len(s.Cluster.Pods), len(s.Cluster.Policies), len(s.Cluster.Nodes))
	}
	type row struct {
		From, To string
		Port     int
		Protocol string
		Family   int
		Expect   string
		Line     int
		Src, Dst string
	}
	var got []row
	for _, p := range s.Probes {
		got = append(got, row{p.From, p.To, p.Port, p.Protocol, p.Family, p.Expect, p.Line, p.Src.String(), p.Dst.String()})
	}
	want := []row{
		{"y/b", "x/a", 80, "TCP", 4, "deny", 23, "y/b (10.244.1.11)", "x/a (10.244.1.10)"},
		{"y/b", "x/a", 80, "UDP", 4, "allow", 24, "y/b (10.244.1.11)", "x/a (10.244.1.10)"},
		{"node/node-1", "10.244.1.10", 8080, "SCTP", 4, "allow", 25, "node/node-1 (192.168.56.1)", "x/a (10.244.1.10)"},
		{"x/a", "2001:db8::1", 443, "TCP", 6, "allow", 30, "x/a (fd00::10)", "2001:db8::1"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("probes:\n got %+v\nwant %+v", got, want)
	}
	lines := strings.Split(in, "\n")
	for _, p := range s.Probes {
		if !strings.Contains(lines[p.Line-1], p.From) {
			t.Errorf("line %d is %q, not the probe from %s", p.Line, lines[p.Line-1], p.From)
		}
	}
}

func TestProbeErrors(t *testing.T) {
	tests := []struct {
		probe string
		want  string
	}{
		{"{from: y/zz, to: x/a, port: 80, expect: deny}", `probes[0]: from: endpoint "y/zz": unknown pod y/zz (line 22)`},
		{"{from: y/b, to: node/node-9, port: 80, expect: deny}", `probes[0]: to: endpoint "node/node-9": unknown node "node-9" (line 22)`},
		{"{from: y/b, to: x/a, port: 80, family: 6, expect: deny}", `probes[0]: from: endpoint "y/b": pod has no IPv6 address (line 22)`},
		{"{from: y/b, to: x/a, port: 0, expect: deny}", `probes[0]: port: 0 is not between 1 and 65535 (line 22)`},
		{"{from: y/b, to: x/a, expect: deny}", `probes[0]: port: 0 is not between 1 and 65535 (line 22)`},
		{"{from: y/b, to: x/a, port: 65536, expect: deny}", `probes[0]: port: 65536 is not between 1 and 65535 (line 22)`},
		{"{from: y/b, to: x/a, port: 80, expect: maybe}", `probes[0]: expect: "maybe" is not allow or deny (line 22)`},
		{"{from: y/b, to: x/a, port: 80}", `probes[0]: expect: required (allow or deny) (line 22)`},
		{"{from: y/b, to: x/a, port: 80, protocol: ICMP, expect: deny}", `probes[0]: protocol: "ICMP" is not TCP, UDP or SCTP (line 22)`},
		{"{from: y/b, to: x/a, port: 80, family: 5, expect: deny}", `probes[0]: family: 5 is not 4 or 6 (line 22)`},
		{"{to: x/a, port: 80, expect: deny}", `probes[0]: from: required (line 22)`},
		{"{from: x/a, to: 10.244.1.10, port: 80, expect: deny}", `probes[0]: from and to are the same pod: that traffic is not specified (line 22)`},
		{"{from: y/b, to: x/a, port: http, expect: deny}", `probes[0]: cannot unmarshal string into Go struct field probeJSON.port of type int (line 22)`},
		{"{from: y/b, to: x/a, port: 80, expect: deny, proto: UDP}", `probes[0]: unknown field "proto" (line 22)`},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			in := "name: s\n" + objects + "probes:\n  - " + tt.probe + "\n  - {from: y/b, to: x/a, port: 80, expect: deny}\n"
			ss, err := Parse("p.yaml", []byte(in))
			got := errorStrings(t, err)
			if len(got) != 1 || got[0] != "p.yaml:1: "+tt.want {
				t.Errorf("errors %q, want %q", got, "p.yaml:1: "+tt.want)
			}
			if len(ss) != 1 || len(ss[0].Probes) != 1 {
				t.Fatalf("the bad probe must be dropped and the good one kept")
			}
		})
	}
}

func TestScenarioErrors(t *testing.T) {
	in := "name: s\n" + objects + `  - apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: bad, namespace: x}
    spec: {podSelector: {}, ingress: [{ports: [{port: 80, endPort: 70}]}]}
probes:
  - {from: y/b, to: x/a, port: 80, expect: deny}
---
name: second
probes: []
---
apiVersion: v1
kind: Pod
metadata: {name: not-a-scenario}
---
name: typo
objcts: []
`
	ss, err := Parse("e.yaml", []byte(in))
	got := errorStrings(t, err)
	want := []string{
		"e.yaml:1: spec.ingress[0].ports[0].endPort: invalid value 70: must be greater than or equal to `port` (80) (NetworkPolicy x/bad)",
		`e.yaml:3: not a scenario: unknown field "apiVersion"`,
		`e.yaml:3: not a scenario: unknown field "kind"`,
		`e.yaml:3: not a scenario: unknown field "metadata"`,
		`e.yaml:4: not a scenario: unknown field "objcts"`,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("errors:\n got %q\nwant %q", got, want)
	}
	if len(ss) != 2 || ss[0].Name != "s" || ss[1].Name != "second" || len(ss[0].Cluster.Policies) != 1 || len(ss[0].Probes) != 1 {
		t.Errorf("scenarios kept: %d", len(ss))
	}
}

// A scenario's ClusterNetworkPolicies are read; an object of a kind the
// model does not read is an error, never dropped silently.
func TestScenarioKinds(t *testing.T) {
	in := "name: s\n" + objects + `  - apiVersion: policy.networking.k8s.io/v1alpha2
    kind: ClusterNetworkPolicy
    metadata: {name: admin}
    spec: {tier: Admin, priority: 1, subject: {namespaces: {}}, ingress: [{action: Deny, from: [{namespaces: {}}]}]}
  - apiVersion: v1
    kind: Service
    metadata: {name: svc, namespace: x}
probes:
  - {from: y/b, to: x/a, port: 80, expect: deny}
`
	ss, err := Parse("k.yaml", []byte(in))
	got := errorStrings(t, err)
	want := []string{"k.yaml:1: kind Service (v1) is not read by nfqpolicy (it reads Namespace, Node, Pod, NetworkPolicy and ClusterNetworkPolicy); object skipped (Service x/svc)"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("errors:\n got %q\nwant %q", got, want)
	}
	if len(ss) != 1 || len(ss[0].Cluster.ClusterPolicies) != 1 || ss[0].Cluster.ClusterPolicies[0].Name != "admin" {
		t.Errorf("scenario's ClusterNetworkPolicies not read: %+v", ss)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{
		"b.yaml":    "name: b\n" + objects + "probes: [{from: y/b, to: x/a, port: 80, expect: deny}]\n",
		"a.yml":     objects + "probes: [{from: y/b, to: x/a, port: 80, expect: deny}]\n",
		"notes.txt": "ignored",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ss, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ss) != 2 || ss[0].Name != "a" || ss[1].Name != "b" {
		t.Errorf("scenarios %v", ss)
	}
	if _, err := Load(filepath.Join(dir, "missing.yaml")); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("missing file: %v", err)
	}
	if _, err := Load(t.TempDir()); err == nil {
		t.Error("empty directory must be an error")
	}
}

func TestPublicCorpus(t *testing.T) {
	start, startCPU := time.Now(), cpuTime(t)
	ss, err := Load("../testdata/conformance/public")
	if err != nil {
		t.Fatal(err)
	}
	probes := 0
	for _, s := range ss {
		if len(s.Probes) == 0 || s.Source == "" {
			t.Errorf("%s: %d probes, source %q", s.File, len(s.Probes), s.Source)
		}
		probes += len(s.Probes)
	}
	cpu := cpuTime(t) - startCPU
	t.Logf("%d scenarios, %d probes in %v (%v CPU)", len(ss), probes, time.Since(start), cpu)
	if cpu > time.Second && !testing.Short() && !raceEnabled {
		t.Errorf("loading the public corpus took %v of CPU", cpu)
	}
	// INDEX.md lists the probe count of every public scenario.
	index, err := os.ReadFile("../testdata/conformance/INDEX.md")
	if err != nil {
		t.Fatal(err)
	}
	want := 0
	files := 0
	for _, l := range strings.Split(string(index), "\n") {
		f := strings.Split(l, "|")
		if len(f) > 5 && strings.TrimSpace(f[1]) == "public" {
			var n int
			if _, err := fmt.Sscan(strings.TrimSpace(f[4]), &n); err != nil {
				t.Fatalf("INDEX.md line %q: %v", l, err)
			}
			want += n
			files++
		}
	}
	if len(ss) != files || probes != want {
		t.Errorf("loaded %d scenarios with %d probes; INDEX.md lists %d with %d", len(ss), probes, files, want)
	}
}

func TestKNPWorkload(t *testing.T) {
	start, startCPU := time.Now(), cpuTime(t)
	ss, err := Load("../testdata/bench/knp-workload.yaml")
	took, cpu := time.Since(start), cpuTime(t)-startCPU
	if err != nil {
		t.Fatal(err)
	}
	if len(ss) != 1 {
		t.Fatalf("%d scenarios", len(ss))
	}
	s := ss[0]
	if len(s.Cluster.Pods) != 1000 || len(s.Cluster.Policies) != 100 || len(s.Probes) != 10000 {
		t.Errorf("%d pods, %d policies, %d probes", len(s.Cluster.Pods), len(s.Cluster.Policies), len(s.Probes))
	}
	kinds := map[cluster.EndpointKind]int{}
	for _, p := range s.Probes {
		kinds[p.Src.Kind]++
		kinds[p.Dst.Kind]++
	}
	t.Logf("loaded in %v (%v CPU); endpoints by kind: %v", took, cpu, kinds)
	if kinds[cluster.EndpointPod] == 0 || kinds[cluster.EndpointExternal] == 0 {
		t.Errorf("endpoint kinds %v", kinds)
	}
	if cpu > time.Second && !testing.Short() && !raceEnabled {
		t.Errorf("loading took %v of CPU", cpu)
	}
}

func BenchmarkLoadKNPWorkload(b *testing.B) {
	for b.Loop() {
		if _, err := Load("../testdata/bench/knp-workload.yaml"); err != nil {
			b.Fatal(err)
		}
	}
}

// The probe line reader must read exactly what the YAML parser reads.
func TestLineReaderMatchesYAML(t *testing.T) {
	files, err := filepath.Glob("../testdata/conformance/public/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, "../testdata/bench/knp-workload.yaml")
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, _, ok := splitProbes(data); !ok {
			t.Errorf("%s: the line reader did not take the probes", f)
		}
		fast, err1 := parse(f, data, true, nil)
		slow, err2 := parse(f, data, false, nil)
		if err1 != nil || err2 != nil {
			t.Fatalf("%s: %v / %v", f, err1, err2)
		}
		if len(fast) != 1 || len(slow) != 1 || len(fast[0].Probes) != len(slow[0].Probes) {
			t.Fatalf("%s: scenarios/probes differ", f)
		}
		if fast[0].Name != slow[0].Name || fast[0].Source != slow[0].Source || len(fast[0].Cluster.Pods) != len(slow[0].Cluster.Pods) {
			t.Errorf("%s: scenario fields differ", f)
		}
		for i := range fast[0].Probes {
			a, b := fast[0].Probes[i], slow[0].Probes[i]
			if a.String() != b.String() || a.Line != b.Line || a.Src.String() != b.Src.String() || a.Dst.String() != b.Dst.String() {
				t.Fatalf("%s: probe %d: line reader %v (line %d), YAML %v (line %d)", f, i, a, a.Line, b, b.Line)
			}
		}
	}
}

func TestLineReaderGivesUp(t *testing.T) {
	head := "name: s\n" + objects
	tests := []struct {
		name   string
		probes string
		take   bool
	}{
		{"simple", "probes:\n  - {from: y/b, to: x/a, port: 80, expect: deny}\n", true},
		{"items at column 0", "probes:\n- {from: y/b, to: x/a, port: 80, expect: deny}\n", true},
		{"blank and comment lines", "probes:\n\n  # deny\n  - {from: y/b, to: x/a, port: 80, expect: deny}\n", true},
		{"IPv6", "probes:\n  - {from: x/a, to: 2001:db8::1, port: 80, family: 6, expect: allow}\n", true},
		{"quoted value", "probes:\n  - {from: 'y/b', to: x/a, port: 80, expect: deny}\n", false},
		{"comment after item", "probes:\n  - {from: y/b, to: x/a, port: 80, expect: deny} # x\n", false},
		{"block mapping item", "probes:\n  - from: y/b\n    to: x/a\n    port: 80\n    expect: deny\n", false},
		{"port with leading zero", "probes:\n  - {from: y/b, to: x/a, port: 080, expect: deny}\n", false},
		{"hex port", "probes:\n  - {from: y/b, to: x/a, port: 0x50, expect: deny}\n", false},
		{"unknown key", "probes:\n  - {from: y/b, to: x/a, port: 80, expect: deny, note: a}\n", false},
		{"duplicate key", "probes:\n  - {from: y/b, to: x/a, port: 80, port: 81, expect: deny}\n", false},
		{"bad expect", "probes:\n  - {from: y/b, to: x/a, port: 80, expect: maybe}\n", false},
		{"not an endpoint", "probes:\n  - {from: true, to: x/a, port: 80, expect: deny}\n", false},
		{"mixed indentation", "probes:\n  - {from: y/b, to: x/a, port: 80, expect: deny}\n    - {from: y/b, to: x/a, port: 81, expect: deny}\n", false},
		{"two documents", "probes:\n  - {from: y/b, to: x/a, port: 80, expect: deny}\n---\nname: t\nprobes: []\n", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := []byte(head + tt.probes)
			_, _, _, ok := splitProbes(data)
			if ok != tt.take {
				t.Errorf("line reader took it: %v, want %v", ok, tt.take)
			}
			fast, err1 := parse("p.yaml", data, true, nil)
			slow, err2 := parse("p.yaml", data, false, nil)
			if fmt.Sprint(err1) != fmt.Sprint(err2) || len(fast) != len(slow) {
				t.Fatalf("results differ: %v / %v", err1, err2)
			}
			for i := range fast {
				if fmt.Sprint(fast[i].Probes) != fmt.Sprint(slow[i].Probes) {
					t.Errorf("probes differ:\n%v\n%v", fast[i].Probes, slow[i].Probes)
				}
			}
		})
	}
	// A "probes:" line that YAML reads as part of a string: the YAML
	// result wins.
	data := []byte("name: \"a\nprobes:\n  - {from: y/b, to: x/a, port: 80, expect: deny}\n  b\"\n" + objects + "probes: []\n")
	ss, err := parse("p.yaml", data, true, nil)
	if err != nil || len(ss) != 1 || len(ss[0].Probes) != 0 {
		t.Errorf("multi-line string: %v, %d scenarios", err, len(ss))
	}
}
