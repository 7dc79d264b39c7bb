package flowlog

import (
	"encoding/json"
	"strconv"
	"time"
	"unicode/utf8"
)

// Fields is the part of a flow-log line that readers of whole logs (the
// what-if replay, audit report) use. Its byte slices alias the line given
// to Parser.Parse or the Parser's own scratch space: they are valid until
// that line's buffer is reused or the Parser parses the next line, so a
// reader that keeps a value copies (or interns) it.
type Fields struct {
	Time                                 time.Time
	Node, Verdict, AuditVerdict, Proto   []byte
	Src, Dst, SrcPod, DstPod, UncleanRun []byte
	StagedPolicies                       [][]byte
	DstPort                              uint16
	Lost, RateLimited                    uint64
	LostUnknown                          bool
}

// SetEntry fills f from an Entry that encoding/json decoded: the line a
// Parser did not take. Unlike Parse's, these slices are f's own.
func (f *Fields) SetEntry(e *Entry) {
	*f = Fields{
		Time: e.Time, Node: []byte(e.Node), Verdict: []byte(e.Verdict), AuditVerdict: []byte(e.AuditVerdict),
		Proto: []byte(e.Proto), Src: []byte(e.Src), Dst: []byte(e.Dst), SrcPod: []byte(e.SrcPod), DstPod: []byte(e.DstPod),
		UncleanRun: []byte(e.UncleanRun), DstPort: e.DstPort, Lost: e.Lost, RateLimited: e.RateLimited,
		LostUnknown: e.LostUnknown,
	}
	for _, s := range e.StagedPolicies {
		f.StagedPolicies = append(f.StagedPolicies, []byte(s))
	}
}

// Parser reads Fields from flow-log lines by scanning the keys of Entry
// directly, without encoding/json's reflection (which costs most of the
// time of reading a large log), and without allocating for the lines the
// agent writes. It takes a line only when it is certain what
// json.Unmarshal into an Entry would make of it: a JSON object, every
// value of a known key of the type Entry gives it, no key twice, no key
// that only matches a field case-insensitively or through an escape, no
// nesting deeper than maxDepth. Any other line, valid or not, it leaves to
// the caller's encoding/json (Parse returns false), so reading a log with
// it gives the same result as decoding every line with encoding/json. A
// Parser is not safe for concurrent use; its zero value is ready.
type Parser struct {
	b       []byte
	i       int
	scratch []byte
	staged  [][]byte
	tmp     string
}

// maxDepth bounds the nesting of values the Parser skips; deeper lines go
// to encoding/json (whose own limit is far higher).
const maxDepth = 64

// Parse fills f from line. It returns false when it does not take the line
// (f is then zero): decode it with encoding/json into an Entry (or a
// struct of some of Entry's fields) instead. When it returns true,
// json.Unmarshal(line, &e) into an Entry succeeds and f holds e's values
// (Entry's string fields as bytes; StagedPolicies may be empty rather
// than nil).
func (p *Parser) Parse(line []byte, f *Fields) bool {
	p.b, p.i = line, 0
	p.scratch = p.scratch[:0]
	p.staged = p.staged[:0]
	*f = Fields{}
	ok := p.entry(f)
	p.b = nil // do not keep the caller's buffer alive
	if !ok {
		*f = Fields{}
		return false
	}
	if len(p.staged) > 0 {
		f.StagedPolicies = p.staged
	}
	return true
}

// The keys of Entry, SideEntry and PassEntry (their json tags), for the
// case-insensitive check of unknown keys.
var (
	entryKeys = []string{"time", "node", "run", "seq", "verdict", "mode", "audit_verdict", "audit_differs",
		"staged_policies", "audit_reason", "proto", "family", "src", "src_port", "dst", "dst_port", "src_pod",
		"src_namespace", "dst_pod", "dst_namespace", "src_labels", "dst_labels", "reason", "egress", "ingress",
		"latency_us", "cached", "lost", "rate_limited", "message", "last_seq", "unclean_run", "lost_unknown"}
	sideKeys = []string{"decision", "tier", "policy", "action", "rule_name", "policy_index", "rule", "peer", "pass"}
	passKeys = []string{"tier", "policy", "rule", "rule_name"}
)

// foldsToKnown reports whether an ASCII key that is none of keys exactly
// still matches one of them the way encoding/json matches names (ASCII
// case-insensitively).
func foldsToKnown(key []byte, keys []string) bool {
	for _, k := range keys {
		if len(k) != len(key) {
			continue
		}
		eq := true
		for i := range len(k) {
			a, b := key[i], k[i]
			if 'A' <= a && a <= 'Z' {
				a += 'a' - 'A'
			}
			if a != b {
				eq = false
				break
			}
		}
		if eq {
			return true
		}
	}
	return false
}

