package conntrack

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/nfqpolicy/nfqpolicy/cluster"
	"github.com/nfqpolicy/nfqpolicy/filter"
)

// Addresses of the test cluster: pods a, b and c on node1; c is the pod a
// policy change isolates.
var (
	podA4, podB4, podC4 = netip.MustParseAddr("10.1.0.1"), netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("10.1.0.3")
	podA6, podB6, podC6 = netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2"), netip.MustParseAddr("fd00::3")
	serviceIP4          = netip.MustParseAddr("10.96.0.10")
)

const clusterBase = `apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {kubernetes.io/metadata.name: demo}}
---
apiVersion: v1
kind: Node
metadata: {name: node1}
status: {addresses: [{type: InternalIP, address: 10.0.0.1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: demo, labels: {app: a}}
spec: {nodeName: node1, containers: [{name: c, image: x}]}
status: {phase: Running, podIP: 10.1.0.1, podIPs: [{ip: 10.1.0.1}, {ip: "fd00::1"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: demo, labels: {app: b}}
spec: {nodeName: node1, containers: [{name: c, image: x}]}
status: {phase: Running, podIP: 10.1.0.2, podIPs: [{ip: 10.1.0.2}, {ip: "fd00::2"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: demo, labels: {app: c}}
spec: {nodeName: node1, containers: [{name: c, image: x}]}
status: {phase: Running, podIP: 10.1.0.3, podIPs: [{ip: 10.1.0.3}, {ip: "fd00::3"}]}
`

// clusterIsolateC adds a policy that lets only pod a reach pod c, on TCP 80.
const clusterIsolateC = clusterBase + `---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: c-from-a, namespace: demo}
spec:
  podSelector: {matchLabels: {app: c}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: a}}}]
    ports: [{protocol: TCP, port: 80}]
`

func compileYAML(t testing.TB, y string) *filter.Ruleset {
	t.Helper()
	c, err := cluster.Decode("test.yaml", []byte(y))
	if err != nil {
		t.Fatalf("decode cluster: %v", err)
	}
	rs, err := filter.Compile(c)
	if err != nil {
		t.Fatalf("compile cluster: %v", err)
	}
	return rs
}

// Test-side netlink attribute encoding, the kernel's layout: native-endian
// header, big-endian values, nested attributes flagged NLA_F_NESTED.
func attr(typ uint16, val []byte) []byte {
	b := make([]byte, 4, 4+len(val)+3)
	binary.NativeEndian.PutUint16(b[0:2], uint16(4+len(val)))
	binary.NativeEndian.PutUint16(b[2:4], typ)
	b = append(b, val...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func nested(typ uint16, children ...[]byte) []byte {
	var v []byte
	for _, c := range children {
		v = append(v, c...)
	}
	return attr(typ|0x8000, v)
}

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }
func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

// tupleAttr encodes a CTA_TUPLE_ORIG or CTA_TUPLE_REPLY.
func tupleAttr(typ uint16, src, dst netip.Addr, proto uint8, sport, dport uint16) []byte {
	srcT, dstT := uint16(ctaIPv4Src), uint16(ctaIPv4Dst)
	if src.Is6() {
		srcT, dstT = ctaIPv6Src, ctaIPv6Dst
	}
	l4 := [][]byte{attr(ctaProtoNum, []byte{proto})}
	if proto == filter.ProtoTCP || proto == filter.ProtoUDP || proto == filter.ProtoSCTP {
		l4 = append(l4, attr(ctaProtoSrcPort, be16(sport)), attr(ctaProtoDstPort, be16(dport)))
	} else if proto == filter.ProtoICMP {
		l4 = append(l4, attr(4, be16(sport)), attr(5, []byte{8}), attr(6, []byte{0}))
	}
	return nested(typ,
		nested(ctaTupleIP, attr(srcT, src.AsSlice()), attr(dstT, dst.AsSlice())),
		nested(ctaTupleProto, l4...),
	)
}

// fakeEntry is a conntrack entry as a dump reports it: orig is the client's
// direction; the reply comes from replySrc:replyPort (differs from dst:dport
// under DNAT).
type fakeEntry struct {
	src, dst, replySrc  netip.Addr
	proto               uint8
	sport, dport, rport uint16
	mark                uint32
	noMark              bool
	id                  uint32
}

func (f fakeEntry) attrs() []byte {
	rsrc, rport := f.replySrc, f.rport
	if !rsrc.IsValid() {
		rsrc, rport = f.dst, f.dport
	}
	b := tupleAttr(ctaTupleOrig, f.src, f.dst, f.proto, f.sport, f.dport)
	b = append(b, tupleAttr(ctaTupleReply, rsrc, f.src, f.proto, rport, f.sport)...)
	b = append(b, attr(3, be32(0xe))...) // CTA_STATUS, ignored
	if !f.noMark {
		b = append(b, attr(ctaMark, be32(f.mark))...)
	}
	b = append(b, attr(ctaID, be32(f.id))...)
	return b
}
