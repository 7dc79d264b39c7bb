package e2e

import "fmt"

// FormatMismatch renders a result whose verdict differs from the
// expectation as one line: scenario, from, to, port/proto, family, expect,
// got.
func FormatMismatch(r Result) string {
	p := r.Probe
	if r.Skipped() {
		return fmt.Sprintf("SKIP %s: probes[%d] %s -> %s %d/%s IPv%d: %s", r.Scenario, r.Index, p.From, p.To, p.Port, p.Protocol, p.Family, r.Detail)
	}
	got := r.Got
	if r.Detail != "" {
		got += " (" + r.Detail + ")"
	}
	return fmt.Sprintf("FAIL %s: probes[%d] %s -> %s %d/%s IPv%d: expect %s, got %s",
		r.Scenario, r.Index, p.From, p.To, p.Port, p.Protocol, p.Family, p.Expect, got)
}

// FormatVerdict renders any result as one readable line, for output that
// follows probes as they happen.
func FormatVerdict(r Result) string {
	p := r.Probe
	verdict := map[string]string{"allow": "allowed", "deny": "denied"}[r.Got]
	if verdict == "" {
		verdict = r.Got
	}
	mark := "ok  "
	switch {
	case r.Skipped():
		mark = "SKIP"
	case !r.Pass():
		mark = "FAIL"
	}
	detail := ""
	if r.Detail != "" {
		detail = ", " + r.Detail
	}
	return fmt.Sprintf("%s %s → %s %d/%s IPv%d: %s (expected %s%s)",
		mark, p.From, p.To, p.Port, p.Protocol, p.Family, verdict, p.Expect, detail)
}