func (p *Parser) entry(f *Fields) bool {
	p.ws()
	if !p.consume('{') {
		return false
	}
	var seen uint64
	p.ws()
	if p.consume('}') {
		p.ws()
		return p.i == len(p.b)
	}
	for {
		p.ws()
		key, ok := p.key()
		if !ok {
			return false
		}
		p.ws()
		if !p.consume(':') {
			return false
		}
		p.ws()
		bit, ok := p.entryValue(key, f)
		if !ok {
			return false
		}
		if bit != 0 {
			if seen&bit != 0 {
				return false // a key twice: leave its merging rules to encoding/json
			}
			seen |= bit
		}
		p.ws()
		if p.consume(',') {
			continue
		}
		if !p.consume('}') {
			return false
		}
		p.ws()
		return p.i == len(p.b)
	}
}

// entryValue reads the value of one key of an Entry; bit identifies the
// key for the duplicate check (0 for an unknown key).
func (p *Parser) entryValue(key []byte, f *Fields) (bit uint64, ok bool) {
	switch string(key) {
	case "time":
		start := p.i
		if !p.skip(0) {
			return 0, false
		}
		// Exactly what encoding/json does with a field whose type
		// implements json.Unmarshaler: hand it the raw value.
		return 1 << 0, f.Time.UnmarshalJSON(p.b[start:p.i]) == nil
	case "node":
		return 1 << 1, p.keepString(&f.Node)
	case "run":
		return 1 << 2, p.skipString()
	case "seq":
		return 1 << 3, p.skipUint(64)
	case "verdict":
		return 1 << 4, p.keepString(&f.Verdict)
	case "mode":
		return 1 << 5, p.skipString()
	case "audit_verdict":
		return 1 << 6, p.keepString(&f.AuditVerdict)
	case "audit_differs":
		return 1 << 7, p.skipBool()
	case "staged_policies":
		return 1 << 8, p.stringList()
	case "audit_reason":
		return 1 << 9, p.skipString()
	case "proto":
		return 1 << 10, p.keepString(&f.Proto)
	case "family":
		return 1 << 11, p.skipInt(64)
	case "src":
		return 1 << 12, p.keepString(&f.Src)
	case "src_port":
		return 1 << 13, p.skipUint(16)
	case "dst":
		return 1 << 14, p.keepString(&f.Dst)
	case "dst_port":
		n, ok := p.uint(16)
		f.DstPort = uint16(n)
		return 1 << 15, ok
	case "src_pod":
		return 1 << 16, p.keepString(&f.SrcPod)
	case "src_namespace":
		return 1 << 17, p.skipString()
	case "dst_pod":
		return 1 << 18, p.keepString(&f.DstPod)
	case "dst_namespace":
		return 1 << 19, p.skipString()
	case "src_labels":
		return 1 << 20, p.stringMap()
	case "dst_labels":
		return 1 << 21, p.stringMap()
	case "reason":
		return 1 << 22, p.skipString()
	case "egress":
		return 1 << 23, p.side()
	case "ingress":
		return 1 << 24, p.side()
	case "latency_us":
		return 1 << 25, p.skipFloat()
	case "cached":
		return 1 << 26, p.skipBool()
	case "lost":
		n, ok := p.uint(64)
		f.Lost = n
		return 1 << 27, ok
	case "rate_limited":
		n, ok := p.uint(64)
		f.RateLimited = n
		return 1 << 28, ok
	case "message":
		return 1 << 29, p.skipString()
	case "last_seq":
		return 1 << 30, p.skipUint(64)
	case "unclean_run":
		return 1 << 31, p.keepString(&f.UncleanRun)
	case "lost_unknown":
		// null leaves the field false, as encoding/json does.
		f.LostUnknown = p.peek() == 't'
		return 1 << 32, p.skipBool()
	}
	if foldsToKnown(key, entryKeys) {
		return 0, false
	}
	return 0, p.skip(0)
}

// side checks an egress or ingress value: null or a SideEntry.
func (p *Parser) side() bool {
	if p.null() {
		return true
	}
	return p.object(func(key []byte) bool {
		switch string(key) {
		case "decision", "tier", "policy", "action", "rule_name":
			return p.skipString()
		case "policy_index":
			return p.skipInt(32)
		case "rule", "peer":
			return p.skipInt(16)
		case "pass":
			return p.pass()
		}
		return !foldsToKnown(key, sideKeys) && p.skip(1)
	})
}

// pass checks a PassEntry value.
func (p *Parser) pass() bool {
	if p.null() {
		return true
	}
	return p.object(func(key []byte) bool {
		switch string(key) {
		case "tier", "policy", "rule_name":
			return p.skipString()
		case "rule":
			return p.skipInt(64)
		}
		return !foldsToKnown(key, passKeys) && p.skip(2)
	})
}

