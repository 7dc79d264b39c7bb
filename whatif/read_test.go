package whatif

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
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
