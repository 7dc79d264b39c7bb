package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/nfqpolicy/nfqpolicy/cluster"
	"github.com/nfqpolicy/nfqpolicy/filter"
	"github.com/nfqpolicy/nfqpolicy/probe"
)

type matrixCell struct {
	From    string `json:"from"`
	To      string `json:"to"`
	Port    int    `json:"port"`
	Proto   string `json:"protocol"`
	Family  int    `json:"family"`
	Verdict string `json:"verdict"`
	Reason  string `json:"reason"`
}

func cmdMatrix(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("matrix", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var snaps flagList
	var ports portList
	fs.Var(&snaps, "snapshot", "snapshot file (kubectl YAML/JSON or a scenario); repeatable")
	fs.Var(&ports, "port", "destination port as 80/TCP; repeatable (default 80/TCP)")
	family := fs.Int("family", 4, "address family of the pods' addresses: 4 or 6")
	out := fs.String("o", "table", "output: table or json")
	kf := addKubeFlags(fs, true)
	fs.Usage = func() { matrixUsage(stderr, fs, kf) }
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *out != "table" && *out != "json" {
		fmt.Fprintf(stderr, "nfqpolicy matrix: -o %q: want table or json\n", *out)
		return 2
	}
	if *family != 4 && *family != 6 {
		fmt.Fprintf(stderr, "nfqpolicy matrix: --family %d: want 4 or 6\n", *family)
		return 2
	}
	if len(ports) == 0 {
		ports = portList{{port: 80, proto: 6}}
	}
	c, rs, err := loadSnapshotOrCluster(ctx, kf, snaps, stderr)
	if err != nil {
		return 2
	}
	type ep struct {
		name string
		addr netip.Addr
	}
	var eps []ep
	for _, p := range c.Pods {
		if !cluster.PodActive(p) {
			continue
		}
		if p.Spec.HostNetwork {
			continue // node traffic, not a pod of the table
		}
		if kf.namespaceGiven() && p.Namespace != kf.namespace() {
			continue
		}
		a, ok := cluster.PodAddr(p, *family)
		if !ok {
			continue
		}
		eps = append(eps, ep{name: p.Namespace + "/" + p.Name, addr: a})
	}
	sort.Slice(eps, func(i, j int) bool { return eps[i].name < eps[j].name })
	if len(eps) == 0 {
		fmt.Fprintf(stderr, "nfqpolicy matrix: no running pod has an IPv%d address\n", *family)
		return 2
	}
	path := probe.NewPath(rs, 0)
	var cells []matrixCell
	for _, pt := range ports {
		if ctx.Err() != nil {
			return 2
		}
		tw := tabwriter.NewWriter(stdout, 0, 0, 1, ' ', 0)
		if *out == "table" {
			fmt.Fprintf(stdout, "Reachability matrix %s IPv%d ('.' allowed, 'X' denied; rows: from, columns: to)\n", pt, *family)
			fmt.Fprint(tw, "-")
			for _, to := range eps {
				fmt.Fprintf(tw, "\t%s", to.name)
			}
			fmt.Fprintln(tw)
		}
		for _, from := range eps {
			row := []string{from.name}
			for _, to := range eps {
				if from.name == to.name {
					row = append(row, "-") // not specified by NetworkPolicy
					continue
				}
				v, err := path.Decide(from.addr, to.addr, pt.port, pt.proto, false)
				if err != nil {
					fmt.Fprintf(stderr, "nfqpolicy matrix: %s -> %s: %v\n", from.name, to.name, err)
					return 2
				}
				mark, verdict := "X", "deny"
				if v.Allow {
					mark, verdict = ".", "allow"
				}
				row = append(row, mark)
				cells = append(cells, matrixCell{From: from.name, To: to.name, Port: pt.port, Proto: filter.ProtoName(pt.proto), Family: *family, Verdict: verdict, Reason: rs.Describe(v)})
			}
			if *out == "table" {
				fmt.Fprintln(tw, strings.Join(row, "\t"))
			}
		}
		if *out == "table" {
			tw.Flush()
			fmt.Fprintln(stdout)
		}
	}
	if *out == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(cells); err != nil {
			fmt.Fprintf(stderr, "nfqpolicy matrix: %v\n", err)
			return 2
		}
	}
	return 0
}
