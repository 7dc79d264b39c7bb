package dataplane

import (
	"context"
	"net"
	"testing"
	"time"

	nfqueue "github.com/florianl/go-nfqueue/v2"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/rs/zerolog"

	"github.com/nfqpolicy/nfqpolicy/filter"
)

// sent is one verdict the reader issued.
type sent struct {
	id      uint32
	repeat  bool
	mark    uint32 // for repeat
	verdict int    // for final
}

type recorder struct{ got []sent }

func (r *recorder) repeat(id, mark uint32) error {
	r.got = append(r.got, sent{id: id, repeat: true, mark: mark})
	return nil
}

func (r *recorder) final(id uint32, verdict int) error {
	r.got = append(r.got, sent{id: id, verdict: verdict})
	return nil
}

// port80 allows TCP to port 80 only.
type port80 struct{}

func (port80) Decide(f filter.Flow) filter.Verdict {
	return filter.Verdict{Allow: f.Proto == filter.ProtoTCP && f.DstPort == 80}
}

type seen struct {
	f filter.Flow
	v filter.Verdict
	n int
}

type observer struct{ last seen }

func (o *observer) OnVerdict(f filter.Flow, v filter.Verdict, pkt []byte, _ time.Time, _ time.Duration) {
	o.last = seen{f, v, len(pkt)}
}

