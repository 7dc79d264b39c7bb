// Package whatif replays the flows agents recorded in their flow logs
// through two compiled rulesets, the cluster as it is and the cluster with a
// proposed change, and reports every flow whose verdict the change flips,
// with the policy that flips it.
package whatif

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"time"

	"github.com/nfqpolicy/nfqpolicy/filter"
	"github.com/nfqpolicy/nfqpolicy/flowlog"
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

// Reader aggregates flow-log lines into distinct flows. Reading a line
// allocates nothing in the common case: flowlog.Parser reads the agent's
// lines without reflection, addresses, pod and node names are interned,
// and a flow is found by a compact key of interned address numbers.
type Reader struct {
	log    Log
	parser flowlog.Parser
	fields flowlog.Fields
	flows  map[flowKey]int32 // index into aggs
	aggs   []agg
	// addrIDs numbers address texts; two texts of one address (an IPv6
	// address written two ways) get one number, through addrOf.
	addrIDs map[string]uint32
	addrOf  map[netip.Addr]uint32
	addrs   []netip.Addr
	names   map[string]string
	nodeIDs map[string]uint32
	nodes   []string
	// workers parse lines in parallel when more than 1 (readParallel).
	workers int
}

// flowKey is Key with interned addresses: 12 bytes to hash, not 56.
type flowKey struct {
	src, dst uint32
	port     uint16
	proto    uint8
}

// agg is what the lines of one flow add up to.
type agg struct {
	key            Key
	count          int
	first, last    time.Time
	srcPod, dstPod string
	logged         string
	nodes          []uint32 // indexes into Reader.nodes, each once
}

