package whatif

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nfqpolicy/nfqpolicy/cluster"
	"github.com/nfqpolicy/nfqpolicy/flowlog"
)

// benchCluster: 10 namespaces of 20 pods (app=p0..p19), each namespace
// with a policy letting app=p0..p9 of its own namespace in on 80/TCP.
func benchCluster(tb testing.TB, extra string) *cluster.Cluster {
	var b strings.Builder
	for ns := range 10 {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: ns%d}\n", ns)
		for p := range 20 {
			fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Pod\nmetadata: {name: p%d, namespace: ns%d, labels: {app: p%d}}\nspec: {nodeName: node-1, containers: [{name: c}]}\nstatus: {phase: Running, podIP: 10.1.%d.%d}\n", p, ns, p, ns, p+1)
		}
		fmt.Fprintf(&b, "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-low, namespace: ns%d}\nspec:\n  podSelector: {}\n  ingress: [{from: [{podSelector: {matchExpressions: [{key: app, operator: In, values: [p0,p1,p2,p3,p4,p5,p6,p7,p8,p9]}]}}], ports: [{port: 80}]}]\n", ns)
	}
	b.WriteString(extra)
	c, err := cluster.Decode("bench.yaml", []byte(b.String()))
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

const benchRecords = 1_000_000

var benchLog = sync.OnceValue(func() []byte {
	// 1,000,000 records of 40,000 distinct flows (200 pods x 200 pods
	// on one port), in the agent's own rendering.
	var buf bytes.Buffer
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range benchRecords {
		f := i % 40000
		s, d := f/200, f%200
		e := flowlog.Entry{
			Time: t0.Add(time.Duration(i) * time.Millisecond), Node: "node-1", Seq: uint64(i), Verdict: "allow", Mode: "enforce",
			Proto: "tcp", Family: 4, Src: fmt.Sprintf("10.1.%d.%d", s/20, s%20+1), SrcPort: uint16(30000 + i%30000),
			Dst: fmt.Sprintf("10.1.%d.%d", d/20, d%20+1), DstPort: 80,
			SrcPod: fmt.Sprintf("ns%d/p%d", s/20, s%20), DstPod: fmt.Sprintf("ns%d/p%d", d/20, d%20),
			Reason: "allow: egress: not isolated; ingress: allowed by rule", Egress: &flowlog.SideEntry{Decision: "not-isolated"},
			Ingress: &flowlog.SideEntry{Decision: "allowed-by-rule"}, LatencyUS: 1.2,
		}
		b, _ := json.Marshal(&e)
		buf.Write(b)
		buf.WriteByte('\n')
	}
	return buf.Bytes()
})

// BenchmarkReplay1M replays 1,000,000 recorded flows (40,000 distinct)
// through the current and a proposed ruleset (ns0's allow-low narrowed
// to app=p0..p4): read, deduplicate, decide each distinct flow twice,
// collect the changes; and the same with one parsing worker (the serial
// reader). In the same run it times two ways of only parsing
// the same lines: encoding/json into flowlog.Entry (how every line was
// read before flowlog.Parser; the baseline) and flowlog.Parser alone. It
// reports seconds per 1M records of each and the baseline's time as a
// multiple of the replay's and of the Parser's.
func BenchmarkReplay1M(b *testing.B) {
	data := benchLog()
	before, err := NewState(benchCluster(b, ""))
	if err != nil {
		b.Fatal(err)
	}
	narrowed, err := cluster.Decode("change.yaml", []byte("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-low, namespace: ns0}\nspec:\n  podSelector: {}\n  ingress: [{from: [{podSelector: {matchExpressions: [{key: app, operator: In, values: [p0,p1,p2,p3,p4]}]}}], ports: [{port: 80}]}]\n"))
	if err != nil {
		b.Fatal(err)
	}
	proposed, err := cluster.Overlay(before.Cluster, narrowed, nil)
	if err != nil {
		b.Fatal(err)
	}
	after, err := NewState(proposed)
	if err != nil {
		b.Fatal(err)
	}
	changed := ChangedNames(narrowed, nil)
	var jsonParse, fastParse, replay, serial time.Duration
	b.ResetTimer()
	for range b.N {
		t := time.Now()
		n := 0
		for line := range bytes.SplitSeq(data, []byte("\n")) {
			if len(line) == 0 {
				continue
			}
			var e flowlog.Entry
			if err := json.Unmarshal(line, &e); err != nil {
				b.Fatal(err)
			}
			n++
		}
		jsonParse += time.Since(t)

		t = time.Now()
		var p flowlog.Parser
		var f flowlog.Fields
		taken := 0
		for line := range bytes.SplitSeq(data, []byte("\n")) {
			if len(line) != 0 && p.Parse(line, &f) {
				taken++
			}
		}
		fastParse += time.Since(t)
		if n != benchRecords || taken != n {
			b.Fatalf("%d lines, the Parser took %d", n, taken)
		}

		for _, workers := range []int{1, 0} {
			t = time.Now()
			r := NewReader()
			if workers != 0 {
				r.workers = workers
			}
			if err := r.Read("bench", bytes.NewReader(data)); err != nil {
				b.Fatal(err)
			}
			log := r.Log()
			res, err := Replay(log, before, after, changed)
			if err != nil {
				b.Fatal(err)
			}
			if workers == 1 {
				serial += time.Since(t)
			} else {
				replay += time.Since(t)
			}
			// ns0's 20 pods no longer receive from ns0's p5..p9: 5*20
			// flows were allowed and are cut, each by ns0/allow-low.
			if log.Records != benchRecords || len(log.Flows) != 40000 || len(res.Changes) != 100 || res.Changes[0].Policies[0] != "ns0/allow-low" {
				b.Fatalf("%d records, %d flows, %d changes", log.Records, len(log.Flows), len(res.Changes))
			}
		}
	}
	per1M := func(d time.Duration) float64 { return d.Seconds() / float64(b.N*benchRecords) * 1e6 }
	b.ReportMetric(per1M(replay), "replay-s/1M")
	b.ReportMetric(per1M(serial), "replay-1-worker-s/1M")
	b.ReportMetric(per1M(jsonParse), "json-parse-s/1M")
	b.ReportMetric(per1M(fastParse), "parser-s/1M")
	b.ReportMetric(jsonParse.Seconds()/replay.Seconds(), "json-parse/replay")
	b.ReportMetric(jsonParse.Seconds()/fastParse.Seconds(), "json-parse/parser")
	b.Logf("%d records: replay (read, dedupe, decide %d distinct flows twice) %v (%d parsing workers; with 1: %v); parse only: encoding/json %v, flowlog.Parser %v",
		b.N*benchRecords, 40000, replay, NewReader().workers, serial, jsonParse, fastParse)
}
