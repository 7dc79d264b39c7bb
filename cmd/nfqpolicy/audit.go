package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/nfqpolicy/nfqpolicy/flowlog"
)

// cmdAudit dispatches `audit report`: the only audit subcommand so far.
func cmdAudit(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "report" {
		fmt.Fprintln(stderr, "usage: nfqpolicy audit report [-o text|json] [--top N] FLOWLOG...")
		return 2
	}
	return auditReportCmd(args[1:], stdout, stderr)
}

// countEntry is one row of a top-N list.
type countEntry struct {
	Name  string `json:"name"`
	Count int    `json:"count"`
}

// policyAudit is what the flow log says about one staged policy.
type policyAudit struct {
	Policy string `json:"policy"`
	// WouldCut counts flows that were allowed and that the policy would
	// deny once enforced; WouldAllow flows it would newly let through.
	WouldCut   int `json:"would_cut"`
	WouldAllow int `json:"would_allow"`
	// Safe: enforcing it cuts nothing that the log shows was allowed.
	Safe         bool         `json:"safe_to_promote"`
	Sources      []countEntry `json:"top_sources,omitempty"`
	Destinations []countEntry `json:"top_destinations,omitempty"`
	Ports        []countEntry `json:"top_ports,omitempty"`

	src, dst, port map[string]int
}

// auditReport summarises flow logs for an audit-mode rollout decision.
type auditReport struct {
	Files   []string  `json:"files"`
	Records int       `json:"records"`
	Nodes   []string  `json:"nodes"`
	From    time.Time `json:"from"`
	To      time.Time `json:"to"`
	// Lost and RateLimited are records the agents did not write: with
	// either non-zero a policy's "safe" rests on an incomplete log.
	Lost        uint64 `json:"lost"`
	RateLimited uint64 `json:"rate_limited"`
	// UncleanEnds counts agent runs that ended without closing their log
	// (killed or crashed); what they lost is in Lost, except for those
	// counted in UncountedEnds (no state file: their last records may be
	// missing, uncounted).
	UncleanEnds   int  `json:"unclean_ends"`
	UncountedEnds int  `json:"unclean_ends_uncounted"`
	Complete      bool `json:"complete"`
	// Malformed lines were skipped; FirstMalformed says where and why.
	Malformed      int    `json:"malformed_lines"`
	FirstMalformed string `json:"first_malformed,omitempty"`
	// Unattributed counts would-deny flows that name no staged policy.
	Unattributed int            `json:"unattributed_would_cut"`
	Policies     []*policyAudit `json:"staged_policies"`
}

func auditReportCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("audit report", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("o", "text", "output: text or json")
	top := fs.Int("top", 5, "how many sources, destinations and ports to list per policy")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: nfqpolicy audit report [-o text|json] [--top N] FLOWLOG...\n\nReads flow logs (JSON lines written by `nfqpolicy run --flow-log`, \"-\" for\nstdin) and reports, per staged (audit-mode) policy, the allowed flows it\nwould cut once enforced. A policy that would cut none is safe to promote.\nExit status: 0 every staged policy is safe, 1 some would cut traffic, 2 bad input.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *out != "text" && *out != "json" {
		fmt.Fprintf(stderr, "nfqpolicy audit report: -o %q: want text or json\n", *out)
		return 2
	}
	if *top < 1 {
		fmt.Fprintf(stderr, "nfqpolicy audit report: --top %d: want at least 1\n", *top)
		return 2
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return 2
	}
	rep := &auditReport{}
	byPolicy := map[string]*policyAudit{}
	nodes := map[string]bool{}
	for _, name := range fs.Args() {
		if err := rep.readFile(name, byPolicy, nodes); err != nil {
			fmt.Fprintf(stderr, "nfqpolicy audit report: %v\n", err)
			return 2
		}
	}
	rep.finish(byPolicy, nodes, *top)
	if *out == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			fmt.Fprintf(stderr, "nfqpolicy audit report: %v\n", err)
			return 2
		}
	} else {
		rep.writeText(stdout)
	}
	for _, p := range rep.Policies {
		if !p.Safe {
			return 1
		}
	}
	if rep.Unattributed > 0 {
		return 1
	}
	return 0
}

