package main

import (
	"bytes"
	"encoding/json"
	"io"
	"strings"
	"testing"
)

// FuzzAuditReport feeds flow-log files, which `audit report` reads from
// wherever the user points it, to the reader and both renderers: no input
// may panic them or fail the report, and every line is either a record, a
// summary or counted as malformed.
func FuzzAuditReport(f *testing.F) {
	f.Add([]byte(`{"time":"2026-11-27T06:00:00Z","node":"node-1","run":"r","seq":1,"verdict":"allow","audit_verdict":"would-deny","staged_policies":["x/p"],"src":"10.0.0.1","src_pod":"y/c","dst":"10.0.0.2","dst_port":80,"proto":"tcp"}` + "\n" +
		`{"time":"2026-11-27T06:00:01Z","lost":3,"message":"records dropped"}` + "\n" +
		`{"run":"s","unclean_run":"r","last_seq":1,"message":"previous run ended"}` + "\n"))
	f.Add([]byte("{\"verdict\":\"deny\",\"audit_verdict\":\"would-allow\",\"staged_policies\":[\"a\",\"a\",\"\"]}\n\x00\xff\n{\n"))
	f.Add([]byte(`{"verdict":"allow","lost":18446744073709551615,"rate_limited":18446744073709551615}` + "\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		rep := &auditReport{}
		byPolicy, nodes := map[string]*policyAudit{}, map[string]bool{}
		if err := rep.read("fuzz.jsonl", bytes.NewReader(data), byPolicy, nodes); err != nil {
			// Only a line longer than the scanner's 1 MiB may stop it.
			if !strings.Contains(err.Error(), "token too long") {
				t.Fatalf("read: %v", err)
			}
			return
		}
		rep.finish(byPolicy, nodes, 3)
		rep.writeText(io.Discard)
		if _, err := json.Marshal(rep); err != nil {
			t.Fatalf("report does not encode: %v", err)
		}
		lines := 0
		for _, l := range strings.Split(string(data), "\n") {
			if strings.TrimSpace(l) != "" {
				lines++
			}
		}
		if rep.Records+rep.Malformed > lines {
			t.Fatalf("%d records and %d malformed from %d lines", rep.Records, rep.Malformed, lines)
		}
	})
}