func syn4(t testing.TB, dport uint16) []byte {
	t.Helper()
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: net.IP{10, 0, 0, 1}, DstIP: net.IP{10, 0, 0, 2}}
	tcp := &layers.TCP{SrcPort: 40000, DstPort: layers.TCPPort(dport), SYN: true, Window: 1000}
	if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true, FixLengths: true}, ip, tcp); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func newTestReader(s sender, o Observer) *Reader {
	cfg := ReaderConfig{
		Queue: 100, AllowMark: 0x10000, DenyMark: 0x20000, MarkMask: 0x30000,
		Decider: port80{}, Observer: o, Log: zerolog.Nop(),
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Reader{cfg: cfg, dec: filter.NewDecoder(), send: s, ctx: ctx, cancel: cancel}
}

func ptr[T any](v T) *T { return &v }

func TestHandle(t *testing.T) {
	allowed, denied := syn4(t, 80), syn4(t, 81)
	tests := []struct {
		name      string
		id        *uint32
		payload   []byte
		mark      *uint32
		want      []sent
		wantCount CounterValues
		wantSeen  filter.Decision // ingress decision the observer saw
	}{
		{name: "allowed", id: ptr[uint32](1), payload: allowed,
			want: []sent{{id: 1, repeat: true, mark: 0x10000}}, wantCount: CounterValues{Allowed: 1}},
		{name: "denied", id: ptr[uint32](2), payload: denied,
			want: []sent{{id: 2, repeat: true, mark: 0x20000}}, wantCount: CounterValues{Denied: 1}},
		{name: "kube-proxy masquerade bit kept", id: ptr[uint32](3), payload: allowed, mark: ptr[uint32](0x4000),
			want: []sent{{id: 3, repeat: true, mark: 0x14000}}, wantCount: CounterValues{Allowed: 1}},
		{name: "foreign bits kept on deny", id: ptr[uint32](4), payload: denied, mark: ptr[uint32](0x8000_0001),
			want: []sent{{id: 4, repeat: true, mark: 0x8002_0001}}, wantCount: CounterValues{Denied: 1}},
		{name: "came back allowed: accept, no loop", id: ptr[uint32](5), payload: allowed, mark: ptr[uint32](0x10000),
			want: []sent{{id: 5, verdict: nfqueue.NfAccept}}, wantCount: CounterValues{Allowed: 1, Requeued: 1}},
		{name: "came back denied: drop, no loop", id: ptr[uint32](6), payload: allowed, mark: ptr[uint32](0x20000),
			want: []sent{{id: 6, verdict: nfqueue.NfDrop}}, wantCount: CounterValues{Allowed: 1, Requeued: 1}},
		{name: "truncated TCP header", id: ptr[uint32](7), payload: allowed[:30],
			want: []sent{{id: 7, repeat: true, mark: 0x20000}}, wantCount: CounterValues{Denied: 1, Malformed: 1}, wantSeen: filter.Malformed},
		{name: "no payload", id: ptr[uint32](8),
			want: []sent{{id: 8, repeat: true, mark: 0x20000}}, wantCount: CounterValues{Denied: 1, Malformed: 1}, wantSeen: filter.Malformed},
		{name: "garbage", id: ptr[uint32](9), payload: []byte{0xff, 1, 2},
			want: []sent{{id: 9, repeat: true, mark: 0x20000}}, wantCount: CounterValues{Denied: 1, Malformed: 1}, wantSeen: filter.Malformed},
		{name: "no packet id", payload: allowed, wantCount: CounterValues{RecvErrors: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec, obs := &recorder{}, &observer{}
			r := newTestReader(rec, obs)
			a := packet{payload: tt.payload}
			if tt.id != nil {
				a.id, a.hasID = *tt.id, true
			}
			if tt.mark != nil {
				a.mark = *tt.mark
			}
			r.handle(a)
			if len(rec.got) != len(tt.want) {
				t.Fatalf("verdicts %+v, want %+v", rec.got, tt.want)
			}
			for i := range tt.want {
				if rec.got[i] != tt.want[i] {
					t.Errorf("verdict %+v, want %+v", rec.got[i], tt.want[i])
				}
			}
			if got := r.Counters().Values(); got != tt.wantCount {
				t.Errorf("counters %+v, want %+v", got, tt.wantCount)
			}
			if tt.id != nil && obs.last.v.Ingress.Decision != tt.wantSeen {
				t.Errorf("observer saw ingress %v, want %v", obs.last.v.Ingress.Decision, tt.wantSeen)
			}
			if tt.wantSeen == filter.Malformed && (obs.last.f != filter.Flow{} || obs.last.v.Allow) {
				t.Errorf("malformed packet observed as %+v %+v", obs.last.f, obs.last.v)
			}
		})
	}
}

type panicky struct{}

func (panicky) Decide(filter.Flow) filter.Verdict { panic("decider bug") }

type panickyObserver struct{}

func (panickyObserver) OnVerdict(filter.Flow, filter.Verdict, []byte, time.Time, time.Duration) {
	panic("observer bug")
}

// TestHandlePanics: a bug in the decider or an observer costs one packet
// and is counted; the reader keeps reading.
func TestHandlePanics(t *testing.T) {
	p := syn4(t, 80)
	tests := []struct {
		name      string
		decider   Decider
		obs       Observer
		want      sent
		wantCount CounterValues
	}{
		{"decider", panicky{}, nil, sent{id: 1, verdict: nfqueue.NfDrop}, CounterValues{Denied: 1, Panics: 1}},
		{"observer after the verdict", port80{}, panickyObserver{}, sent{id: 1, repeat: true, mark: 0x10000}, CounterValues{Allowed: 1, Panics: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{}
			r := newTestReader(rec, tt.obs)
			r.cfg.Decider = tt.decider
			r.handle(packet{id: 1, hasID: true, payload: p})
			if len(rec.got) != 1 || rec.got[0] != tt.want {
				t.Fatalf("verdicts %+v, want exactly %+v", rec.got, tt.want)
			}
			if got := r.Counters().Values(); got != tt.wantCount {
				t.Errorf("counters %+v, want %+v", got, tt.wantCount)
			}
		})
	}
}

type nopSender struct{}

func (nopSender) repeat(uint32, uint32) error { return nil }
func (nopSender) final(uint32, int) error     { return nil }

// TestHandleAllocs: the reader's own part of the hot path (decode, decide,
// counters, choosing the verdict) allocates nothing for a well-formed
// packet; parsing and sending are TestWireAllocs'. For a malformed packet
// the only allocations are the decoder's error values.
func TestHandleAllocs(t *testing.T) {
	r := newTestReader(nopSender{}, nil)
	for _, tt := range []struct {
		name string
		p    []byte
	}{{"allowed", syn4(t, 80)}, {"denied", syn4(t, 81)}, {"malformed", syn4(t, 80)[:30]}} {
		a := packet{id: 1, hasID: true, payload: tt.p}
		n := testing.AllocsPerRun(1000, func() { r.handle(a) })
		dec := filter.NewDecoder()
		d := testing.AllocsPerRun(1000, func() { _, _ = dec.Decode(tt.p) })
		t.Logf("%s: handle %.0f allocs/packet, of which the decoder %.0f", tt.name, n, d)
		if n != d {
			t.Errorf("%s: handle allocates %.0f times per packet beyond the decoder's %.0f", tt.name, n-d, d)
		}
		if tt.name != "malformed" && n != 0 {
			t.Errorf("%s: handle allocates %.0f times per packet, want 0", tt.name, n)
		}
	}
}

func BenchmarkHandle(b *testing.B) {
	r := newTestReader(nopSender{}, nil)
	p := syn4(b, 80)
	a := packet{id: 1, hasID: true, payload: p}
	b.ReportAllocs()
	for b.Loop() {
		r.handle(a)
	}
}
