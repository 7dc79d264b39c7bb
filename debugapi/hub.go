package debugapi

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nfqpolicy/nfqpolicy/filter"
	"github.com/nfqpolicy/nfqpolicy/flowlog"
)

// Hub keeps the last decisions in a ring and fans new ones out to trace
// subscribers. Its OnVerdict is the observer hook: a short critical section
// to store the record, then a non-blocking send per subscriber.
type Hub struct {
	seq atomic.Uint64

	mu   sync.Mutex
	ring []flowlog.Record
	next int
	n    int
	// lastRS is the Ruleset of the newest record; a record of another one
	// makes the ring drop all but the keptRulesets newest Rulesets.
	lastRS *filter.Ruleset

	subMu sync.Mutex
	subs  atomic.Pointer[[]*Subscription] // copy on write: the verdict path only loads
}

// NewHub keeps the last size decisions (default 1024).
func NewHub(size int) *Hub {
	if size <= 0 {
		size = 1024
	}
	h := &Hub{ring: make([]flowlog.Record, size)}
	h.subs.Store(&[]*Subscription{})
	return h
}

// OnVerdict records a decision. It never blocks and allocates nothing
// (except, once per Ruleset change, for subscribers filtering by pod name:
// see Filter).
func (h *Hub) OnVerdict(f filter.Flow, v filter.Verdict, _ []byte, at time.Time, latency time.Duration) {
	r := flowlog.Record{Time: at.UnixNano(), Seq: h.seq.Add(1), Flow: f, Verdict: v, Latency: latency}
	h.mu.Lock()
	if v.Ruleset != h.lastRS {
		h.lastRS = v.Ruleset
		h.forgetOldRulesets(v.Ruleset)
	}
	h.ring[h.next] = r
	h.next = (h.next + 1) % len(h.ring)
	h.n = min(h.n+1, len(h.ring))
	h.mu.Unlock()
	for _, s := range *h.subs.Load() {
		s.offer(&r)
	}
}

// keptRulesets bounds how many compiled Rulesets the ring keeps alive.
// Each record's Verdict points at the Ruleset that decided it (so that it
// renders with the names that applied), and a Ruleset of 10,000 pods and
// 2,000 policies is about 11 MiB: under churn (a recompile every few
// hundred ms) a ring of 1,024 records kept a dozen of them on a busy node
// (bench/scale saw the agent's RSS pass 500 MiB) and, on a node deciding
// a flow now and then, could keep one per record.
const keptRulesets = 4

// forgetOldRulesets clears the Ruleset of every ring record decided by
// none of the keptRulesets newest Rulesets (newest among the records, cur
// counting as the newest); such records still show their flow and verdict
// but no longer pod names or reasons. It runs only when the Ruleset
// changes, walks the ring once and allocates nothing. h.mu is held.
func (h *Hub) forgetOldRulesets(cur *filter.Ruleset) {
	var kept [keptRulesets]*filter.Ruleset
	kept[0] = cur
	nk := 1
	for i := 1; i <= h.n; i++ {
		v := &h.ring[(h.next-i+len(h.ring))%len(h.ring)].Verdict
		if v.Ruleset == nil {
			continue
		}
		known := false
		for _, k := range kept[:nk] {
			if k == v.Ruleset {
				known = true
				break
			}
		}
		switch {
		case known:
		case nk < len(kept):
			kept[nk] = v.Ruleset
			nk++
		default:
			v.Ruleset = nil
		}
	}
}

// Recent returns up to n of the latest decisions matching m, oldest first.
func (h *Hub) Recent(n int, m *Filter) []flowlog.Record {
	h.mu.Lock()
	all := make([]flowlog.Record, 0, h.n)
	for i := h.n; i > 0; i-- {
		all = append(all, h.ring[(h.next-i+len(h.ring))%len(h.ring)])
	}
	h.mu.Unlock()
	out := all[:0]
	for i := range all {
		if m.Matches(&all[i].Flow, &all[i].Verdict) {
			out = append(out, all[i])
		}
	}
	if n > 0 && len(out) > n {
		out = out[len(out)-n:]
	}
	return out
}

// Subscription is one trace client's feed. A subscriber that does not keep
// up loses records; the next record it gets carries the count in Lost.
type Subscription struct {
	h        *Hub
	m        *Filter
	ch       chan flowlog.Record
	pendLost atomic.Uint64
	lost     atomic.Uint64
}

// Subscribe starts a feed of decisions matching m, buffering up to buf
// (default 256). Close it when done.
func (h *Hub) Subscribe(m *Filter, buf int) *Subscription {
	if buf <= 0 {
		buf = 256
	}
	s := &Subscription{h: h, m: m, ch: make(chan flowlog.Record, buf)}
	h.subMu.Lock()
	old := *h.subs.Load()
	next := make([]*Subscription, len(old), len(old)+1)
	copy(next, old)
	next = append(next, s)
	h.subs.Store(&next)
	h.subMu.Unlock()
	return s
}

// C delivers the matching records.
func (s *Subscription) C() <-chan flowlog.Record { return s.ch }

