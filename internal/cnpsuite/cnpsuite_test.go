package cnpsuite

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

// A transcript in the shape `go test -v` prints the suite's run in.
const transcript = `=== RUN   TestConformance
    conformance_test.go:87: Test Setup: Applying base manifests
=== RUN   TestConformance/CNPAdminTierEgressSCTP
    suite.go:160: Skipping CNPAdminTierEgressSCTP
=== RUN   TestConformance/CNPAdminTierGress
=== RUN   TestConformance/CNPAdminTierGress/Should_support_an_'allow-gress'_policy_across_different_protocols
    helper.go:96: FAILED to execute command [/agnhost connect 10.244.1.5:9003 --timeout=1s --protocol=sctp] on pod x/y: command terminated with exit code 1
    helper.go:100: FAILED Command was [/agnhost connect --timeout=3s --protocol=tcp 10.244.1.5:80]
    admin-network-policy-standard-gress-rules.go:55: expected connection to succeed
=== RUN   TestConformance/CNPAdminTierGress/Should_support_a_'deny-gress'_policy_across_different_protocols
    helper.go:72: SCTP probe not run: ns-a/harry-potter-0 -> 10.244.1.3:9003 (expected to connect: false): needs SCTP sockets, which this kernel lacks (socket: protocol not supported)
=== RUN   TestConformance/CNPAdminTierPortRange
=== RUN   TestConformance/CNPAdminTierPortRange/Should_support_egress_port_range_rules_across_different_protocols
    helper.go:72: SCTP probe not run: ns-a/harry-potter-1 -> 10.244.1.2:9003 (expected to connect: true): needs SCTP sockets, which this kernel lacks (socket: protocol not supported)
    helper.go:72: SCTP probe not run: ns-a/harry-potter-1 -> 10.244.1.2:9005 (expected to connect: false): needs SCTP sockets, which this kernel lacks (socket: protocol not supported)
=== RUN   TestConformance/CNPAdminTierEgressNodePeers
    suite.go:132: Skipping CNPAdminTierEgressNodePeers: suite does not support ClusterNetworkPolicyEgressNodePeers
=== RUN   TestConformance/CNPAdminTierPriority
--- FAIL: TestConformance (100.00s)
    --- PASS: TestConformance/CNPAdminTierEgressSCTP (0.00s)
    --- FAIL: TestConformance/CNPAdminTierGress (12.50s)
        --- FAIL: TestConformance/CNPAdminTierGress/Should_support_an_'allow-gress'_policy_across_different_protocols (6.00s)
        --- PASS: TestConformance/CNPAdminTierGress/Should_support_a_'deny-gress'_policy_across_different_protocols (6.00s)
    --- PASS: TestConformance/CNPAdminTierPortRange (20.00s)
        --- PASS: TestConformance/CNPAdminTierPortRange/Should_support_egress_port_range_rules_across_different_protocols (20.00s)
    --- SKIP: TestConformance/CNPAdminTierEgressNodePeers (0.00s)
    --- PASS: TestConformance/CNPAdminTierPriority (3.25s)
FAIL
`

func TestParse(t *testing.T) {
	var out strings.Builder
	got := parse(strings.NewReader(transcript), SCTPTests, SCTPReason, &out)
	want := []Test{
		{Name: "CNPAdminTierEgressSCTP", Status: Skipped, Reason: SCTPReason},
		{Name: "CNPAdminTierGress", Status: Failed, Duration: 12500 * time.Millisecond,
			Reason:     "Should support an 'allow-gress' policy across different protocols: FAILED to execute command [/agnhost connect 10.244.1.5:9003 --timeout=1s --protocol=sctp] on pod x/y: command terminated with exit code 1",
			SCTPNotRun: []string{"ns-a/harry-potter-0 -> 10.244.1.3:9003 (expected to connect: false)"}, Retried: 1},
		{Name: "CNPAdminTierPortRange", Status: Passed, Duration: 20 * time.Second, SCTPNotRun: []string{
			"ns-a/harry-potter-1 -> 10.244.1.2:9003 (expected to connect: true)",
			"ns-a/harry-potter-1 -> 10.244.1.2:9005 (expected to connect: false)"}},
		{Name: "CNPAdminTierEgressNodePeers", Status: Skipped, Reason: "Skipping CNPAdminTierEgressNodePeers: suite does not support ClusterNetworkPolicyEgressNodePeers"},
		{Name: "CNPAdminTierPriority", Status: Passed, Duration: 3250 * time.Millisecond},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d tests %+v, want %d", len(got), got, len(want))
	}
	for i := range want {
		if !reflect.DeepEqual(got[i], want[i]) {
			t.Errorf("test %d:\n got %+v\nwant %+v", i, got[i], want[i])
		}
	}
	r := Result{Tests: got}
	if s := r.Summary(); s != "2 passed, 1 failed, 2 skipped; 3 SCTP probes not run in 2 of the tests" {
		t.Errorf("Summary() = %q", s)
	}
	if !strings.Contains(out.String(), "FAIL CNPAdminTierGress (12.5s): Should support") ||
		!strings.Contains(out.String(), "PASS CNPAdminTierPriority (3.2s)") ||
		!strings.Contains(out.String(), "PASS CNPAdminTierPortRange (20.0s) [2 SCTP probes not run]") {
		t.Errorf("printed lines:\n%s", out.String())
	}
}

// TestStampWriter: every line of the suite's log gets one time stamp, also
// when lines arrive split across writes or several in one write.
func TestStampWriter(t *testing.T) {
	var b strings.Builder
	w := &stampWriter{w: &b}
	for _, p := range []string{"one\ntw", "o\n", "three\nfour\n"} {
		if n, err := w.Write([]byte(p)); n != len(p) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", p, n, err)
		}
	}
	lines := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	want := []string{"one", "two", "three", "four"}
	if len(lines) != len(want) {
		t.Fatalf("got %q", b.String())
	}
	for i, l := range lines {
		stamp, rest, ok := strings.Cut(l, " ")
		if _, err := time.Parse("15:04:05.000", stamp); !ok || err != nil || rest != want[i] {
			t.Errorf("line %d = %q, want a time stamp then %q", i, l, want[i])
		}
	}
}
