// Package whatif replays the flows agents recorded in their flow logs
// through two compiled rulesets, the cluster as it is and the cluster with a
// proposed change, and reports every flow whose verdict the change flips,
// with the policy that flips it.
package whatif

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nfqpolicy/nfqpolicy/filter"
)

// Key identifies a flow for replay: what a verdict depends on (policies
// never match source ports).
type Key struct {
	Src, Dst netip.Addr
	Port     uint16
	Proto    uint8
}

// Flow is one distinct recorded flow with what the logs say about it.
type Flow struct {
	Key
	// SrcPod and DstPod are the pods the agent named when it logged the
	// flow (the latest record's), "" for an address that was no pod.
	SrcPod, DstPod string
	Count          int
	First, Last    time.Time
	Nodes          []string
	// Logged is the verdict of the latest record ("allow" or "deny").
	Logged string
}

// Log is what a set of flow logs holds.
type Log struct {
	Files   []string
	Records int
	Flows   []*Flow // sorted by first seen, then key
	Nodes   []string
	From    time.Time
	To      time.Time
	// Lost and RateLimited count records the agents could not write: the
	// replay then misses flows.
	Lost, RateLimited uint64
	Malformed         int
	FirstMalformed    string
}

// record is the part of a flow-log line (flowlog.Entry) a replay reads.
type record struct {
	Time        time.Time `json:"time"`
	Node        string    `json:"node"`
	Verdict     string    `json:"verdict"`
	Proto       string    `json:"proto"`
	Src         string    `json:"src"`
	Dst         string    `json:"dst"`
	DstPort     uint16    `json:"dst_port"`
	SrcPod      string    `json:"src_pod"`
	DstPod      string    `json:"dst_pod"`
	Lost        uint64    `json:"lost"`
	RateLimited uint64    `json:"rate_limited"`
}

// ExpandFiles adds to each flow log its rotated predecessors (FILE.1,
// FILE.2, ... as the agent's --flow-log rotation names them) and replaces
// a directory by the files in it, once each, oldest content first.
func ExpandFiles(paths []string) ([]string, error) {
	seen := map[string]bool{}
	var out []string
	add := func(p string) {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	for _, p := range paths {
		if p == "-" {
			add(p)
			continue
		}
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("flow log: %w", err)
		}
		if st.IsDir() {
			entries, err := os.ReadDir(p)
			if err != nil {
				return nil, fmt.Errorf("flow log directory: %w", err)
			}
			var files []string
			for _, e := range entries {
				if e.Type().IsRegular() {
					files = append(files, filepath.Join(p, e.Name()))
				}
			}
			if len(files) == 0 {
				return nil, fmt.Errorf("flow log directory %s: no files", p)
			}
			sort.Strings(files)
			for _, f := range files {
				add(f)
			}
			continue
		}
		for _, r := range rotated(p) {
			add(r)
		}
		add(p)
	}
	return out, nil
}

// rotated returns FILE.N ... FILE.1 that exist, oldest first.
func rotated(p string) []string {
	var out []string
	for n := 1; ; n++ {
		r := p + "." + strconv.Itoa(n)
		if _, err := os.Stat(r); err != nil {
			break
		}
		out = append(out, r)
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}

// Reader aggregates flow-log lines into distinct flows.
type Reader struct {
	log   Log
	flows map[Key]*Flow
	nodes map[string]bool
	// nodeSet per flow, kept apart so that Flow.Nodes is built once.
	flowNodes map[*Flow]map[string]bool
}

// NewReader returns an empty Reader.
func NewReader() *Reader {
	return &Reader{flows: map[Key]*Flow{}, nodes: map[string]bool{}, flowNodes: map[*Flow]map[string]bool{}}
}

// ReadFile reads one flow log ("-" for stdin).
func (r *Reader) ReadFile(name string, stdin io.Reader) error {
	in := stdin
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return fmt.Errorf("flow log: %w", err)
		}
		defer f.Close()
		in = f
	}
	r.log.Files = append(r.log.Files, name)
	return r.Read(name, in)
}

// Read reads flow-log lines from in; name is used in messages.
func (r *Reader) Read(name string, in io.Reader) error {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		b := sc.Bytes()
		if len(strings.TrimSpace(string(b))) == 0 {
			continue
		}
		if err := r.Line(b); err != nil {
			r.malformed(fmt.Sprintf("%s:%d: %v", name, line, err))
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read %s: %w", name, err)
	}
	return nil
}

