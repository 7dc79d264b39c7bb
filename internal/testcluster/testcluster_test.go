package testcluster

import (
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/nfqpolicy/nfqpolicy/filter"
)

// The verdicts the package doc promises, which the observers' tests rely on.
func TestVerdicts(t *testing.T) {
	rs := Compile(t)
	if pods, nodes, policies, _ := rs.Counts(); pods != 3 || nodes != 1 || policies != 2 {
		t.Fatalf("compiled %d pods, %d nodes, %d policies; want 3, 1, 2", pods, nodes, policies)
	}
	tests := []struct {
		name         string
		f            filter.Flow
		allow, audit bool
		reason       string // substring of Describe
	}{
		{"a to b on 80", Flow("10.0.1.1", "10.0.1.2", 40000, 80, filter.ProtoTCP), true, true, "allowed by x/allow-a ingress[0]"},
		{"a to b on 81", Flow("10.0.1.1", "10.0.1.2", 40000, 81, filter.ProtoTCP), false, false, "default deny by isolation of x/b"},
		{"a to b over UDP", Flow("10.0.1.1", "10.0.1.2", 40000, 80, filter.ProtoUDP), false, false, "default deny by isolation of x/b"},
		{"c to b on 80", Flow("10.0.1.3", "10.0.1.2", 40000, 80, filter.ProtoTCP), false, false, "default deny by isolation of x/b"},
		{"c to a: only the staged policy isolates a", Flow("10.0.1.3", "10.0.1.1", 40000, 443, filter.ProtoTCP), true, false, "x/a not isolated"},
		{"external to a's IPv6 address", Flow("fd00::9", "fd00:10::1", 5353, 53, filter.ProtoUDP), true, false, "source is not a pod"},
		{"b to c", Flow("10.0.1.2", "10.0.1.3", 40000, 80, filter.ProtoTCP), true, true, "not isolated"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := rs.Decide(tc.f)
			if v.Allow != tc.allow || v.Audit.Allow != tc.audit {
				t.Errorf("allow %v, audit allow %v; want %v, %v (%s)", v.Allow, v.Audit.Allow, tc.allow, tc.audit, rs.Describe(v))
			}
			if d := rs.Describe(v); !strings.Contains(d, tc.reason) {
				t.Errorf("Describe = %q, want it to contain %q", d, tc.reason)
			}
		})
	}
}

func TestCompileExtra(t *testing.T) {
	// Two extras, the first with a leading separator and no trailing
	// newline: neither may run into the other or into YAML.
	rs := Compile(t, `---
apiVersion: v1
kind: Pod
metadata: {name: d, namespace: y, labels: {app: d}}
spec: {nodeName: node-1, containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.1.4}`, `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-c, namespace: y}
spec: {podSelector: {matchLabels: {app: c}}}
`)
	if pods, _, policies, _ := rs.Counts(); pods != 4 || policies != 3 {
		t.Fatalf("compiled %d pods, %d policies; want 4, 3", pods, policies)
	}
	v := rs.Decide(Flow("10.0.1.4", "10.0.1.3", 1, 80, filter.ProtoTCP))
	if v.Allow || rs.PodName(v.Egress.Pod) != "y/d" {
		t.Errorf("y/d to y/c: allow %v from %q (%s); want denied by y/deny-c from y/d", v.Allow, rs.PodName(v.Egress.Pod), rs.Describe(v))
	}
}

// fatalTB records the first Fatal and stops the goroutine as testing.T does.
type fatalTB struct {
	testing.TB
	msg string
}

func (f *fatalTB) Helper() {}

func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func TestCompileFailsTheTest(t *testing.T) {
	tests := []struct {
		name string
		docs []string
		want string
	}{
		{"yaml syntax", []string{YAML, "kind: [Pod"}, "decode test cluster"},
		{"duplicate pod", []string{YAML, YAML}, "decode test cluster"},
		{"invalid pod", []string{"apiVersion: v1\nkind: Pod\nmetadata: {name: Bad_Name, namespace: x}\nspec: {containers: [{name: c}]}"}, "decode test cluster"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tb := &fatalTB{TB: t}
			done := make(chan *filter.Ruleset)
			go func() {
				defer close(done)
				done <- CompileDocs(tb, tc.docs...)
			}()
			if rs := <-done; rs != nil {
				t.Fatal("CompileDocs returned a Ruleset instead of failing the test")
			}
			if !strings.Contains(tb.msg, tc.want) {
				t.Errorf("Fatal message %q, want it to contain %q", tb.msg, tc.want)
			}
		})
	}
}