// object reads a nested object whose keys field checks, the Parser at
// the value's first byte.
func (p *Parser) object(field func(key []byte) bool) bool {
	if !p.consume('{') {
		return false
	}
	p.ws()
	if p.consume('}') {
		return true
	}
	for {
		p.ws()
		key, ok := p.key()
		if !ok {
			return false
		}
		p.ws()
		if !p.consume(':') {
			return false
		}
		p.ws()
		if !field(key) {
			return false
		}
		p.ws()
		if p.consume(',') {
			continue
		}
		return p.consume('}')
	}
}

// stringMap checks a map[string]string value (pod labels): null, or an
// object whose values are strings or null.
func (p *Parser) stringMap() bool {
	if p.null() {
		return true
	}
	if !p.consume('{') {
		return false
	}
	p.ws()
	if p.consume('}') {
		return true
	}
	for {
		p.ws()
		if p.peek() != '"' {
			return false
		}
		if _, _, _, _, ok := p.string(); !ok {
			return false
		}
		p.ws()
		if !p.consume(':') {
			return false
		}
		p.ws()
		if !p.skipString() {
			return false
		}
		p.ws()
		if p.consume(',') {
			continue
		}
		return p.consume('}')
	}
}

// stringList reads staged_policies: null or an array of strings (a null
// element, which encoding/json leaves as whatever the slice held, goes to
// encoding/json).
func (p *Parser) stringList() bool {
	if p.null() {
		return true
	}
	if !p.consume('[') {
		return false
	}
	p.ws()
	if p.consume(']') {
		return true
	}
	for {
		p.ws()
		if p.peek() != '"' {
			return false
		}
		var s []byte
		if !p.keepString(&s) {
			return false
		}
		p.staged = append(p.staged, s)
		p.ws()
		if p.consume(',') {
			continue
		}
		return p.consume(']')
	}
}

// key reads an object key. Keys with escapes or non-ASCII bytes, which
// encoding/json may match to a field in ways this Parser does not
// reproduce, are not taken.
func (p *Parser) key() ([]byte, bool) {
	if p.peek() != '"' {
		return nil, false
	}
	start, end, esc, high, ok := p.string()
	if !ok || esc || high {
		return nil, false
	}
	return p.b[start:end], true
}

// keepString reads a string (or null, which leaves *dst as it is) into
// *dst as encoding/json would decode it.
func (p *Parser) keepString(dst *[]byte) bool {
	if p.null() {
		return true
	}
	if p.peek() != '"' {
		return false
	}
	start, end, esc, high, ok := p.string()
	if !ok {
		return false
	}
	s := p.b[start:end]
	if esc || (high && !utf8.Valid(s)) {
		// Escapes, or bytes encoding/json replaces by U+FFFD: let it
		// unquote this one string, rare in the agent's lines.
		if json.Unmarshal(p.b[start-1:end+1], &p.tmp) != nil {
			return false
		}
		n := len(p.scratch)
		p.scratch = append(p.scratch, p.tmp...)
		s = p.scratch[n:len(p.scratch):len(p.scratch)]
	}
	*dst = s
	return true
}

// skipString checks a string (or null) value.
func (p *Parser) skipString() bool {
	if p.null() {
		return true
	}
	if p.peek() != '"' {
		return false
	}
	_, _, _, _, ok := p.string()
	return ok
}

