package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/nfqpolicy/nfqpolicy/cluster"
	"github.com/nfqpolicy/nfqpolicy/filter"
	"github.com/nfqpolicy/nfqpolicy/whatif"
)

func whatifUsage(w io.Writer, fs *flag.FlagSet, kf *kubeFlags) {
	kubectlUsage(w, fs, kf, "whatif --flows FILE... (--apply FILE... | --delete KIND/NS/NAME...) [--snapshot FILE...] [-o text|json] [options]", `
Replays the flows the agents recorded in their flow logs (nfqpolicy run
--flow-log; rotated files FILE.1, FILE.2... are read too; many nodes' logs
at once; a flow is its source, destination, port and protocol, however
often it was logged) through the policies as they are and as they would be
with the change: the objects of --apply files created, or replacing the
object of the same kind and name, and the --delete objects removed. Both
are decided through the agent's own compile and decide path.

Reports every flow whose verdict the change flips, grouped by the changed
policy that flips it, with how often and when it was seen and the new
reason. A flow whose pods no longer exist is reported as such and not
replayed. The cluster is read from the API server (kubectl's flags)
unless --snapshot files are given.

Exit status: 0 no verdict changes, 1 some do, 2 bad input or an API error.`, `
# Would this policy cut anything the agents saw this week?
nfqpolicy whatif --flows /var/log/nfqpolicy/node-1/flows.jsonl --flows /var/log/nfqpolicy/node-2/flows.jsonl --apply deny-all.yaml

# What opens up if a policy goes?
nfqpolicy whatif --flows logs/ --delete networkpolicy/shop/allow-frontend -o json

# Against a snapshot instead of the cluster
nfqpolicy whatif --snapshot cluster.yaml --flows flows.jsonl --apply change.yaml`)
}

// whatifFlow is one changed flow in -o json.
type whatifFlow struct {
	Status       string    `json:"status"` // "changed" or "pod-gone"
	Src          string    `json:"src"`
	Dst          string    `json:"dst"`
	SrcPod       string    `json:"src_pod,omitempty"`
	DstPod       string    `json:"dst_pod,omitempty"`
	DstPort      uint16    `json:"dst_port"`
	Proto        string    `json:"proto"`
	Before       string    `json:"before,omitempty"`
	After        string    `json:"after,omitempty"`
	Reason       string    `json:"reason"`
	BeforeReason string    `json:"before_reason,omitempty"`
	Policies     []string  `json:"policies,omitempty"`
	Count        int       `json:"count"`
	FirstSeen    time.Time `json:"first_seen"`
	LastSeen     time.Time `json:"last_seen"`
	Nodes        []string  `json:"nodes,omitempty"`
}

