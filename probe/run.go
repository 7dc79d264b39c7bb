package probe

import (
	"fmt"

	"github.com/nfqpolicy/nfqpolicy/filter"
	"github.com/nfqpolicy/nfqpolicy/scenario"
)

// Options tune a run.
type Options struct {
	// Staged decides with audit-mode (staged) policies enforced, to check
	// a rollout before promoting it.
	Staged bool
	// CacheSize is the flow cache of the engine (0: a default).
	CacheSize int
}

// Result is the outcome of one probe.
type Result struct {
	Scenario string `json:"scenario"`
	From     string `json:"from"`
	To       string `json:"to"`
	Port     int    `json:"port"`
	Protocol string `json:"protocol"`
	Family   int    `json:"family"`
	Expect   string `json:"expect"`
	Got      string `json:"got"`
	Reason   string `json:"reason"`
	// File and Line locate the probe, for mismatch reports.
	File string `json:"-"`
	Line int    `json:"-"`
}

// Pass reports whether the verdict is the expected one.
func (r Result) Pass() bool { return r.Got == r.Expect }

// Scenario compiles sc's cluster and decides every probe through the
// decode, cache and verdict path of the agent.
func Scenario(sc *scenario.Scenario, opts Options) ([]Result, error) {
	rs, err := filter.Compile(sc.Cluster)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", sc.File, err)
	}
	size := opts.CacheSize
	if size <= 0 {
		size = 1 << 16
	}
	eng := filter.NewEngine(rs, size)
	dec := filter.NewDecoder()
	out := make([]Result, 0, len(sc.Probes))
	for i, p := range sc.Probes {
		proto, err := filter.ProtoNumber(p.Protocol)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", sc.File, p.Line, err)
		}
		f := filter.Flow{Src: p.Src.Addr, Dst: p.Dst.Addr, SrcPort: uint16(32768 + i%28000), DstPort: uint16(p.Port), Proto: proto}
		pkt, err := Packet(f)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", sc.File, p.Line, err)
		}
		r := Result{Scenario: sc.Name, From: p.From, To: p.To, Port: p.Port, Protocol: p.Protocol, Family: p.Family, Expect: p.Expect, File: sc.File, Line: p.Line}
		decoded, err := dec.Decode(pkt)
		if err != nil {
			// The probe's own packet must decode; failing here is a bug
			// in the decoder, reported as a denied probe.
			r.Got, r.Reason = scenario.Deny, "malformed: "+err.Error()
			out = append(out, r)
			continue
		}
		var v filter.Verdict
		if opts.Staged {
			v = rs.DecideAudit(decoded)
		} else {
			v = eng.Decide(decoded)
		}
		r.Got = scenario.Deny
		if v.Allow {
			r.Got = scenario.Allow
		}
		r.Reason = rs.Describe(v)
		out = append(out, r)
	}
	return out, nil
}
