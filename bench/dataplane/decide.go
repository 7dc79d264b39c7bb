package main

import (
	"encoding/binary"
	"fmt"
	"net"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/nfqpolicy/nfqpolicy/filter"
)

// synPacket is the first packet of a connection of p from srcPort, as
// the queue hands it over: starting at the IPv4 header.
func synPacket(p pair, srcPort uint16) ([]byte, error) {
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolTCP,
		SrcIP: net.IP(p.client.AsSlice()), DstIP: net.IP(p.server.AsSlice()), Flags: layers.IPv4DontFragment}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(srcPort), DstPort: layers.TCPPort(p.port), SYN: true, Window: 64240, Seq: 1}
	if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
		return nil, fmt.Errorf("build SYN: %w", err)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ip, tcp); err != nil {
		return nil, fmt.Errorf("build SYN: %w", err)
	}
	return buf.Bytes(), nil
}

// decideOnly times, in this process, the part of the agent's per-packet
// work that is its own: decoding the packet and deciding it, n times, each
// with another source port. With cacheSize 0 every decision is made
// against the compiled policies (the miss path); otherwise all but the
// first are cache hits, since the cache key has no source port. It is
// the floor under the agent's reader-side latency, which adds the
// verdict's trip back into the kernel.
func decideOnly(rs *filter.Ruleset, p pair, cacheSize, n int) (summary, error) {
	pkt, err := synPacket(p, 1024)
	if err != nil {
		return summary{}, err
	}
	dec := filter.NewDecoder()
	eng := filter.NewEngine(rs, cacheSize)
	lat := make([]time.Duration, n)
	for i := range n {
		binary.BigEndian.PutUint16(pkt[20:22], uint16(1024+i%60000))
		t0 := time.Now()
		f, err := dec.Decode(pkt)
		v := eng.Decide(f)
		lat[i] = time.Since(t0)
		if err != nil {
			return summary{}, fmt.Errorf("decode the SYN: %w", err)
		}
		if !v.Allow {
			return summary{}, fmt.Errorf("the engine denies %s: %s", p, rs.Describe(v))
		}
	}
	return summarize(lat)
}
