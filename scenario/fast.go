package scenario

import (
	"bytes"
	"net/netip"
	"strconv"
	"strings"

	"github.com/nfqpolicy/nfqpolicy/cluster"
	yaml "go.yaml.in/yaml/v3"
)

// Scenario files are mostly probes: one-line flow mappings of plain
// scalars, thousands of them (knp-workload.yaml has 10000). Building a YAML
// node tree for each costs more than everything else the loader does, so
// when every probe line has the simple form the generator writes, the
// probes are read by the line reader below and the YAML parser only sees
// the rest of the file. Anything it is not sure to read exactly as YAML
// would (quotes, comments after an item, values YAML might type
// differently, several documents) makes it give up, and the whole file
// goes through the YAML parser, which also gives the precise errors.

// fastProbe is a probe read by the line reader, with its file line.
type fastProbe struct {
	p    probeJSON
	line int
}

// splitProbes returns data with its top-level probes block replaced by
// "probes: []" and blank lines (so that line numbers do not move), the
// probes read from it, and the line of the "probes:" key. ok is false when
// the reader cannot take the block.
func splitProbes(data []byte) (rest []byte, probes []fastProbe, keyLine int, ok bool) {
	if bytes.Contains(data, []byte("\n---")) || bytes.Contains(data, []byte("\n...")) {
		return nil, nil, 0, false
	}
	lines := bytes.SplitAfter(data, []byte("\n"))
	start := -1
	for i, l := range lines {
		if string(bytes.TrimRight(l, " \t\r\n")) == "probes:" {
			if start >= 0 {
				return nil, nil, 0, false // two probes keys: let YAML report it
			}
			start = i
		}
	}
	if start < 0 {
		return nil, nil, 0, false
	}
	end := start + 1
	indent := ""
	for ; end < len(lines); end++ {
		l := strings.TrimRight(string(lines[end]), " \t\r\n")
		t := strings.TrimLeft(l, " ")
		if t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		if !strings.HasPrefix(t, "- ") {
			if len(t) == len(l) {
				break // the next top-level key
			}
			return nil, nil, 0, false
		}
		ind := l[:len(l)-len(t)]
		if len(probes) == 0 {
			indent = ind
		} else if ind != indent {
			return nil, nil, 0, false
		}
		p, ok := parseProbeLine(t[2:])
		if !ok {
			return nil, nil, 0, false
		}
		probes = append(probes, fastProbe{p: p, line: end + 1})
	}
	if len(probes) == 0 {
		return nil, nil, 0, false
	}
	var b bytes.Buffer
	b.Grow(len(data))
	for i, l := range lines {
		switch {
		case i == start:
			b.WriteString("probes: []\n")
		case i > start && i < end:
			b.WriteByte('\n')
		default:
			b.Write(l)
		}
	}
	return b.Bytes(), probes, start + 1, true
}

// parseProbeLine reads "{from: a, to: b, port: 80, ...}".
func parseProbeLine(s string) (probeJSON, bool) {
	var p probeJSON
	if len(s) < 2 || s[0] != '{' || s[len(s)-1] != '}' {
		return p, false
	}
	seen := 0
	for _, field := range strings.Split(s[1:len(s)-1], ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(field), ": ")
		if !ok || strings.TrimSpace(v) != v || v == "" {
			return p, false
		}
		var bit int
		switch k {
		case "from", "to":
			if !endpointScalar(v) {
				return p, false
			}
			if k == "from" {
				p.From, bit = v, 1
			} else {
				p.To, bit = v, 2
			}
		case "port", "family":
			n, ok := smallInt(v)
			if !ok {
				return p, false
			}
			if k == "port" {
				p.Port, bit = n, 4
			} else {
				p.Family, bit = n, 8
			}
		case "protocol":
			if v != "TCP" && v != "UDP" && v != "SCTP" {
				return p, false
			}
			p.Protocol, bit = v, 16
		case "expect":
			if v != Allow && v != Deny {
				return p, false
			}
			p.Expect, bit = v, 32
		default:
			return p, false
		}
		if seen&bit != 0 {
			return p, false
		}
		seen |= bit
	}
	return p, true
}

// endpointScalar reports whether v is an endpoint that YAML reads as this
// very string: "ns/pod" and "node/NAME" of plain characters, or an IP
// address (never a YAML number: it has three dots or colons).
func endpointScalar(v string) bool {
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '/' || c == ':' || c == '_') {
			return false
		}
	}
	if v[len(v)-1] == ':' || v[0] == '-' || v[0] == '.' {
		return false
	}
	if strings.Contains(v, "/") {
		return !strings.Contains(v, ":")
	}
	_, err := netip.ParseAddr(v)
	return err == nil
}

// smallInt reads a decimal integer as YAML would: no sign, no leading zero.
func smallInt(v string) (int, bool) {
	if len(v) == 0 || len(v) > 6 || v[0] == '0' {
		return 0, false
	}
	n, err := strconv.Atoi(v)
	return n, err == nil
}

// tookProbes reports whether the YAML parser read the document the way the
// line reader assumed: a top-level "probes" key on keyLine holding the
// empty list splitProbes left there. It is not, for instance, when that
// line was the continuation of a multi-line string.
func tookProbes(docs []cluster.Document, keyLine int) bool {
	if len(docs) != 1 || docs[0].Node == nil || docs[0].Node.Kind != yaml.MappingNode {
		return false
	}
	d := docs[0]
	for i := 0; i+1 < len(d.Node.Content); i += 2 {
		k, v := d.Node.Content[i], d.Node.Content[i+1]
		if k.Value == "probes" {
			return d.FileLine(k) == keyLine && v.Kind == yaml.SequenceNode && len(v.Content) == 0
		}
	}
	return false
}