func (rep *auditReport) readFile(name string, byPolicy map[string]*policyAudit, nodes map[string]bool) error {
	var r io.Reader = os.Stdin
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return fmt.Errorf("flow log: %w", err)
		}
		defer f.Close()
		r = f
	}
	return rep.read(name, r, byPolicy, nodes)
}

// read adds the flow-log lines of r (named name in messages) to the
// report. The lines are untrusted: anything that is not a record is
// counted as malformed, never fatal.
func (rep *auditReport) read(name string, r io.Reader, byPolicy map[string]*policyAudit, nodes map[string]bool) error {
	rep.Files = append(rep.Files, name)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 256<<10), 1<<20)
	// The Parser reads the agent's lines without reflection; any other
	// line is left to encoding/json, which reads it (or words why not) as
	// before.
	var p flowlog.Parser
	var e flowlog.Fields
	line := 0
	for sc.Scan() {
		line++
		text := bytes.TrimSpace(sc.Bytes())
		if len(text) == 0 {
			continue
		}
		if !p.Parse(text, &e) {
			var full flowlog.Entry
			if err := json.Unmarshal(text, &full); err != nil {
				rep.malformed(fmt.Sprintf("%s:%d: %v", name, line, err))
				continue
			}
			e.SetEntry(&full)
		}
		rep.Lost += e.Lost
		rep.RateLimited += e.RateLimited
		if len(e.UncleanRun) != 0 {
			rep.UncleanEnds++
			if e.LostUnknown {
				rep.UncountedEnds++
			}
		}
		if len(e.Verdict) == 0 {
			continue // a summary
		}
		if v := string(e.Verdict); v != "allow" && v != "deny" {
			rep.malformed(fmt.Sprintf("%s:%d: verdict %q is neither allow nor deny", name, line, e.Verdict))
			continue
		}
		rep.Records++
		if len(e.Node) != 0 && !nodes[string(e.Node)] {
			nodes[string(e.Node)] = true
		}
		if !e.Time.IsZero() {
			if rep.From.IsZero() || e.Time.Before(rep.From) {
				rep.From = e.Time
			}
			if e.Time.After(rep.To) {
				rep.To = e.Time
			}
		}
		rep.add(&e, byPolicy)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read %s: %w", name, err)
	}
	return nil
}

func (rep *auditReport) malformed(why string) {
	rep.Malformed++
	if rep.FirstMalformed == "" {
		rep.FirstMalformed = why
	}
}

func (rep *auditReport) add(e *flowlog.Fields, byPolicy map[string]*policyAudit) {
	cut := string(e.Verdict) == "allow" && string(e.AuditVerdict) == "would-deny"
	opens := string(e.Verdict) == "deny" && string(e.AuditVerdict) == "would-allow"
	if !cut && !opens {
		return
	}
	if cut && len(e.StagedPolicies) == 0 {
		rep.Unattributed++
	}
	for _, b := range e.StagedPolicies {
		p := byPolicy[string(b)]
		if p == nil {
			name := string(b)
			p = &policyAudit{Policy: name, src: map[string]int{}, dst: map[string]int{}, port: map[string]int{}}
			byPolicy[name] = p
		}
		if opens {
			p.WouldAllow++
			continue
		}
		p.WouldCut++
		p.src[endpointName(e.SrcPod, e.Src)]++
		p.dst[endpointName(e.DstPod, e.Dst)]++
		p.port[portName(e)]++
	}
}

func endpointName(pod, addr []byte) string {
	if len(pod) != 0 {
		return string(pod)
	}
	return string(addr)
}

func portName(e *flowlog.Fields) string {
	if e.DstPort == 0 {
		return string(e.Proto)
	}
	return fmt.Sprintf("%d/%s", e.DstPort, strings.ToUpper(string(e.Proto)))
}

