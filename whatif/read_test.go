package whatif

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nfqpolicy/nfqpolicy/flowlog"
)

func TestExpandFiles(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"flows.jsonl", "flows.jsonl.1", "flows.jsonl.2", "other.jsonl"} {
		if err := os.WriteFile(filepath.Join(dir, n), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p := func(n string) string { return filepath.Join(dir, n) }
	got, err := ExpandFiles([]string{p("flows.jsonl"), p("flows.jsonl.1"), dir})
	if err != nil {
		t.Fatal(err)
	}
	// Oldest rotation first, each file once.
	want := []string{p("flows.jsonl.2"), p("flows.jsonl.1"), p("flows.jsonl"), p("other.jsonl")}
	if !slices.Equal(got, want) {
		t.Errorf("ExpandFiles = %q, want %q", got, want)
	}
	if _, err := ExpandFiles([]string{p("nope")}); err == nil {
		t.Error("a missing file is not an error")
	}
}

func TestReader(t *testing.T) {
	r := NewReader()
	in := `{"time":"2026-01-01T00:00:02Z","node":"n1","verdict":"deny","proto":"udp","src":"10.0.0.1","dst":"10.0.0.2","dst_port":53,"lost":3}
{"time":"2026-01-01T00:00:01Z","node":"n2","verdict":"allow","proto":"udp","src":"10.0.0.1","src_port":999,"dst":"10.0.0.2","dst_port":53,"src_pod":"x/a"}
{"time":"2026-01-01T00:00:03Z","lost":2,"message":"summary"}
{"time":"2026-01-01T00:00:04Z","verdict":"allow","proto":"icmpv6","src":"fd00::1","dst":"fd00::2"}
{"time":"2026-01-01T00:00:05Z","verdict":"maybe","proto":"tcp","src":"10.0.0.1","dst":"10.0.0.2"}
{"time":"2026-01-01T00:00:05Z","verdict":"allow","proto":"tcp","src":"10.0.0.1","dst":"fd00::2"}
`
	if err := r.Read("t", strings.NewReader(in)); err != nil {
		t.Fatal(err)
	}
	l := r.Log()
	if l.Records != 3 || len(l.Flows) != 2 || l.Lost != 5 || l.Malformed != 2 || !strings.Contains(l.FirstMalformed, `t:5: verdict "maybe"`) {
		t.Fatalf("log %+v", l)
	}
	f := l.Flows[0]
	// The two UDP records are one flow; the latest record names the pods.
	if f.Count != 2 || f.Port != 53 || f.Proto != 17 || f.Logged != "deny" || f.SrcPod != "" || !slices.Equal(f.Nodes, []string{"n1", "n2"}) ||
		f.First.Second() != 1 || f.Last.Second() != 2 {
		t.Errorf("flow %+v", f)
	}
	if l.Flows[1].Proto != 58 || !l.Flows[1].Src.Is6() {
		t.Errorf("icmpv6 flow %+v", l.Flows[1])
	}
}

// jsonReader is the reader before flowlog.Parser: every line decoded by
// encoding/json into record, flows in a map of Key. TestReaderMatchesJSON
// holds Reader to its results.
type jsonReader struct {
	log       Log
	flows     map[Key]*Flow
	nodes     map[string]bool
	flowNodes map[*Flow]map[string]bool
}

func (r *jsonReader) read(name string, data string) {
	sc := bufio.NewScanner(strings.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		b := sc.Bytes()
		if len(strings.TrimSpace(string(b))) == 0 {
			continue
		}
		if err := r.line(b); err != nil {
			r.log.Malformed++
			if r.log.FirstMalformed == "" {
				r.log.FirstMalformed = fmt.Sprintf("%s:%d: %v", name, line, err)
			}
		}
	}
}

func (r *jsonReader) line(b []byte) error {
	var rec record
	if err := json.Unmarshal(b, &rec); err != nil {
		return err
	}
	r.log.Lost += rec.Lost
	r.log.RateLimited += rec.RateLimited
	if rec.Verdict == "" {
		return nil
	}
	if rec.Verdict != "allow" && rec.Verdict != "deny" {
		return fmt.Errorf("verdict %q is neither allow nor deny", rec.Verdict)
	}
	src, err := netip.ParseAddr(rec.Src)
	if err != nil {
		return fmt.Errorf("src: %w", err)
	}
	dst, err := netip.ParseAddr(rec.Dst)
	if err != nil {
		return fmt.Errorf("dst: %w", err)
	}
	if src.Is4() != dst.Is4() {
		return fmt.Errorf("src %s and dst %s are of different families", src, dst)
	}
	proto, err := parseProto(rec.Proto)
	if err != nil {
		return err
	}
	k := Key{Src: src, Dst: dst, Port: rec.DstPort, Proto: proto}
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

func (r *jsonReader) result() *Log {
	l := r.log
	for f, ns := range r.flowNodes {
		f.Nodes = []string{}
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

// readerLines mixes the agent's lines (flowlog.Entry as the agent writes
// them) with lines only encoding/json reads (case-folded and escaped keys,
// keys twice) and malformed ones, over flows that repeat, with ties in
// time and one address written two ways.
func readerLines(t testing.TB) string {
	var b strings.Builder
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 300 {
		e := flowlog.Entry{
			Time: t0.Add(time.Duration(i%7) * time.Second), Node: fmt.Sprintf("node-%d", i%3), Seq: uint64(i), Verdict: []string{"allow", "deny"}[i%2],
			Mode: "enforce", Proto: []string{"tcp", "udp", "sctp", "icmpv6", "47"}[i%5], Family: 6,
			Src: []string{"fd00::1", "fd00:0::1", "fd00::2"}[i%3], SrcPort: uint16(i), Dst: "fd00::9", DstPort: uint16(80 + i%4),
			SrcPod: fmt.Sprintf("x/p%d", i%11), DstPod: "x/\"q\"", Reason: "why \\ \u00e9",
			Egress: &flowlog.SideEntry{Decision: "not-isolated"}, Lost: uint64(i % 2),
		}
		line, err := json.Marshal(&e)
		if err != nil {
			t.Fatal(err)
		}
		b.Write(line)
		b.WriteString("\n")
	}
	b.WriteString(`{"Verdict":"allow","src":"10.0.0.1","dst":"10.0.0.2","proto":"tcp","dst_port":1}` + "\n")
	b.WriteString(`{"verdict":"allow","src":"10.0.0.1","src":"10.0.0.3","dst":"10.0.0.2","proto":"udp","dst_port":1,"seq":"x"}` + "\n")
	b.WriteString(`{"verd\u0069ct":"deny","src":"10.0.0.1","dst":"10.0.0.2","proto":"tcp","dst_port":1,"node":"n\u00e9"}` + "\n")
	b.WriteString("  \t\r\n")
	b.WriteString(`{"verdict":"allow","src":"10.0.0.1","dst":"10.0.0.2","proto":"tcp","dst_port":70000}` + "\n")
	b.WriteString(`{"verdict":"allow","src":"10.0.0.1","dst":"fd00::1","proto":"tcp"}` + "\n")
	b.WriteString(`{"verdict":"allow","src":"10.0.0.1","dst":"10.0.0.2","proto":"256"}` + "\n")
	b.WriteString(`{"verdict":"allow","src":"10.0.0.999","dst":"10.0.0.2","proto":"tcp"}` + "\n")
	b.WriteString(`{"time":"2026-01-01T00:00:09Z","lost":7,"rate_limited":2,"message":"records dropped"}` + "\n")
	b.WriteString("not json\n")
	return b.String()
}

// TestReaderMatchesJSON: serial and parallel, over several batches
// whose lines tie in time, the Reader gives what the encoding/json reader
// gives, down to the time zone of first and last seen and the first
// malformed line.
func TestReaderMatchesJSON(t *testing.T) {
	data := strings.Repeat(readerLines(t), 20)
	want := &jsonReader{flows: map[Key]*Flow{}, nodes: map[string]bool{}, flowNodes: map[*Flow]map[string]bool{}}
	want.read("t", data)
	wl := want.result()
	if wl.Malformed != 100 || len(wl.Flows) < 10 || strings.Count(data, "\n") < 2*batchLines {
		t.Fatalf("the lines do not exercise the reader: %d malformed, %d flows", wl.Malformed, len(wl.Flows))
	}
	wj, _ := json.MarshalIndent(wl, "", " ")
	for _, workers := range []int{1, 2, 3} {
		r := NewReader()
		r.workers = workers
		if err := r.Read("t", strings.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		gj, _ := json.MarshalIndent(r.Log(), "", " ")
		if string(gj) != string(wj) {
			t.Errorf("Reader with %d workers\n%s\nencoding/json reader\n%s", workers, gj, wj)
		}
	}
}

// TestReaderLineTooLong: a line of 1 MiB or more stops the read with
// bufio.Scanner's error, serial or parallel, after the lines before it.
func TestReaderLineTooLong(t *testing.T) {
	data := strings.Repeat(readerLines(t), 8) + "{\"reason\":\"" + strings.Repeat("x", 1<<20) + "\"}\n" + readerLines(t)
	for _, workers := range []int{1, 2} {
		r := NewReader()
		r.workers = workers
		err := r.Read("t", strings.NewReader(data))
		if err == nil || err.Error() != "read t: bufio.Scanner: token too long" {
			t.Errorf("%d workers: error %v", workers, err)
		}
		if l := r.Log(); l.Malformed != 40 || l.Records != 8*303 {
			t.Errorf("%d workers: %d records, %d malformed before the long line", workers, l.Records, l.Malformed)
		}
	}
}

// TestReaderLineAllocatesNothing: a line of a flow already seen costs no
// allocation (parse, intern, find the flow).
func TestReaderLineAllocatesNothing(t *testing.T) {
	r := NewReader()
	line := []byte(`{"time":"2026-01-01T00:00:00.123456789Z","node":"node-1","run":"r","seq":9,"verdict":"allow","mode":"enforce","proto":"tcp","family":4,"src":"10.1.0.1","src_port":33000,"dst":"10.1.0.2","dst_port":80,"src_pod":"ns0/p0","src_namespace":"ns0","dst_pod":"ns0/p1","dst_namespace":"ns0","reason":"allow: egress: not isolated","egress":{"decision":"not-isolated"},"ingress":{"decision":"allowed-by-rule","tier":"NetworkPolicy","policy":"ns0/allow-low","action":"Allow","policy_index":0,"rule":0,"peer":0},"latency_us":1.2,"cached":true}`)
	if err := r.Line(line); err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(1000, func() {
		if err := r.Line(line); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("Line allocates %v per call", n)
	}
	if l := r.Log(); l.Records != 1002 || len(l.Flows) != 1 || l.Flows[0].DstPod != "ns0/p1" {
		t.Errorf("log %+v", l)
	}
}