func (r *Reader) malformed(why string) {
	r.log.Malformed++
	if r.log.FirstMalformed == "" {
		r.log.FirstMalformed = why
	}
}

// Line adds one flow-log line.
func (r *Reader) Line(b []byte) error {
	var rec record
	if err := json.Unmarshal(b, &rec); err != nil {
		return err
	}
	r.log.Lost += rec.Lost
	r.log.RateLimited += rec.RateLimited
	if rec.Verdict == "" {
		return nil // a loss summary
	}
	k, err := parseKey(&rec)
	if err != nil {
		return err
	}
	r.log.Records++
	f := r.flows[k]
	if f == nil {
		f = &Flow{Key: k, First: rec.Time, Last: rec.Time}
		r.flows[k] = f
		r.flowNodes[f] = map[string]bool{}
	}
	f.Count++
	if rec.Time.Before(f.First) {
		f.First = rec.Time
	}
	if !rec.Time.Before(f.Last) {
		f.Last = rec.Time
		f.SrcPod, f.DstPod, f.Logged = rec.SrcPod, rec.DstPod, rec.Verdict
	}
	if rec.Node != "" {
		r.nodes[rec.Node] = true
		r.flowNodes[f][rec.Node] = true
	}
	if !rec.Time.IsZero() {
		if r.log.From.IsZero() || rec.Time.Before(r.log.From) {
			r.log.From = rec.Time
		}
		if rec.Time.After(r.log.To) {
			r.log.To = rec.Time
		}
	}
	return nil
}

func parseKey(rec *record) (Key, error) {
	if rec.Verdict != "allow" && rec.Verdict != "deny" {
		return Key{}, fmt.Errorf("verdict %q is neither allow nor deny", rec.Verdict)
	}
	src, err := netip.ParseAddr(rec.Src)
	if err != nil {
		return Key{}, fmt.Errorf("src: %w", err)
	}
	dst, err := netip.ParseAddr(rec.Dst)
	if err != nil {
		return Key{}, fmt.Errorf("dst: %w", err)
	}
	if src.Is4() != dst.Is4() {
		return Key{}, fmt.Errorf("src %s and dst %s are of different families", src, dst)
	}
	proto, err := parseProto(rec.Proto)
	if err != nil {
		return Key{}, err
	}
	return Key{Src: src, Dst: dst, Port: rec.DstPort, Proto: proto}, nil
}

// parseProto reads flowlog.ProtoName's names back.
func parseProto(s string) (uint8, error) {
	switch s {
	case "tcp":
		return filter.ProtoTCP, nil
	case "udp":
		return filter.ProtoUDP, nil
	case "sctp":
		return filter.ProtoSCTP, nil
	case "icmp":
		return filter.ProtoICMP, nil
	case "icmpv6":
		return filter.ProtoICMPv6, nil
	}
	n, err := strconv.ParseUint(s, 10, 8)
	if err != nil {
		return 0, fmt.Errorf("proto %q: not tcp, udp, sctp, icmp, icmpv6 or a number", s)
	}
	return uint8(n), nil
}

// Log returns what was read, flows sorted by first seen.
func (r *Reader) Log() *Log {
	l := r.log
	l.Flows = make([]*Flow, 0, len(r.flows))
	for f, ns := range r.flowNodes {
		f.Nodes = make([]string, 0, len(ns))
		for n := range ns {
			f.Nodes = append(f.Nodes, n)
		}
		sort.Strings(f.Nodes)
		l.Flows = append(l.Flows, f)
	}
	sort.Slice(l.Flows, func(i, j int) bool {
		a, b := l.Flows[i], l.Flows[j]
		if !a.First.Equal(b.First) {
			return a.First.Before(b.First)
		}
		return keyLess(a.Key, b.Key)
	})
	for n := range r.nodes {
		l.Nodes = append(l.Nodes, n)
	}
	sort.Strings(l.Nodes)
	return &l
}

func keyLess(a, b Key) bool {
	if c := a.Src.Compare(b.Src); c != 0 {
		return c < 0
	}
	if c := a.Dst.Compare(b.Dst); c != 0 {
		return c < 0
	}
	if a.Port != b.Port {
		return a.Port < b.Port
	}
	return a.Proto < b.Proto
}