func topN(m map[string]int, n int) []countEntry {
	out := make([]countEntry, 0, len(m))
	for k, v := range m {
		out = append(out, countEntry{k, v})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Count != out[j].Count {
			return out[i].Count > out[j].Count
		}
		return out[i].Name < out[j].Name
	})
	if len(out) > n {
		out = out[:n]
	}
	return out
}

func (rep *auditReport) finish(byPolicy map[string]*policyAudit, nodes map[string]bool, top int) {
	rep.Complete = rep.Lost == 0 && rep.RateLimited == 0 && rep.UncountedEnds == 0
	rep.Nodes = make([]string, 0, len(nodes))
	for n := range nodes {
		rep.Nodes = append(rep.Nodes, n)
	}
	sort.Strings(rep.Nodes)
	rep.Policies = make([]*policyAudit, 0, len(byPolicy))
	for _, p := range byPolicy {
		p.Safe = p.WouldCut == 0
		p.Sources, p.Destinations, p.Ports = topN(p.src, top), topN(p.dst, top), topN(p.port, top)
		rep.Policies = append(rep.Policies, p)
	}
	// Unsafe first, most cuts first: what needs attention leads.
	sort.Slice(rep.Policies, func(i, j int) bool {
		a, b := rep.Policies[i], rep.Policies[j]
		if a.WouldCut != b.WouldCut {
			return a.WouldCut > b.WouldCut
		}
		return a.Policy < b.Policy
	})
}

func (rep *auditReport) writeText(w io.Writer) {
	fmt.Fprintf(w, "Audit report: %d flow records from %d file(s)", rep.Records, len(rep.Files))
	if len(rep.Nodes) > 0 {
		fmt.Fprintf(w, ", nodes %s", strings.Join(rep.Nodes, ", "))
	}
	fmt.Fprintln(w)
	if !rep.From.IsZero() {
		fmt.Fprintf(w, "Period: %s to %s\n", rep.From.Format(time.RFC3339), rep.To.Format(time.RFC3339))
	}
	if !rep.Complete {
		unclean := ""
		if rep.UncleanEnds > 0 {
			unclean = fmt.Sprintf(", %d agent runs ended without closing it", rep.UncleanEnds)
		}
		if rep.UncountedEnds > 0 {
			unclean += fmt.Sprintf(", %d of them with losses nobody could count", rep.UncountedEnds)
		}
		fmt.Fprintf(w, "WARNING: the log is incomplete (%d records lost, %d rate-limited%s): a policy listed as safe may still cut flows that were not logged.\n", rep.Lost, rep.RateLimited, unclean)
	}
	if rep.Malformed > 0 {
		fmt.Fprintf(w, "WARNING: %d malformed lines skipped (first: %s)\n", rep.Malformed, rep.FirstMalformed)
	}
	if rep.Unattributed > 0 {
		fmt.Fprintf(w, "WARNING: %d allowed flows would be denied by staged policies the log does not name\n", rep.Unattributed)
	}
	if len(rep.Policies) == 0 {
		fmt.Fprintln(w, "No staged policy changed any logged verdict.")
		return
	}
	for _, p := range rep.Policies {
		fmt.Fprintln(w)
		if p.Safe {
			fmt.Fprintf(w, "%s: SAFE to promote: would cut no allowed flow", p.Policy)
		} else {
			fmt.Fprintf(w, "%s: NOT safe to promote: would cut %d allowed flow(s)", p.Policy, p.WouldCut)
		}
		if p.WouldAllow > 0 {
			fmt.Fprintf(w, "; would newly allow %d denied flow(s)", p.WouldAllow)
		}
		fmt.Fprintln(w)
		for _, l := range []struct {
			title string
			rows  []countEntry
		}{{"sources", p.Sources}, {"destinations", p.Destinations}, {"ports", p.Ports}} {
			if len(l.rows) == 0 {
				continue
			}
			parts := make([]string, len(l.rows))
			for i, r := range l.rows {
				parts[i] = fmt.Sprintf("%s (%d)", r.Name, r.Count)
			}
			fmt.Fprintf(w, "  top %-14s %s\n", l.title+":", strings.Join(parts, ", "))
		}
	}
}
