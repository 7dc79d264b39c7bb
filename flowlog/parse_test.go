package flowlog

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nfqpolicy/nfqpolicy/filter"
	"github.com/nfqpolicy/nfqpolicy/internal/testcluster"
)

// agentLines renders, through the agent's own Logger, lines of every kind
// it writes: flows decided by NetworkPolicies, staged policies (audit
// fields), ClusterNetworkPolicies (tiers, Pass), with labels, run and
// node; the unclean-end line of a next run; a run's closing line.
func agentLines(t testing.TB) [][]byte {
	t.Helper()
	var buf syncBuffer
	for i, rs := range []*filter.Ruleset{testcluster.Compile(t), testcluster.CompileCNP(t, testcluster.CNP)} {
		var prev *Entry
		if i == 1 {
			prev = &Entry{Run: "20261204T000000Z-deadbeef", Seq: 7}
		}
		l, err := New(Options{Out: &buf, Select: SelectAll, Previous: prev,
			Renderer: Renderer{Node: "node-1", Run: fmt.Sprintf("run-%d", i), Labels: true, Mode: Mode(i)}})
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range []filter.Flow{
			testcluster.Flow("10.0.1.1", "10.0.1.2", 4000, 80, filter.ProtoTCP),
			testcluster.Flow("10.0.1.3", "10.0.1.2", 4000, 80, filter.ProtoTCP),
			testcluster.Flow("10.0.1.3", "10.0.1.1", 4000, 443, filter.ProtoTCP),
			testcluster.Flow("10.0.1.3", "10.0.1.2", 4000, 8080, filter.ProtoTCP),
			testcluster.Flow("10.0.1.2", "203.0.113.9", 4000, 443, filter.ProtoTCP),
			testcluster.Flow("203.0.113.9", "10.0.1.3", 4000, 53, filter.ProtoUDP),
			testcluster.Flow("fd00:10::1", "fd00::2", 0, 0, filter.ProtoICMPv6),
			testcluster.Flow("10.0.1.1", "10.0.1.3", 1, 9, 132),
			testcluster.Flow("10.0.1.1", "10.0.1.3", 0, 0, 47),
		} {
			l.OnVerdict(f, rs.Decide(f), nil, time.Now(), 1234*time.Nanosecond)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
	}
	lines := bytes.Split(bytes.TrimSpace(buf.b.Bytes()), []byte("\n"))
	if len(lines) != 21 {
		t.Fatalf("rendered %d lines, want 21:\n%s", len(lines), buf.b.Bytes())
	}
	return lines
}

// agrees checks that Parse, when it takes line, gives what encoding/json
// gives, and reports whether it took it.
func agrees(t testing.TB, p *Parser, line []byte) bool {
	t.Helper()
	var f Fields
	took := p.Parse(line, &f)
	var e Entry
	err := json.Unmarshal(line, &e)
	if !took {
		if f.Time != (time.Time{}) || f.Node != nil || f.Verdict != nil || f.StagedPolicies != nil || f.Lost != 0 || f.DstPort != 0 {
			t.Fatalf("Parse(%q) refused the line but left fields %+v", line, f)
		}
		return false
	}
	if err != nil {
		t.Fatalf("Parse took %q, which encoding/json refuses: %v", line, err)
	}
	var want Fields
	want.SetEntry(&e)
	if g, w := fieldsText(&f), fieldsText(&want); g != w {
		t.Fatalf("Parse(%q)\n got %s\nwant %s (encoding/json)", line, g, w)
	}
	return true
}

func fieldsText(f *Fields) string {
	return fmt.Sprintf("time=%s node=%q verdict=%q audit=%q proto=%q src=%q dst=%q src_pod=%q dst_pod=%q unclean=%q staged=%q dst_port=%d lost=%d limited=%d lost_unknown=%v",
		f.Time.Format(time.RFC3339Nano)+"/"+f.Time.Location().String(), f.Node, f.Verdict, f.AuditVerdict, f.Proto, f.Src, f.Dst, f.SrcPod, f.DstPod,
		f.UncleanRun, f.StagedPolicies, f.DstPort, f.Lost, f.RateLimited, f.LostUnknown)
}

// TestParseTakesAgentLines: every kind of line the agent writes is read
// by the Parser itself (not left to encoding/json), as encoding/json
// reads it, without allocating.
func TestParseTakesAgentLines(t *testing.T) {
	var p Parser
	kinds := map[string]bool{}
	for _, line := range agentLines(t) {
		if !agrees(t, &p, line) {
			t.Errorf("Parse left an agent line to encoding/json: %s", line)
		}
		var f Fields
		p.Parse(line, &f)
		switch {
		case len(f.UncleanRun) > 0:
			kinds["unclean"] = true
		case len(f.Verdict) == 0:
			kinds["summary"] = true
		case len(f.StagedPolicies) > 0:
			kinds["staged"] = true
		case bytes.Contains(line, []byte(`"pass":{`)):
			kinds["pass"] = true
		case bytes.Contains(line, []byte(`"src_labels":{`)):
			kinds["labels"] = true
		}
		if n := testing.AllocsPerRun(100, func() { p.Parse(line, &f) }); n != 0 {
			t.Errorf("Parse allocates %v per call on %s", n, line)
		}
	}
	if len(kinds) != 5 {
		t.Errorf("the rendered lines cover only %v", kinds)
	}
}

// parseCases are lines encoding/json reads in ways the Parser must match
// or leave alone; take says whether the Parser should read it itself.
var parseCases = []struct {
	name, line string
	take       bool
}{
	{"empty object", `{}`, true},
	{"whitespace", " \t{ \"verdict\" : \"deny\" ,\r\"dst_port\":\n80 } \r\n", true},
	{"any order, unknown keys", `{"zz":[1,{"a":[true,false,null]},"x"],"dst_port":443,"src":"10.0.0.1","extra":{"k":-1.5e3},"verdict":"allow","time":"2026-01-01T00:00:00.5+02:00"}`, true},
	{"escaped strings", `{"src_pod":"x\/a","dst_pod":"y\u002fb \"q\" \\ \n\t\u00e9\ud83d\ude00","reason":"\u0000\b\f","node":"n\u0031"}`, true},
	{"lone surrogate", `{"src_pod":"\ud800x","dst_pod":"\udc00"}`, true},
	{"utf-8 and invalid utf-8", "{\"src_pod\":\"é\",\"dst_pod\":\"a\xffb\",\"reason\":\"\xc0\"}", true},
	{"nulls", `{"time":null,"node":null,"staged_policies":null,"dst_port":null,"lost":null,"egress":null,"src_labels":null,"cached":null,"latency_us":null,"family":null}`, true},
	{"staged", `{"verdict":"allow","staged_policies":["a/b","","x\"y"]}`, true},
	{"staged empty", `{"staged_policies":[]}`, true},
	{"staged null element", `{"staged_policies":["a",null]}`, false},
	{"staged not strings", `{"staged_policies":[1]}`, false},
	{"labels", `{"src_labels":{"app":"a","k\u00e9":null,"":""},"dst_labels":{}}`, true},
	{"labels not strings", `{"src_labels":{"app":1}}`, false},
	{"side entries", `{"egress":{"decision":"admin-deny","tier":"Admin","policy_index":-2147483648,"rule":32767,"peer":-32768,"pass":{"tier":"Admin","policy":"p","rule":-9223372036854775808,"rule_name":"r","x":[]},"other":{}},"ingress":{}}`, true},
	{"side int32 overflow", `{"egress":{"policy_index":2147483648}}`, false},
	{"side int16 overflow", `{"egress":{"rule":-32769}}`, false},
	{"side fraction", `{"egress":{"peer":1.0}}`, false},
	{"side folded key", `{"egress":{"Decision":"x"}}`, false},
	{"pass folded key", `{"egress":{"pass":{"RULE":"x"}}}`, false},
	{"side not object", `{"ingress":[]}`, false},
	{"max uint64", `{"lost":18446744073709551615,"rate_limited":0,"seq":18446744073709551615}`, true},
	{"uint64 overflow", `{"lost":18446744073709551616}`, false},
	{"uint64 far overflow", `{"lost":99999999999999999999999}`, false},
	{"uint16 overflow", `{"dst_port":65536}`, false},
	{"uint16 max", `{"dst_port":65535,"src_port":0}`, true},
	{"negative port", `{"dst_port":-1}`, false},
	{"negative zero port", `{"dst_port":-0}`, false},
	{"port exponent", `{"dst_port":8e1}`, false},
	{"port string", `{"dst_port":"80"}`, false},
	{"int overflow", `{"family":9223372036854775808}`, false},
	{"int min", `{"family":-9223372036854775808}`, true},
	{"int wraps", `{"family":90000000000000000000}`, false},
	{"float forms", `{"latency_us":-0.0e-0}`, true},
	{"float overflow", `{"latency_us":1e400}`, false},
	{"float underflow", `{"latency_us":1e-400}`, true},
	{"float long", `{"latency_us":` + strings.Repeat("9", 400) + `}`, false},
	{"bools", `{"cached":true,"audit_differs":false}`, true},
	{"bool as string", `{"cached":"true"}`, false},
	{"string as number", `{"verdict":1}`, false},
	{"folded key", `{"Verdict":"allow"}`, false},
	{"escaped key", `{"verd\u0069ct":"allow"}`, false},
	{"kelvin key", "{\"\u212aey\":1,\"ſrc\":\"10.0.0.1\"}", false},
	{"unknown ascii key", `{"VERDICTS":"x","Src_Port2":1}`, true},
	{"duplicate key", `{"verdict":"allow","verdict":"deny"}`, false},
	{"duplicate null", `{"src":"a","src":null}`, false},
	{"bad time", `{"time":"2026-01-01"}`, false},
	{"time object", `{"time":{}}`, false},
	{"time escaped", `{"time":"2026-01-01T00:00:00\u005a"}`, false},
	{"top-level null", `null`, false},
	{"top-level array", `[]`, false},
	{"trailing garbage", `{} x`, false},
	{"two objects", `{}{}`, false},
	{"trailing comma", `{"verdict":"allow",}`, false},
	{"missing colon", `{"verdict" "allow"}`, false},
	{"control in string", "{\"reason\":\"a\x01b\"}", false},
	{"bad escape", `{"reason":"\x"}`, false},
	{"short unicode escape", `{"reason":"\u12"}`, false},
	{"leading zero", `{"x":01}`, false},
	{"bare minus", `{"x":-}`, false},
	{"bad literal", `{"x":nul}`, false},
	{"literal run-on", `{"cached":truex}`, false},
	{"unterminated", `{"verdict":"allow`, false},
	{"unterminated object", `{"egress":{"decision":"x"`, false},
	{"deep", `{"x":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}`, false},
	{"nearly deep", `{"x":` + strings.Repeat("[", 60) + strings.Repeat("]", 60) + `}`, true},
}

func TestParseAgreesWithJSON(t *testing.T) {
	var p Parser
	for _, tc := range parseCases {
		t.Run(tc.name, func(t *testing.T) {
			if took := agrees(t, &p, []byte(tc.line)); took != tc.take {
				t.Errorf("Parse took the line: %v, want %v", took, tc.take)
			}
		})
	}
}

// TestParseViewsLastUntilNextParse: the fields of one line stay intact
// while the caller still holds that line, whatever it was parsed into.
func TestParseKeepsEscapedStringsApart(t *testing.T) {
	var p Parser
	var f Fields
	if !p.Parse([]byte(`{"src_pod":"a\/b","dst_pod":"c\/d","staged_policies":["e\/f","g"]}`), &f) {
		t.Fatal("not taken")
	}
	if got := fieldsText(&f); !strings.Contains(got, `src_pod="a/b" dst_pod="c/d"`) || !strings.Contains(got, `staged=["e/f" "g"]`) {
		t.Errorf("fields %s", got)
	}
}

// FuzzParse: on every input, a line the Parser takes is one encoding/json
// reads into an Entry, with the same values; it never panics.
func FuzzParse(f *testing.F) {
	for _, l := range agentLines(f) {
		f.Add(l)
	}
	for _, tc := range parseCases {
		f.Add([]byte(tc.line))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		var p Parser
		agrees(t, &p, line)
		// Again with the same Parser: nothing of the first parse leaks.
		agrees(t, &p, line)
	})
}