// TakeLost returns and resets the count of records lost that no delivered
// record has reported yet.
func (s *Subscription) TakeLost() uint64 { return s.pendLost.Swap(0) }

// Lost is the total lost by this subscription.
func (s *Subscription) Lost() uint64 { return s.lost.Load() }

// Close stops the feed. The channel is not closed (a verdict goroutine may
// still hold the old subscriber list); it is simply no longer fed.
func (s *Subscription) Close() {
	h := s.h
	h.subMu.Lock()
	defer h.subMu.Unlock()
	old := *h.subs.Load()
	next := make([]*Subscription, 0, len(old))
	for _, o := range old {
		if o != s {
			next = append(next, o)
		}
	}
	h.subs.Store(&next)
}

// Subscribers is the number of live subscriptions.
func (h *Hub) Subscribers() int { return len(*h.subs.Load()) }

func (s *Subscription) offer(r *flowlog.Record) {
	if !s.m.Matches(&r.Flow, &r.Verdict) {
		return
	}
	c := *r
	if s.pendLost.Load() != 0 {
		c.Lost = s.pendLost.Swap(0)
	}
	select {
	case s.ch <- c:
	default:
		s.pendLost.Add(c.Lost + 1)
		s.lost.Add(1)
	}
}

// Filter selects decisions by source, destination and destination port.
// Endpoints are "ns/name" (the pod on that side of the verdict), an IP
// address or a CIDR prefix. A nil Filter matches everything.
type Filter struct {
	from, to endpoint
	port     uint16
	proto    uint8 // 0: any

	// Pod names resolve to indexes of one Ruleset; the verdict path
	// re-resolves (once) when a verdict comes from a newer one.
	resolved atomic.Pointer[resolution]
}

type endpoint struct {
	pod    string
	prefix netip.Prefix
}

type resolution struct {
	rs       *filter.Ruleset
	from, to int32
}

// ParseFilter reads the from, to and port query values ("" for any). port
// is "80", "80/TCP", "53/UDP" or "/SCTP" (any port of that protocol).
func ParseFilter(from, to, port string) (*Filter, error) {
	m := &Filter{}
	var err error
	if m.from, err = parseEndpoint(from); err != nil {
		return nil, fmt.Errorf("from: %w", err)
	}
	if m.to, err = parseEndpoint(to); err != nil {
		return nil, fmt.Errorf("to: %w", err)
	}
	if port != "" {
		num, proto, hasProto := strings.Cut(port, "/")
		if num != "" {
			n, err := strconv.ParseUint(num, 10, 16)
			if err != nil || n == 0 {
				return nil, fmt.Errorf("port %q: want a number 1-65535, optionally /TCP, /UDP or /SCTP", port)
			}
			m.port = uint16(n)
		}
		if hasProto {
			p, err := filter.ProtoNumber(proto)
			if err != nil || proto == "" {
				return nil, fmt.Errorf("port %q: want protocol TCP, UDP or SCTP", port)
			}
			m.proto = p
		}
	}
	return m, nil
}

func parseEndpoint(s string) (endpoint, error) {
	if s == "" {
		return endpoint{}, nil
	}
	if p, err := netip.ParsePrefix(s); err == nil {
		return endpoint{prefix: p.Masked()}, nil
	}
	if a, err := netip.ParseAddr(s); err == nil {
		a = a.Unmap()
		return endpoint{prefix: netip.PrefixFrom(a, a.BitLen())}, nil
	}
	ns, name, ok := strings.Cut(s, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return endpoint{}, fmt.Errorf("%q is not ns/pod, an IP address or a CIDR prefix", s)
	}
	return endpoint{pod: s}, nil
}

func (e *endpoint) matches(a netip.Addr, pod, want int32) bool {
	switch {
	case e.pod != "":
		return pod >= 0 && pod == want
	case e.prefix.IsValid():
		return e.prefix.Contains(a.Unmap())
	}
	return true
}

func (m *Filter) resolve(rs *filter.Ruleset) *resolution {
	r := m.resolved.Load()
	if r != nil && r.rs == rs {
		return r
	}
	r = &resolution{rs: rs, from: -1, to: -1}
	if rs != nil && (m.from.pod != "" || m.to.pod != "") {
		pods, _, _, _ := rs.Counts()
		for i := range int32(pods) {
			name := rs.PodName(i)
			if name == m.from.pod {
				r.from = i
			}
			if name == m.to.pod {
				r.to = i
			}
		}
	}
	m.resolved.Store(r)
	return r
}

// Matches reports whether a decision passes the filter.
func (m *Filter) Matches(f *filter.Flow, v *filter.Verdict) bool {
	if m == nil {
		return true
	}
	if m.port != 0 && f.DstPort != m.port {
		return false
	}
	if m.proto != 0 && f.Proto != m.proto {
		return false
	}
	if m.from.pod == "" && m.to.pod == "" {
		return m.from.matches(f.Src, -1, -1) && m.to.matches(f.Dst, -1, -1)
	}
	r := m.resolve(v.Ruleset)
	return m.from.matches(f.Src, v.Egress.Pod, r.from) && m.to.matches(f.Dst, v.Ingress.Pod, r.to)
}
