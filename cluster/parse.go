package cluster

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"

	yaml "go.yaml.in/yaml/v3"
)

// Document is one non-empty YAML or JSON document of a file, parsed. JSON
// holds the document re-encoded as JSON (what the typed decoders read);
// Node keeps the YAML tree for callers that want source lines (the scenario
// loader's probes); it is nil when the input was JSON.
type Document struct {
	File  string
	Index int // 1-based among the file's non-empty documents
	Line  int // line of File where the document's text starts
	JSON  []byte
	Node  *yaml.Node
}

// FileLine converts the line of a node of d.Node into a line of d.File.
func (d Document) FileLine(n *yaml.Node) int {
	if n == nil {
		return 0
	}
	return d.Line + n.Line - 1
}

// maxAliasDepth bounds alias expansion so that a "billion laughs" document
// fails instead of exhausting memory.
const maxAliasDepth = 64

// ParseDocuments splits data into its documents ("---" separated YAML, or
// JSON values) and parses each. A document that does not parse is reported
// as a FieldError in the returned *ValidationError and skipped; the others
// are returned, so one typo does not hide the rest of a file.
func ParseDocuments(file string, data []byte) ([]Document, error) {
	var docs []Document
	var errs []FieldError
	index := 0
	for _, ch := range splitYAML(data) {
		if isBlank(ch.text) {
			continue
		}
		if js := bytes.TrimSpace(ch.text); len(js) > 0 && (js[0] == '{' || js[0] == '[') {
			if vals, ok := splitJSON(js); ok {
				for _, v := range vals {
					index++
					docs = append(docs, Document{File: file, Index: index, Line: ch.line, JSON: v})
				}
				continue
			}
			// Not a JSON stream: parse it as YAML below so that the error
			// message carries a line.
		}
		var root yaml.Node
		if err := yaml.Unmarshal(ch.text, &root); err != nil {
			index++
			errs = append(errs, FieldError{File: file, Doc: index, Msg: yamlErrorMsg(err, ch.line)})
			continue
		}
		n := &root
		if n.Kind == yaml.DocumentNode && len(n.Content) == 1 {
			n = n.Content[0]
		}
		if n.Kind == 0 || (n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null") {
			continue // only comments, or an explicit empty document
		}
		index++
		enc := jsonEncoder{limit: 16*len(ch.text) + 1<<20}
		buf, err := enc.append(make([]byte, 0, len(ch.text)), n, 0)
		if err != nil {
			errs = append(errs, FieldError{File: file, Doc: index, Msg: err.Error()})
			continue
		}
		docs = append(docs, Document{File: file, Index: index, Line: ch.line, JSON: buf, Node: n})
	}
	return docs, AsError(errs)
}

type chunk struct {
	text []byte
	line int
}

// splitYAML cuts data at document markers ("---" at the start of a line).
// Parsing each document on its own is what lets a syntax error in one
// document leave the next ones readable.
func splitYAML(data []byte) []chunk {
	var out []chunk
	start, startLine, line := 0, 1, 1
	for pos := 0; pos < len(data); {
		end := bytes.IndexByte(data[pos:], '\n')
		next := len(data)
		if end >= 0 {
			next = pos + end + 1
		}
		l := data[pos:next]
		if pos > start && isDocStart(l) {
			out = append(out, chunk{text: data[start:pos], line: startLine})
			start, startLine = pos, line
		}
		pos = next
		line++
	}
	out = append(out, chunk{text: data[start:], line: startLine})
	return out
}

func isDocStart(l []byte) bool {
	if !bytes.HasPrefix(l, []byte("---")) {
		return false
	}
	return len(l) == 3 || l[3] == ' ' || l[3] == '\t' || l[3] == '\n' || l[3] == '\r'
}

// isBlank reports whether a chunk holds nothing but markers, comments and
// white space.
func isBlank(b []byte) bool {
	for _, l := range bytes.Split(b, []byte("\n")) {
		t := bytes.TrimSpace(l)
		if len(t) == 0 || t[0] == '#' || string(t) == "---" || string(t) == "..." {
			continue
		}
		return false
	}
	return true
}

// splitJSON splits a stream of JSON values; ok is false when it is not one.
func splitJSON(b []byte) ([][]byte, bool) {
	dec := json.NewDecoder(bytes.NewReader(b))
	var out [][]byte
	for {
		var raw json.RawMessage
		err := dec.Decode(&raw)
		if errors.Is(err, io.EOF) {
			return out, len(out) > 0
		}
		if err != nil {
			return nil, false
		}
		out = append(out, raw)
	}
}

func yamlErrorMsg(err error, firstLine int) string {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	// yaml reports lines relative to the document and, for most parser
	// errors, counting from 0; make them lines of the file.
	var te *yaml.TypeError
	if errors.As(err, &te) {
		msg = strings.Join(te.Errors, "; ")
	}
	if strings.HasPrefix(msg, "line ") {
		rest := msg[len("line "):]
		if i := strings.IndexByte(rest, ':'); i > 0 {
			if n, err := strconv.Atoi(rest[:i]); err == nil {
				msg = fmt.Sprintf("line %d:%s", n+firstLine, rest[i+1:])
			}
		}
	}
	return "invalid YAML: " + msg
}

// jsonEncoder converts YAML trees to JSON; limit bounds the output so that
// aliases cannot expand a small document into an enormous one.
type jsonEncoder struct {
	limit int
}