// NewReader returns an empty Reader.
func NewReader() *Reader {
	return &Reader{
		flows: map[flowKey]int32{}, addrIDs: map[string]uint32{}, addrOf: map[netip.Addr]uint32{},
		names: map[string]string{}, nodeIDs: map[string]uint32{},
		workers: min(runtime.GOMAXPROCS(0), 4),
	}
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
	if r.workers > 1 {
		return r.readParallel(name, in)
	}
	sc := newScanner(in)
	line := 0
	for sc.Scan() {
		line++
		b := sc.Bytes()
		if len(bytes.TrimSpace(b)) == 0 {
			continue
		}
		if err := r.Line(b); err != nil {
			r.malformed(name, line, err)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read %s: %w", name, err)
	}
	return nil
}

func newScanner(in io.Reader) *bufio.Scanner {
	sc := bufio.NewScanner(in)
	// A large buffer for few reads; lines stay limited to 1 MiB.
	sc.Buffer(make([]byte, 256<<10), 1<<20)
	return sc
}

func (r *Reader) malformed(name string, line int, err error) {
	r.log.Malformed++
	if r.log.FirstMalformed == "" {
		r.log.FirstMalformed = fmt.Sprintf("%s:%d: %v", name, line, err)
	}
}

// Line adds one flow-log line.
func (r *Reader) Line(b []byte) error {
	if err := parseLine(&r.parser, b, &r.fields); err != nil {
		return err
	}
	return r.add(&r.fields)
}

// parseLine reads a line into rec with p, or with encoding/json when p
// does not take it (a line not in the agent's form), which then decides,
// and words the error, as it always did.
func parseLine(p *flowlog.Parser, b []byte, rec *flowlog.Fields) error {
	if p.Parse(b, rec) {
		return nil
	}
	var j record
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*rec = flowlog.Fields{
		Time: j.Time, Node: []byte(j.Node), Verdict: []byte(j.Verdict), Proto: []byte(j.Proto),
		Src: []byte(j.Src), Dst: []byte(j.Dst), DstPort: j.DstPort, SrcPod: []byte(j.SrcPod), DstPod: []byte(j.DstPod),
		Lost: j.Lost, RateLimited: j.RateLimited,
	}
	return nil
}

// add counts one parsed line.
func (r *Reader) add(rec *flowlog.Fields) error {
	r.log.Lost += rec.Lost
	r.log.RateLimited += rec.RateLimited
	if len(rec.Verdict) == 0 {
		return nil // a loss summary
	}
	k, err := r.key(rec)
	if err != nil {
		return err
	}
	r.log.Records++
	i, ok := r.flows[k]
	if !ok {
		i = int32(len(r.aggs))
		r.aggs = append(r.aggs, agg{
			key:   Key{Src: r.addrs[k.src], Dst: r.addrs[k.dst], Port: k.port, Proto: k.proto},
			first: rec.Time, last: rec.Time,
		})
		r.flows[k] = i
	}
	f := &r.aggs[i]
	f.count++
	if rec.Time.Before(f.first) {
		f.first = rec.Time
	}
	if !rec.Time.Before(f.last) {
		f.last = rec.Time
		f.srcPod, f.dstPod = r.name(rec.SrcPod), r.name(rec.DstPod)
		f.logged = "deny"
		if string(rec.Verdict) == "allow" {
			f.logged = "allow"
		}
	}
	if len(rec.Node) > 0 {
		n, ok := r.nodeIDs[string(rec.Node)]
		if !ok {
			n = uint32(len(r.nodes))
			r.nodes = append(r.nodes, string(rec.Node))
			r.nodeIDs[r.nodes[n]] = n
		}
		if !slices.Contains(f.nodes, n) {
			f.nodes = append(f.nodes, n)
		}
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

// name interns a pod name.
func (r *Reader) name(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	if s, ok := r.names[string(b)]; ok {
		return s
	}
	s := string(b)
	r.names[s] = s
	return s
}

// addr returns the number of the address written as b.
func (r *Reader) addr(b []byte) (uint32, error) {
	if id, ok := r.addrIDs[string(b)]; ok {
		return id, nil
	}
	a, err := netip.ParseAddr(string(b))
	if err != nil {
		return 0, err
	}
	id, ok := r.addrOf[a]
	if !ok {
		id = uint32(len(r.addrs))
		r.addrs = append(r.addrs, a)
		r.addrOf[a] = id
	}
	r.addrIDs[string(b)] = id
	return id, nil
}

func (r *Reader) key(rec *flowlog.Fields) (flowKey, error) {
	if v := string(rec.Verdict); v != "allow" && v != "deny" {
		return flowKey{}, fmt.Errorf("verdict %q is neither allow nor deny", rec.Verdict)
	}
	src, err := r.addr(rec.Src)
	if err != nil {
		return flowKey{}, fmt.Errorf("src: %w", err)
	}
	dst, err := r.addr(rec.Dst)
	if err != nil {
		return flowKey{}, fmt.Errorf("dst: %w", err)
	}
	if s, d := r.addrs[src], r.addrs[dst]; s.Is4() != d.Is4() {
		return flowKey{}, fmt.Errorf("src %s and dst %s are of different families", s, d)
	}
	var proto uint8
	switch string(rec.Proto) {
	case "tcp":
		proto = filter.ProtoTCP
	case "udp":
		proto = filter.ProtoUDP
	default:
		if proto, err = parseProto(string(rec.Proto)); err != nil {
			return flowKey{}, err
		}
	}
	return flowKey{src: src, dst: dst, port: rec.DstPort, proto: proto}, nil
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
	flows := make([]Flow, len(r.aggs))
	l.Flows = make([]*Flow, len(r.aggs))
	for i := range r.aggs {
		a := &r.aggs[i]
		f := &flows[i]
		*f = Flow{Key: a.key, SrcPod: a.srcPod, DstPod: a.dstPod, Count: a.count, First: a.first, Last: a.last,
			Nodes: make([]string, 0, len(a.nodes)), Logged: a.logged}
		for _, n := range a.nodes {
			f.Nodes = append(f.Nodes, r.nodes[n])
		}
		sort.Strings(f.Nodes)
		l.Flows[i] = f
	}
	sort.Slice(l.Flows, func(i, j int) bool {
		a, b := l.Flows[i], l.Flows[j]
		if !a.First.Equal(b.First) {
			return a.First.Before(b.First)
		}
		return keyLess(a.Key, b.Key)
	})
	l.Nodes = append([]string(nil), r.nodes...)
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