// plain marks the bytes that may appear in a string as they are and need
// no further look: printable ASCII except the quote and the backslash.
var plain = func() (t [256]bool) {
	for c := 0x20; c < 0x80; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// string reads a JSON string at the Parser (its opening quote), returning
// the bounds of its contents and whether they hold escapes or bytes above
// ASCII.
func (p *Parser) string() (start, end int, esc, high, ok bool) {
	b := p.b
	i := p.i + 1
	start = i
	for {
		for i < len(b) && plain[b[i]] {
			i++
		}
		if i >= len(b) {
			return 0, 0, false, false, false
		}
		switch c := b[i]; {
		case c == '"':
			p.i = i + 1
			return start, i, esc, high, true
		case c == '\\':
			esc = true
			if i+1 >= len(b) {
				return 0, 0, false, false, false
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(b) {
					return 0, 0, false, false, false
				}
				for _, h := range b[i+2 : i+6] {
					if !isHex(h) {
						return 0, 0, false, false, false
					}
				}
				i += 6
			default:
				return 0, 0, false, false, false
			}
		case c < 0x20:
			return 0, 0, false, false, false
		default: // >= 0x80: encoding/json accepts any bytes here
			high = true
			i++
		}
	}
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// number reads a JSON number, returning its text and whether it is a
// plain integer (no fraction, no exponent).
func (p *Parser) number() (text []byte, integer, ok bool) {
	b, i := p.b, p.i
	start := i
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && '1' <= b[i] && b[i] <= '9':
		for i < len(b) && '0' <= b[i] && b[i] <= '9' {
			i++
		}
	default:
		return nil, false, false
	}
	integer = true
	if i < len(b) && b[i] == '.' {
		integer = false
		i++
		d := i
		for i < len(b) && '0' <= b[i] && b[i] <= '9' {
			i++
		}
		if i == d {
			return nil, false, false
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		integer = false
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		d := i
		for i < len(b) && '0' <= b[i] && b[i] <= '9' {
			i++
		}
		if i == d {
			return nil, false, false
		}
	}
	p.i = i
	return b[start:i], integer, true
}

// uint reads an unsigned integer of the given size (or null, read as 0)
// as encoding/json does: strconv.ParseUint of the number's text, which
// refuses a sign, a fraction, an exponent and overflow.
func (p *Parser) uint(bits int) (uint64, bool) {
	if p.null() {
		return 0, true
	}
	text, integer, ok := p.number()
	if !ok || !integer || text[0] == '-' {
		return 0, false
	}
	var n uint64
	for _, c := range text {
		d := uint64(c - '0')
		if n > (1<<64-1-d)/10 {
			return 0, false
		}
		n = n*10 + d
	}
	if bits < 64 && n >= 1<<bits {
		return 0, false
	}
	return n, true
}

func (p *Parser) skipUint(bits int) bool {
	_, ok := p.uint(bits)
	return ok
}

// skipInt checks a signed integer of the given size (or null), as
// strconv.ParseInt does for encoding/json.
func (p *Parser) skipInt(bits int) bool {
	if p.null() {
		return true
	}
	text, integer, ok := p.number()
	if !ok || !integer {
		return false
	}
	neg := text[0] == '-'
	if neg {
		text = text[1:]
	}
	limit := uint64(1) << (bits - 1) // |min|; max is one less
	var n uint64
	for _, c := range text {
		if n > limit/10 {
			return false
		}
		n = n*10 + uint64(c-'0')
		if n > limit {
			return false
		}
	}
	return neg || n < limit
}

// skipFloat checks a float64 value (or null): any JSON number strconv
// accepts, which refuses only magnitudes beyond float64's range.
func (p *Parser) skipFloat() bool {
	if p.null() {
		return true
	}
	text, integer, ok := p.number()
	if !ok {
		return false
	}
	if integer && len(text) < 300 || !integer && len(text) < 30 && !hasExponent(text) {
		return true // well inside float64's range
	}
	_, err := strconv.ParseFloat(string(text), 64)
	return err == nil
}

func hasExponent(text []byte) bool {
	for _, c := range text {
		if c == 'e' || c == 'E' {
			return true
		}
	}
	return false
}

// skipBool checks a bool value (or null).
func (p *Parser) skipBool() bool {
	return p.null() || p.literal("true") || p.literal("false")
}

// skip checks any JSON value (an unknown key's, whose value encoding/json
// ignores) at nesting depth.
func (p *Parser) skip(depth int) bool {
	if depth > maxDepth {
		return false
	}
	switch p.peek() {
	case '"':
		_, _, _, _, ok := p.string()
		return ok
	case '{':
		p.i++
		p.ws()
		if p.consume('}') {
			return true
		}
		for {
			p.ws()
			if p.peek() != '"' {
				return false
			}
			if _, _, _, _, ok := p.string(); !ok {
				return false
			}
			p.ws()
			if !p.consume(':') {
				return false
			}
			p.ws()
			if !p.skip(depth + 1) {
				return false
			}
			p.ws()
			if p.consume(',') {
				continue
			}
			return p.consume('}')
		}
	case '[':
		p.i++
		p.ws()
		if p.consume(']') {
			return true
		}
		for {
			p.ws()
			if !p.skip(depth + 1) {
				return false
			}
			p.ws()
			if p.consume(',') {
				continue
			}
			return p.consume(']')
		}
	case 't':
		return p.literal("true")
	case 'f':
		return p.literal("false")
	case 'n':
		return p.literal("null")
	}
	_, _, ok := p.number()
	return ok
}

// null consumes a null literal if one is next.
func (p *Parser) null() bool {
	return p.literal("null")
}

func (p *Parser) literal(s string) bool {
	if len(p.b)-p.i >= len(s) && string(p.b[p.i:p.i+len(s)]) == s {
		p.i += len(s)
		return true
	}
	return false
}

func (p *Parser) peek() byte {
	if p.i < len(p.b) {
		return p.b[p.i]
	}
	return 0
}

func (p *Parser) consume(c byte) bool {
	if p.i < len(p.b) && p.b[p.i] == c {
		p.i++
		return true
	}
	return false
}

// ws skips JSON whitespace.
func (p *Parser) ws() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}