// TestParseKnowsEveryEntryKey: the Parser's key lists are Entry's,
// SideEntry's and PassEntry's json names, and for each key every kind of
// JSON value gets the verdict encoding/json gives. A field added to Entry
// and not to the Parser would let it take lines encoding/json refuses.
func TestParseKnowsEveryEntryKey(t *testing.T) {
	tags := func(v any) []string {
		var out []string
		rt := reflect.TypeOf(v)
		for i := range rt.NumField() {
			name, _, _ := strings.Cut(rt.Field(i).Tag.Get("json"), ",")
			out = append(out, name)
		}
		sort.Strings(out)
		return out
	}
	sorted := func(s []string) []string {
		s = slices.Clone(s)
		sort.Strings(s)
		return s
	}
	for _, c := range []struct {
		name string
		keys []string
		v    any
		wrap string // the line around {KEY: VALUE}
	}{
		{"Entry", entryKeys, Entry{}, "%s"},
		{"SideEntry", sideKeys, SideEntry{}, `{"egress":%s}`},
		{"PassEntry", passKeys, PassEntry{}, `{"ingress":{"pass":%s}}`},
	} {
		if got, want := sorted(c.keys), tags(c.v); !slices.Equal(got, want) {
			t.Errorf("the Parser's %s keys %q, want %q", c.name, got, want)
		}
		var p Parser
		for _, k := range c.keys {
			for _, v := range []string{`null`, `"s"`, `"2026-01-01T00:00:00Z"`, `""`, `0`, `-1`, `1.5`, `70000`, `true`, `false`, `[]`, `["a"]`, `[1]`, `{}`, `{"a":"b"}`, `{"a":1}`} {
				agrees(t, &p, []byte(fmt.Sprintf(c.wrap, fmt.Sprintf(`{%q:%s}`, k, v))))
			}
		}
	}
}
