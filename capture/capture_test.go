package capture

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/nfqpolicy/nfqpolicy/filter"
	"github.com/nfqpolicy/nfqpolicy/internal/testcluster"
)

// packet builds the IP packet of f with payload bytes of data, as NFQUEUE
// hands it over (starting at the IP header).
func packet(t testing.TB, f filter.Flow, payload int) []byte {
	t.Helper()
	var ip gopacket.SerializableLayer
	var nl gopacket.NetworkLayer
	if f.Src.Is4() {
		l := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocol(f.Proto), SrcIP: f.Src.AsSlice(), DstIP: f.Dst.AsSlice()}
		ip, nl = l, l
	} else {
		l := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocol(f.Proto), SrcIP: f.Src.AsSlice(), DstIP: f.Dst.AsSlice()}
		ip, nl = l, l
	}
	ls := []gopacket.SerializableLayer{ip}
	switch f.Proto {
	case filter.ProtoTCP:
		tcp := &layers.TCP{SrcPort: layers.TCPPort(f.SrcPort), DstPort: layers.TCPPort(f.DstPort), SYN: true, Window: 1000}
		tcp.SetNetworkLayerForChecksum(nl)
		ls = append(ls, tcp)
	case filter.ProtoUDP:
		udp := &layers.UDP{SrcPort: layers.UDPPort(f.SrcPort), DstPort: layers.UDPPort(f.DstPort)}
		udp.SetNetworkLayerForChecksum(nl)
		ls = append(ls, udp)
	}
	ls = append(ls, gopacket.Payload(bytes.Repeat([]byte{0xab}, payload)))
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

type readPacket struct {
	data     []byte
	ci       gopacket.CaptureInfo
	comments []string
	drop     uint64
}

func readCapture(t *testing.T, path string) ([]readPacket, pcapgo.NgInterface) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewNgReader(f, pcapgo.DefaultNgReaderOptions)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var out []readPacket
	for {
		data, ci, opts, err := r.ReadPacketDataWithOptions()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		p := readPacket{data: append([]byte(nil), data...), ci: ci, comments: opts.Comments}
		if opts.DropCount != nil {
			p.drop = *opts.DropCount
		}
		out = append(out, p)
	}
	intf, err := r.Interface(0)
	if err != nil {
		t.Fatal(err)
	}
	if intf.LinkType != layers.LinkTypeRaw {
		t.Errorf("link type %v, want raw IP", intf.LinkType)
	}
	return out, intf
}

type probe struct {
	f       filter.Flow
	verdict string
	reason  string // substring of the reason comment
	audit   string // substring of the audit comment, "" for none
}

// probes are flows through testcluster.YAML and the comments each must get.
var probes = []probe{
	{testcluster.Flow("10.0.1.1", "10.0.1.2", 40000, 80, filter.ProtoTCP), "allow", "allowed by x/allow-a ingress[0]", ""},
	{testcluster.Flow("10.0.1.3", "10.0.1.2", 40001, 80, filter.ProtoTCP), "deny", "default deny by isolation of x/b from x/allow-a", ""},
	{testcluster.Flow("10.0.1.3", "10.0.1.1", 40002, 443, filter.ProtoTCP), "allow", "x/a not isolated", "would deny with staged x/staged-deny"},
	{testcluster.Flow("fd00::9", "fd00:10::1", 5353, 53, filter.ProtoUDP), "allow", "source is not a pod", "would deny with staged x/staged-deny"},
	{testcluster.Flow("10.0.1.3", "10.0.1.2", 40003, 8080, filter.ProtoUDP), "deny", "default deny by isolation of x/b", ""},
}