func cmdWhatif(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("whatif", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var flows, applies, deletes, snaps flagList
	fs.Var(&flows, "flows", "flow log written by nfqpolicy run --flow-log (a file, its rotated FILE.N read too, or a directory); repeatable; - for stdin")
	fs.Var(&applies, "apply", "file (or directory) of objects to create or replace, kubectl YAML/JSON; repeatable")
	fs.Var(&deletes, "delete", "object to delete: networkpolicy/NAMESPACE/NAME, clusternetworkpolicy/NAME, pod/NAMESPACE/NAME...; repeatable")
	fs.Var(&snaps, "snapshot", "read the cluster from these files instead of the API server; repeatable")
	out := fs.String("o", "text", "output: text, or json (one object per changed flow)")
	kf := addKubeFlags(fs, false)
	fs.Usage = func() { whatifUsage(stderr, fs, kf) }
	if err := fs.Parse(args); err != nil {
		return 2
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "error: "+format+"\n", a...)
		return 2
	}
	if fs.NArg() > 0 {
		return fail("unexpected argument %q (flow logs go with --flows)", fs.Arg(0))
	}
	if *out != "text" && *out != "json" {
		return fail("-o %q: want text or json", *out)
	}
	if len(flows) == 0 {
		return fail("--flows is required: the flow logs to replay")
	}
	if len(applies) == 0 && len(deletes) == 0 {
		return fail("nothing to compare: give the change with --apply FILE or --delete KIND/NS/NAME")
	}
	var refs []cluster.Ref
	for _, d := range deletes {
		r, err := cluster.ParseRef(d)
		if err != nil {
			return fail("--delete %v", err)
		}
		refs = append(refs, r)
	}
	var applied *cluster.Cluster
	if len(applies) > 0 {
		c, err := cluster.LoadFiles(applies...)
		if err != nil {
			fmt.Fprintln(stderr, "error: --apply:")
			printLoadError(stderr, err)
			return 2
		}
		applied = c
	}
	files, err := whatif.ExpandFiles(flows)
	if err != nil {
		return fail("%v", err)
	}
	rd := whatif.NewReader()
	for _, f := range files {
		if err := rd.ReadFile(f, os.Stdin); err != nil {
			return fail("%v", err)
		}
	}
	log := rd.Log()
	if log.Records == 0 {
		msg := "no flow records in " + strings.Join(files, ", ")
		if log.Malformed > 0 {
			msg += fmt.Sprintf(" (%d malformed lines; first: %s)", log.Malformed, log.FirstMalformed)
		}
		return fail("%s", msg)
	}

	current, _, err := loadSnapshotOrCluster(ctx, kf, snaps, stderr)
	if err != nil {
		return 2
	}
	proposed, err := cluster.Overlay(current, applied, refs)
	if err != nil {
		return fail("%v", err)
	}
	before, err := whatif.NewState(current)
	if err != nil {
		return fail("compile the current policies: %v", err)
	}
	after, err := whatif.NewState(proposed)
	if err != nil {
		return fail("compile the proposed policies: %v", err)
	}
	res, err := whatif.Replay(log, before, after, whatif.ChangedNames(applied, refs))
	if err != nil {
		return fail("%v", err)
	}
	if *out == "json" {
		enc := json.NewEncoder(stdout)
		for _, c := range res.Changes {
			wf := jsonFlow(c.Flow, "changed")
			wf.Before, wf.After, wf.Reason, wf.BeforeReason, wf.Policies = c.Before, c.After, c.Reason, c.BeforeReason, c.Policies
			if err := enc.Encode(wf); err != nil {
				return fail("%v", err)
			}
		}
		for _, g := range res.Gone {
			wf := jsonFlow(g.Flow, "pod-gone")
			wf.Reason = g.Why
			if err := enc.Encode(wf); err != nil {
				return fail("%v", err)
			}
		}
	} else {
		writeWhatif(stdout, log, files, applied, refs, res)
	}
	if log.Malformed > 0 {
		fmt.Fprintf(stderr, "warning: %d malformed flow-log lines skipped (first: %s)\n", log.Malformed, log.FirstMalformed)
	}
	if len(res.Changes) > 0 {
		return 1
	}
	return 0
}

func jsonFlow(f *whatif.Flow, status string) whatifFlow {
	return whatifFlow{
		Status: status, Src: f.Src.String(), Dst: f.Dst.String(), SrcPod: f.SrcPod, DstPod: f.DstPod,
		DstPort: f.Port, Proto: strings.ToLower(filter.ProtoName(f.Proto)), Count: f.Count,
		FirstSeen: f.First, LastSeen: f.Last, Nodes: f.Nodes,
	}
}

func flowText(f *whatif.Flow) string {
	ep := func(pod, addr string) string {
		if pod != "" {
			return pod + " (" + addr + ")"
		}
		return addr
	}
	port := fmt.Sprintf("%d/%s", f.Port, filter.ProtoName(f.Proto))
	if f.Port == 0 {
		port = filter.ProtoName(f.Proto)
	}
	return fmt.Sprintf("%s -> %s %s", ep(f.SrcPod, f.Src.String()), ep(f.DstPod, f.Dst.String()), port)
}

