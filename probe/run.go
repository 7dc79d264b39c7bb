package probe

import (
	"fmt"
	"net/netip"

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
	path := NewPath(rs, opts.CacheSize)
	out := make([]Result, 0, len(sc.Probes))
	for _, p := range sc.Probes {
		proto, err := filter.ProtoNumber(p.Protocol)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", sc.File, p.Line, err)
		}
		r := Result{Scenario: sc.Name, From: p.From, To: p.To, Port: p.Port, Protocol: p.Protocol, Family: p.Family, Expect: p.Expect, File: sc.File, Line: p.Line}
		v, err := path.Decide(p.Src.Addr, p.Dst.Addr, p.Port, proto, opts.Staged)
		if err != nil {
			// The probe's own packet must build and decode; failing here
			// is reported as a denied probe with the reason.
			r.Got, r.Reason = scenario.Deny, "malformed: "+err.Error()
			out = append(out, r)
			continue
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

// Path is the agent's decision path for one flow at a time: serialize the
// first packet, decode it, decide it through the engine's cache. The
// offline commands (test, matrix, explain) all decide through it.
type Path struct {
	Engine  *filter.Engine
	Decoder *filter.Decoder
	nextSrc uint16
}

// NewPath compiles nothing: it wraps an already compiled Ruleset.
func NewPath(rs *filter.Ruleset, cacheSize int) *Path {
	if cacheSize <= 0 {
		cacheSize = 1 << 16
	}
	return &Path{Engine: filter.NewEngine(rs, cacheSize), Decoder: filter.NewDecoder()}
}

// Flow builds and decodes the first packet of a flow from src to dst; the
// decoded flow is what the verdict is made on.
func (p *Path) Flow(src, dst netip.Addr, port int, proto uint8) (filter.Flow, error) {
	if port < 0 || port > 65535 {
		return filter.Flow{}, fmt.Errorf("port %d is outside 0-65535", port)
	}
	p.nextSrc++
	f := filter.Flow{Src: src, Dst: dst, SrcPort: 32768 + p.nextSrc%28000, DstPort: uint16(port), Proto: proto}
	pkt, err := Packet(f)
	if err != nil {
		return filter.Flow{}, err
	}
	return p.Decoder.Decode(pkt)
}

// Decide decides the flow from src to dst; staged enforces audit-mode
// policies too.
func (p *Path) Decide(src, dst netip.Addr, port int, proto uint8, staged bool) (filter.Verdict, error) {
	f, err := p.Flow(src, dst, port, proto)
	if err != nil {
		return filter.Verdict{}, err
	}
	if staged {
		return p.Engine.Ruleset().DecideAudit(f), nil
	}
	return p.Engine.Decide(f), nil
}