func writeProbes(t *testing.T, o Options) (path string, pkts [][]byte) {
	t.Helper()
	rs := testcluster.Compile(t)
	path = filepath.Join(t.TempDir(), "cap.pcapng")
	o.Path = path
	c, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range probes {
		pkt := packet(t, p.f, 200) // longer than the snap length
		pkts = append(pkts, pkt)
		c.OnVerdict(p.f, rs.Decide(p.f), pkt, time.Now(), time.Duration(i+1)*time.Microsecond)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	return path, pkts
}

func TestReadBackWithNgReader(t *testing.T) {
	path, pkts := writeProbes(t, Options{Select: SelectAll})
	got, _ := readCapture(t, path)
	if len(got) != len(probes) {
		t.Fatalf("read %d packets, want %d", len(got), len(probes))
	}
	for i, p := range probes {
		g := got[i]
		if !bytes.Equal(g.data, pkts[i][:MaxSnapLen]) {
			t.Errorf("packet %d: data differs from the first %d bytes sent", i, MaxSnapLen)
		}
		if g.ci.Length != len(pkts[i]) {
			t.Errorf("packet %d: original length %d, want %d", i, g.ci.Length, len(pkts[i]))
		}
		all := strings.Join(g.comments, "\n")
		if !strings.HasPrefix(all, "nfqpolicy verdict="+p.verdict+" ") {
			t.Errorf("packet %d: comments %q do not start with verdict=%s", i, all, p.verdict)
		}
		if !strings.Contains(all, "reason: "+p.verdict+": ") || !strings.Contains(all, p.reason) {
			t.Errorf("packet %d: comments %q lack reason %q", i, all, p.reason)
		}
		if p.audit != "" && (!strings.Contains(all, p.audit) || !strings.Contains(all, "audit=would-deny")) {
			t.Errorf("packet %d: comments %q lack audit %q", i, all, p.audit)
		}
		if p.audit == "" && strings.Contains(all, "audit") {
			t.Errorf("packet %d: comments %q mention audit for a flow staged policies do not change", i, all)
		}
		if want := fmt.Sprintf("latency_us=%d\n", i+1); !strings.Contains(all, want) {
			t.Errorf("packet %d: comments %q lack %q", i, all, want)
		}
	}
}

func TestReadBackWithTshark(t *testing.T) {
	tshark, err := exec.LookPath("tshark")
	if err != nil {
		t.Skip("tshark not installed (apt-get install tshark)")
	}
	path, _ := writeProbes(t, Options{Select: SelectAll})
	// tshark 4.x calls the field frame.comment (pkt_comment before 3.6);
	// -E occurrence=a keeps all comments of a packet, joined by "|".
	out, err := exec.Command(tshark, "-r", path, "-T", "fields", "-E", "separator=/t", "-E", "aggregator=|",
		"-e", "ip.src", "-e", "ipv6.src", "-e", "frame.comment").CombinedOutput()
	if err != nil {
		t.Fatalf("tshark: %v\n%s", err, out)
	}
	t.Logf("tshark output:\n%s", out)
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if strings.Contains(l, "Running as user") {
			continue
		}
		lines = append(lines, l)
	}
	if len(lines) != len(probes) {
		t.Fatalf("tshark printed %d packets, want %d:\n%s", len(lines), len(probes), out)
	}
	for i, p := range probes {
		cols := strings.Split(lines[i], "\t")
		if len(cols) != 3 {
			t.Fatalf("line %q: want 3 columns", lines[i])
		}
		if src := cols[0] + cols[1]; src != p.f.Src.String() {
			t.Errorf("packet %d: tshark decoded source %q, want %s", i, src, p.f.Src)
		}
		if !strings.Contains(cols[2], "verdict="+p.verdict) || !strings.Contains(cols[2], p.reason) {
			t.Errorf("packet %d: tshark comment %q lacks verdict=%s and %q", i, cols[2], p.verdict, p.reason)
		}
	}
}

func TestSelectAndFilter(t *testing.T) {
	tests := []struct {
		sel    Select
		filter string
		want   []int // indexes into probes
	}{
		{SelectAll, "", []int{0, 1, 2, 3, 4}},
		{SelectDenied, "", []int{1, 4}},
		{SelectWouldDeny, "", []int{2, 3}},
		{SelectAll, "proto udp", []int{3, 4}},
		{SelectAll, "host 10.0.1.2 and port 80", []int{0, 1}},
		{SelectAll, "src 10.0.1.3 and dst 10.0.1.0/30", []int{1, 2, 4}},
		{SelectAll, "dst fd00:10::/64", []int{3}},
		{SelectDenied, "port 8080 and proto udp", []int{4}},
		{SelectAll, "port 53 and proto tcp", nil},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%d/%s", tc.sel, tc.filter), func(t *testing.T) {
			path, _ := writeProbes(t, Options{Select: tc.sel, Filter: tc.filter})
			got, _ := readCapture(t, path)
			if len(got) != len(tc.want) {
				t.Fatalf("captured %d packets, want %d", len(got), len(tc.want))
			}
			for i, w := range tc.want {
				if !bytes.Equal(got[i].data[12:16], probes[w].f.Src.AsSlice()) && !bytes.Equal(got[i].data[8:24], probes[w].f.Src.AsSlice()) {
					t.Errorf("packet %d is not probe %d (%v)", i, w, probes[w].f.Src)
				}
			}
		})
	}
}

