package capture

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/nfqpolicy/nfqpolicy/filter"
)

// Match is a parsed flow filter: every term must hold. The language is a
// small subset of pcap-filter's, enough to pick flows out of a busy node:
//
//	src ADDR | dst ADDR | host ADDR   (ADDR an address or a CIDR prefix)
//	port N                            (source or destination port)
//	proto tcp|udp|sctp|icmp|icmpv6
//
// joined by "and". The empty filter matches everything.
type Match struct {
	terms []term
}

type termKind uint8

const (
	termSrc termKind = iota
	termDst
	termHost
	termPort
	termProto
)

type term struct {
	kind   termKind
	prefix netip.Prefix
	port   uint16
	proto  uint8
}

// ParseMatch parses a flow filter.
func ParseMatch(expr string) (*Match, error) {
	m := &Match{}
	words := strings.Fields(expr)
	for i := 0; i < len(words); {
		if len(m.terms) > 0 {
			if !strings.EqualFold(words[i], "and") {
				return nil, fmt.Errorf("capture filter %q: expected \"and\" before %q", expr, words[i])
			}
			i++
		}
		if i+1 >= len(words) {
			return nil, fmt.Errorf("capture filter %q: %q needs a value", expr, strings.Join(words[i:], " "))
		}
		key, val := strings.ToLower(words[i]), words[i+1]
		i += 2
		var t term
		switch key {
		case "src", "dst", "host":
			t.kind = map[string]termKind{"src": termSrc, "dst": termDst, "host": termHost}[key]
			p, err := parsePrefix(val)
			if err != nil {
				return nil, fmt.Errorf("capture filter %q: %w", expr, err)
			}
			t.prefix = p
		case "port":
			n, err := strconv.ParseUint(val, 10, 16)
			if err != nil {
				return nil, fmt.Errorf("capture filter %q: port %q is not a number 0-65535", expr, val)
			}
			t.kind, t.port = termPort, uint16(n)
		case "proto":
			t.kind = termProto
			switch strings.ToLower(val) {
			case "tcp":
				t.proto = filter.ProtoTCP
			case "udp":
				t.proto = filter.ProtoUDP
			case "sctp":
				t.proto = filter.ProtoSCTP
			case "icmp":
				t.proto = filter.ProtoICMP
			case "icmpv6":
				t.proto = filter.ProtoICMPv6
			default:
				return nil, fmt.Errorf("capture filter %q: unknown protocol %q (want tcp, udp, sctp, icmp or icmpv6)", expr, val)
			}
		default:
			return nil, fmt.Errorf("capture filter %q: unknown term %q (want src, dst, host, port or proto)", expr, words[i-2])
		}
		m.terms = append(m.terms, t)
	}
	return m, nil
}

func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("bad prefix %q: %w", s, err)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("bad address %q: %w", s, err)
	}
	return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
}

// Matches reports whether f satisfies every term. It allocates nothing.
func (m *Match) Matches(f *filter.Flow) bool {
	if m == nil {
		return true
	}
	src, dst := f.Src.Unmap(), f.Dst.Unmap()
	for i := range m.terms {
		t := &m.terms[i]
		var ok bool
		switch t.kind {
		case termSrc:
			ok = t.prefix.Contains(src)
		case termDst:
			ok = t.prefix.Contains(dst)
		case termHost:
			ok = t.prefix.Contains(src) || t.prefix.Contains(dst)
		case termPort:
			ok = f.SrcPort == t.port || f.DstPort == t.port
		case termProto:
			ok = f.Proto == t.proto
		}
		if !ok {
			return false
		}
	}
	return true
}