func seenText(f *whatif.Flow) string {
	s := fmt.Sprintf("%d %s", f.Count, plural(f.Count, "record", "records"))
	if !f.First.IsZero() {
		s += fmt.Sprintf(", %s to %s", f.First.UTC().Format(time.RFC3339), f.Last.UTC().Format(time.RFC3339))
	}
	if len(f.Nodes) > 0 {
		s += ", " + strings.Join(f.Nodes, ",")
	}
	return s
}

func writeWhatif(w io.Writer, log *whatif.Log, files []string, applied *cluster.Cluster, refs []cluster.Ref, res *whatif.Result) {
	fmt.Fprintf(w, "What-if: %d flow records, %d distinct flows, from %d file(s)", log.Records, len(log.Flows), len(files))
	if len(log.Nodes) > 0 {
		fmt.Fprintf(w, ", nodes %s", strings.Join(log.Nodes, ", "))
	}
	fmt.Fprintln(w)
	if !log.From.IsZero() {
		fmt.Fprintf(w, "Period: %s to %s\n", log.From.UTC().Format(time.RFC3339), log.To.UTC().Format(time.RFC3339))
	}
	var change []string
	if applied != nil {
		for _, p := range applied.Policies {
			change = append(change, "apply NetworkPolicy "+p.Namespace+"/"+p.Name)
		}
		for _, p := range applied.ClusterPolicies {
			change = append(change, "apply "+filter.CNPName(p.Name))
		}
		n := len(applied.Pods) + len(applied.Nodes)
		for _, ns := range applied.Namespaces {
			if len(ns.Labels) > 1 { // more than the name label the loader adds for a policy's namespace
				n++
			}
		}
		if n > 0 {
			change = append(change, fmt.Sprintf("apply %d pods, namespaces and nodes", n))
		}
	}
	for _, r := range refs {
		change = append(change, "delete "+r.String())
	}
	fmt.Fprintf(w, "Change: %s\n", strings.Join(change, "; "))
	if log.Lost > 0 || log.RateLimited > 0 {
		fmt.Fprintf(w, "WARNING: the logs are incomplete (%d records lost, %d rate-limited): flows that were not logged are not replayed.\n", log.Lost, log.RateLimited)
	}
	fmt.Fprintf(w, "Replayed %d flows through the current and the proposed policies: %d change verdict.\n", res.Replayed, len(res.Changes))

	groups := map[string][]whatif.Change{}
	for _, c := range res.Changes {
		key := strings.Join(c.Policies, ", ")
		if key == "" {
			key = "(no changed policy decides them: the change moves pods, namespaces or labels)"
		}
		groups[key] = append(groups[key], c)
	}
	keys := make([]string, 0, len(groups))
	for k := range groups {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if len(groups[keys[i]]) != len(groups[keys[j]]) {
			return len(groups[keys[i]]) > len(groups[keys[j]])
		}
		return keys[i] < keys[j]
	})
	for _, k := range keys {
		cut, opened := 0, 0
		for _, c := range groups[k] {
			if c.After == "deny" {
				cut++
			} else {
				opened++
			}
		}
		fmt.Fprintf(w, "\n%s: would cut %d allowed flow(s), newly allow %d denied flow(s)\n", k, cut, opened)
		for _, c := range groups[k] {
			fmt.Fprintf(w, "  %-5s -> %-5s %s  (%s)\n", strings.ToUpper(c.Before), strings.ToUpper(c.After), flowText(c.Flow), seenText(c.Flow))
			fmt.Fprintf(w, "      now: %s\n", c.Reason)
		}
	}
	if len(res.Gone) > 0 {
		fmt.Fprintf(w, "\n%d recorded flow(s) not replayed: their pods are gone\n", len(res.Gone))
		for _, g := range res.Gone {
			fmt.Fprintf(w, "  %s  (%s): %s\n", flowText(g.Flow), seenText(g.Flow), g.Why)
		}
	}
}