func TestParseMatch(t *testing.T) {
	f := testcluster.Flow("10.0.0.1", "10.0.0.2", 1234, 80, filter.ProtoTCP)
	tests := []struct {
		expr  string
		match bool
		err   bool
	}{
		{"", true, false},
		{"host 10.0.0.1", true, false},
		{"host 10.0.0.3", false, false},
		{"src 10.0.0.1 and dst 10.0.0.2", true, false},
		{"src 10.0.0.2", false, false},
		{"dst 10.0.0.0/24 and port 80 and proto tcp", true, false},
		{"port 1234", true, false},
		{"port 81", false, false},
		{"proto UDP", false, false},
		{"HOST 10.0.0.2 AND PORT 80", true, false},
		{"host ::ffff:10.0.0.1", true, false},
		{"host", false, true},
		{"port 70000", false, true},
		{"port x", false, true},
		{"proto gre", false, true},
		{"host 10.0.0.1 or port 80", false, true},
		{"host 10.0.0.1 port 80", false, true},
		{"net 10.0.0.0/8", false, true},
		{"host 10.0.0.300", false, true},
		{"src 10.0.0.0/33", false, true},
	}
	for _, tc := range tests {
		t.Run(tc.expr, func(t *testing.T) {
			m, err := ParseMatch(tc.expr)
			if (err != nil) != tc.err {
				t.Fatalf("ParseMatch(%q) error %v, want error %v", tc.expr, err, tc.err)
			}
			if err == nil && m.Matches(&f) != tc.match {
				t.Errorf("Matches = %v, want %v", !tc.match, tc.match)
			}
		})
	}
}

func TestSegmentRing(t *testing.T) {
	tests := []struct {
		name     string
		o        Options
		packets  int
		files    int
		maxPkts  int
		maxBytes int64
	}{
		{"by packets", Options{Segments: 3, SegmentPackets: 5}, 40, 3, 5, 0},
		{"by bytes", Options{Segments: 2, SegmentBytes: 2000}, 60, 2, 0, 2000},
		{"single segment", Options{Segments: 1, SegmentPackets: 4}, 10, 1, 4, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rs := testcluster.Compile(t)
			dir := t.TempDir()
			o := tc.o
			o.Path = filepath.Join(dir, "ring.pcapng")
			o.Select = SelectAll
			c, err := New(o)
			if err != nil {
				t.Fatal(err)
			}
			for i := range tc.packets {
				f := testcluster.Flow("10.0.1.3", "10.0.1.2", uint16(10000+i), 80, filter.ProtoTCP)
				c.OnVerdict(f, rs.Decide(f), packet(t, f, 0), time.Now(), 0)
				// Let the writer keep up: this test is about rotation, not loss.
				for c.Stats().Written+c.Stats().Lost < uint64(i+1) {
					time.Sleep(50 * time.Microsecond)
				}
			}
			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			if st := c.Stats(); st.Lost != 0 || st.Written != uint64(tc.packets) {
				t.Fatalf("stats %+v, want %d written and none lost", st, tc.packets)
			}
			entries, _ := os.ReadDir(dir)
			if len(entries) != tc.files {
				t.Fatalf("%d files, want %d", len(entries), tc.files)
			}
			// Newest packets live in ring.pcapng, older ones in .1, .2...:
			// reading the ring oldest-first yields increasing source ports
			// ending with the last packet sent.
			var ports []uint16
			for i := tc.files - 1; i >= 0; i-- {
				name := o.Path
				if i > 0 {
					name = fmt.Sprintf("%s.%d", o.Path, i)
				}
				got, _ := readCapture(t, name)
				st, _ := os.Stat(name)
				if tc.maxPkts > 0 && len(got) > tc.maxPkts {
					t.Errorf("%s holds %d packets, limit %d", name, len(got), tc.maxPkts)
				}
				if tc.maxBytes > 0 && st.Size() > tc.maxBytes+200 {
					t.Errorf("%s is %d bytes, limit %d (+ one packet)", name, st.Size(), tc.maxBytes)
				}
				for _, p := range got {
					ports = append(ports, uint16(p.data[20])<<8|uint16(p.data[21]))
				}
			}
			for i := 1; i < len(ports); i++ {
				if ports[i] != ports[i-1]+1 {
					t.Fatalf("ring holds ports %v: not consecutive", ports)
				}
			}
			if len(ports) == 0 || ports[len(ports)-1] != uint16(10000+tc.packets-1) {
				t.Errorf("ring ends with port %v, want the last packet %d", ports, 10000+tc.packets-1)
			}
		})
	}
}