// append encodes a YAML node as JSON, the way kubectl converts YAML
// before decoding it into API types: scalars keep the type their tag gives
// them, so `port: 80` is a number and `port: "80"` a string.
func (e *jsonEncoder) append(b []byte, n *yaml.Node, depth int) ([]byte, error) {
	var err error
	switch n.Kind {
	case yaml.DocumentNode:
		if len(n.Content) == 0 {
			return append(b, "null"...), nil
		}
		return e.append(b, n.Content[0], depth)
	case yaml.AliasNode:
		if depth >= maxAliasDepth {
			return nil, fmt.Errorf("line %d: aliases nested too deeply", n.Line)
		}
		b, err = e.append(b, n.Alias, depth+1)
		if err == nil && len(b) > e.limit {
			return nil, fmt.Errorf("line %d: aliases expand to more than %d bytes", n.Line, e.limit)
		}
		return b, err
	case yaml.SequenceNode:
		b = append(b, '[')
		for i, c := range n.Content {
			if i > 0 {
				b = append(b, ',')
			}
			if b, err = e.append(b, c, depth); err != nil {
				return nil, err
			}
		}
		return append(b, ']'), nil
	case yaml.MappingNode:
		pairs, err := mappingPairs(n, depth)
		if err != nil {
			return nil, err
		}
		b = append(b, '{')
		for i, kv := range pairs {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, kv[0].Value)
			b = append(b, ':')
			if b, err = e.append(b, kv[1], depth); err != nil {
				return nil, err
			}
		}
		return append(b, '}'), nil
	case yaml.ScalarNode:
		return appendScalar(b, n)
	}
	return nil, fmt.Errorf("line %d: unsupported YAML node", n.Line)
}

// mappingPairs returns the key/value pairs of a mapping with YAML merge
// keys ("<<: *base") applied as kubectl's YAML 1.1 reader applies them:
// the mapping's own keys win, then earlier merged mappings over later ones.
func mappingPairs(n *yaml.Node, depth int) ([][2]*yaml.Node, error) {
	pairs := make([][2]*yaml.Node, 0, len(n.Content)/2)
	var merges []*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.AliasNode {
			k = k.Alias
		}
		if k.Kind != yaml.ScalarNode {
			return nil, fmt.Errorf("line %d: a mapping key must be a scalar", k.Line)
		}
		if k.ShortTag() == "!!merge" {
			merges = append(merges, v)
			continue
		}
		pairs = append(pairs, [2]*yaml.Node{k, v})
	}
	if len(merges) == 0 {
		return pairs, nil
	}
	if depth >= maxAliasDepth {
		return nil, fmt.Errorf("line %d: merge keys nested too deeply", n.Line)
	}
	seen := make(map[string]bool, len(pairs))
	for _, kv := range pairs {
		seen[kv[0].Value] = true
	}
	var sources []*yaml.Node
	for _, m := range merges {
		if m.Kind == yaml.AliasNode {
			m = m.Alias
		}
		if m.Kind == yaml.SequenceNode {
			sources = append(sources, m.Content...)
		} else {
			sources = append(sources, m)
		}
	}
	for _, src := range sources {
		if src.Kind == yaml.AliasNode {
			src = src.Alias
		}
		if src.Kind != yaml.MappingNode {
			return nil, fmt.Errorf("line %d: a merge key (<<) must refer to a mapping or a list of mappings", src.Line)
		}
		more, err := mappingPairs(src, depth+1)
		if err != nil {
			return nil, err
		}
		for _, kv := range more {
			if !seen[kv[0].Value] {
				seen[kv[0].Value] = true
				pairs = append(pairs, kv)
			}
		}
	}
	return pairs, nil
}

func appendScalar(b []byte, n *yaml.Node) ([]byte, error) {
	v := n.Value
	switch n.ShortTag() {
	case "!!null":
		return append(b, "null"...), nil
	case "!!bool":
		switch strings.ToLower(v) {
		case "true":
			return append(b, "true"...), nil
		case "false":
			return append(b, "false"...), nil
		}
		return nil, fmt.Errorf("line %d: %q is not a boolean", n.Line, v)
	case "!!int":
		if isPlainDecimal(v) {
			return append(b, v...), nil
		}
		clean := strings.ReplaceAll(v, "_", "")
		if i, err := strconv.ParseInt(clean, 0, 64); err == nil {
			return strconv.AppendInt(b, i, 10), nil
		}
		if u, err := strconv.ParseUint(strings.TrimPrefix(clean, "+"), 0, 64); err == nil {
			return strconv.AppendUint(b, u, 10), nil
		}
		return nil, fmt.Errorf("line %d: integer %q out of range", n.Line, v)
	case "!!float":
		f, err := strconv.ParseFloat(strings.ReplaceAll(v, "_", ""), 64)
		if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
			return nil, fmt.Errorf("line %d: number %q cannot be represented in JSON", n.Line, v)
		}
		return strconv.AppendFloat(b, f, 'g', -1, 64), nil
	}
	// !!str, !!timestamp, !!binary and application tags are strings to the
	// API types.
	return appendString(b, v), nil
}

func isPlainDecimal(s string) bool {
	if s == "" {
		return false
	}
	if s[0] == '-' {
		s = s[1:]
	}
	if s == "" || (len(s) > 1 && s[0] == '0') || len(s) > 18 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

const hexDigits = "0123456789abcdef"

func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		b = append(b, s[start:i]...)
		switch c {
		case '"', '\\':
			b = append(b, '\\', c)
		case '\n':
			b = append(b, '\\', 'n')
		case '\r':
			b = append(b, '\\', 'r')
		case '\t':
			b = append(b, '\\', 't')
		default:
			b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
		start = i + 1
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