func TestLossIsRecorded(t *testing.T) {
	rs := testcluster.Compile(t)
	path := filepath.Join(t.TempDir(), "loss.pcapng")
	c, err := New(Options{Path: path, Select: SelectAll, Buffer: 1, Poll: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	f := testcluster.Flow("10.0.1.3", "10.0.1.2", 1, 80, filter.ProtoTCP)
	v := rs.Decide(f)
	pkt := packet(t, f, 0)
	// Bursts of 10 into a one-slot buffer: the first of each burst gets
	// in, nine are lost, and the next burst's first packet reports them.
	const rounds, burst = 20, 10
	for round := range rounds {
		for range burst {
			c.OnVerdict(f, v, pkt, time.Now(), 0)
		}
		for i := 0; c.Stats().Written < uint64(round+1); i++ {
			if i > 5000 {
				t.Fatalf("round %d: writer stuck at %d written", round, c.Stats().Written)
			}
			time.Sleep(time.Millisecond)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	st := c.Stats()
	if st.Written != rounds || st.Lost != rounds*(burst-1) {
		t.Fatalf("stats %+v, want %d written, %d lost", st, rounds, rounds*(burst-1))
	}
	got, intf := readCapture(t, path)
	if len(got) != rounds {
		t.Fatalf("file holds %d packets, want %d", len(got), rounds)
	}
	for i, p := range got {
		want := uint64(burst - 1)
		if i == 0 {
			want = 0
		}
		if p.drop != want {
			t.Errorf("packet %d: drop count %d, want %d", i, p.drop, want)
		}
		if has := strings.Contains(strings.Join(p.comments, "\n"), fmt.Sprintf("capture lost %d packets before this one", p.drop)); has != (p.drop > 0) {
			t.Errorf("packet %d: loss comment present %v, drop count %d: %q", i, has, p.drop, p.comments)
		}
	}
	// The last burst's losses have no later packet: the interface
	// statistics carry the total.
	if intf.Statistics.PacketsDropped != st.Lost || intf.Statistics.PacketsReceived != rounds*burst {
		t.Errorf("interface statistics dropped %d received %d, want %d and %d", intf.Statistics.PacketsDropped, intf.Statistics.PacketsReceived, st.Lost, rounds*burst)
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	dir := t.TempDir()
	for _, o := range []Options{
		{},
		{Path: filepath.Join(dir, "x"), Filter: "port"},
		{Path: filepath.Join(dir, "x"), Select: 7},
		{Path: filepath.Join(dir, "no-such-dir", "x")},
	} {
		if _, err := New(o); err == nil {
			t.Errorf("New(%+v) succeeded", o)
		}
	}
	if _, err := ParseSelect("everything"); err == nil {
		t.Error("ParseSelect accepted a bad name")
	}
}

func TestOnVerdictAllocatesNothing(t *testing.T) {
	rs := testcluster.Compile(t)
	f := testcluster.Flow("10.0.1.3", "10.0.1.2", 1, 80, filter.ProtoTCP)
	v := rs.Decide(f)
	pkt := packet(t, f, 300)
	m, _ := ParseMatch("host 10.0.1.2 and port 80")
	for _, size := range []int{1 << 16, 1} {
		// No writer goroutine: only the verdict path is measured (enqueue,
		// then with a full buffer the drop path).
		c := &Capture{o: Options{SnapLen: MaxSnapLen, Select: SelectAll}, match: m, ch: make(chan slot, size)}
		c.OnVerdict(f, v, pkt, time.Now(), 0)
		if n := testing.AllocsPerRun(1000, func() { c.OnVerdict(f, v, pkt, time.Now(), time.Microsecond) }); n != 0 {
			t.Errorf("buffer %d: OnVerdict allocates %v per call", size, n)
		}
	}
}

func TestOrigLen(t *testing.T) {
	v4 := packet(t, testcluster.Flow("10.0.0.1", "10.0.0.2", 1, 2, filter.ProtoTCP), 500)
	v6 := packet(t, testcluster.Flow("fd00::1", "fd00::2", 1, 2, filter.ProtoUDP), 500)
	for _, tc := range []struct {
		pkt  []byte
		want uint32
	}{
		{v4[:MaxSnapLen], uint32(len(v4))},
		{v6[:MaxSnapLen], uint32(len(v6))},
		{[]byte{0x45}, 1},
		{[]byte{0x00, 1, 2, 3, 4}, 5},
	} {
		if got := origLen(tc.pkt); got != tc.want {
			t.Errorf("origLen(%x...) = %d, want %d", tc.pkt[:1], got, tc.want)
		}
	}
}

func BenchmarkOnVerdict(b *testing.B) {
	rs := testcluster.Compile(b)
	f := testcluster.Flow("10.0.1.3", "10.0.1.2", 1, 80, filter.ProtoTCP)
	v := rs.Decide(f)
	pkt := packet(b, f, 300)
	c, err := New(Options{Path: filepath.Join(b.TempDir(), "bench.pcapng"), Select: SelectAll, Segments: 2, SegmentBytes: 1 << 20})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		c.OnVerdict(f, v, pkt, time.Now(), time.Microsecond)
	}
	b.StopTimer()
	c.Close()
	st := c.Stats()
	b.ReportMetric(float64(st.Lost)/float64(b.N), "lost/op")
}

// A packet a ClusterNetworkPolicy decided carries the cluster policy, its
// tier and rule in its comment, and so does one an Admin Pass sent on.
func TestClusterPolicyComments(t *testing.T) {
	rs := testcluster.CompileCNP(t, testcluster.CNP)
	path := filepath.Join(t.TempDir(), "cap.pcapng")
	c, err := New(Options{Path: path, Select: SelectAll})
	if err != nil {
		t.Fatal(err)
	}
	cases := []probe{
		{testcluster.Flow("10.0.1.3", "10.0.1.2", 40000, 8080, filter.ProtoTCP), "allow", `accepted by Admin ClusterNetworkPolicy/guard (priority 5) ingress[0] "y-web" Accept`, ""},
		{testcluster.Flow("10.0.1.3", "10.0.1.2", 40001, 80, filter.ProtoTCP), "deny", `passed by Admin ClusterNetworkPolicy/guard (priority 5) ingress[1] "y-rest" Pass; default deny by isolation of x/b from x/allow-a`, ""},
		{testcluster.Flow("10.0.1.2", "203.0.113.9", 40002, 443, filter.ProtoTCP), "deny", `denied by Admin ClusterNetworkPolicy/guard (priority 5) egress[0] "no-net" Deny to[0] (networks 203.0.113.0/24)`, ""},
	}
	for i, p := range cases {
		c.OnVerdict(p.f, rs.Decide(p.f), packet(t, p.f, 60), time.Now(), time.Duration(i+1)*time.Microsecond)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	got, _ := readCapture(t, path)
	if len(got) != len(cases) {
		t.Fatalf("read %d packets, want %d", len(got), len(cases))
	}
	for i, p := range cases {
		all := strings.Join(got[i].comments, "\n")
		if !strings.HasPrefix(all, "nfqpolicy verdict="+p.verdict+" ") || !strings.Contains(all, p.reason) {
			t.Errorf("packet %d: comments %q, want verdict=%s and %q", i, all, p.verdict, p.reason)
		}
	}
}
