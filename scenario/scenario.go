// Package scenario reads reachability scenario files (see
// testdata/conformance/FORMAT.md): a cluster snapshot together with probes,
// flows whose verdict must be allow or deny. The objects are read by
// package cluster exactly as snapshot files are; this package adds the probes,
// their defaults, and checks that their endpoints exist.
package scenario

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/nfqpolicy/nfqpolicy/cluster"
	yaml "go.yaml.in/yaml/v3"
	sigsjson "sigs.k8s.io/json"
)

// Scenario is one scenario document.
type Scenario struct {
	Name   string
	Source string
	File   string
	// Doc is the document of File the scenario is (1 for one-document
	// files).
	Doc     int
	Cluster *cluster.Cluster
	// Index is Cluster's index, which resolved the probes' endpoints.
	Index  *cluster.Index
	Probes []Probe
}

// Probe is one expected verdict.
type Probe struct {
	From, To string
	Port     int
	Protocol string // TCP, UDP or SCTP
	Family   int    // 4 or 6
	Expect   string // allow or deny
	Line     int    // line of File the probe is written on (0 for JSON)
	// Src and Dst are From and To resolved against the scenario's cluster
	// for Family.
	Src, Dst cluster.Endpoint
}

// Expectations.
const (
	Allow = "allow"
	Deny  = "deny"
)

// String renders the probe the way it is written.
func (p Probe) String() string {
	return fmt.Sprintf("%s -> %s %s/%d IPv%d expect %s", p.From, p.To, p.Protocol, p.Port, p.Family, p.Expect)
}

// Load reads a scenario file, or every *.yaml and *.yml file of a
// directory (sorted by name). Problems with objects or probes do not stop
// it: the bad objects and probes are left out and every problem is
// listed in a *cluster.ValidationError returned with the scenarios. Only
// an unreadable path returns no scenarios.
func Load(path string) ([]*Scenario, error) { return load(path, nil) }

func load(path string, base *cluster.Cluster) ([]*Scenario, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("scenario: %w", err)
	}
	files := []string{path}
	if st.IsDir() {
		entries, err := os.ReadDir(path)
		if err != nil {
			return nil, fmt.Errorf("scenario directory: %w", err)
		}
		files = files[:0]
		for _, e := range entries {
			ext := strings.ToLower(filepath.Ext(e.Name()))
			if !e.IsDir() && (ext == ".yaml" || ext == ".yml") {
				files = append(files, filepath.Join(path, e.Name()))
			}
		}
		if len(files) == 0 {
			return nil, fmt.Errorf("scenario directory %s: no *.yaml or *.yml file", path)
		}
		sort.Strings(files)
	}
	var out []*Scenario
	var errs []cluster.FieldError
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("scenario: %w", err)
		}
		s, err := parse(f, data, true, base)
		out = append(out, s...)
		errs = appendErr(errs, err)
	}
	return out, validationError(errs)
}

// LoadAll loads several files or directories (see Load) in order.
func LoadAll(paths ...string) ([]*Scenario, error) { return LoadAllOn(nil, paths...) }

// LoadAllOn is LoadAll for scenarios about a running cluster: each
// scenario's cluster is base with the scenario's objects applied (created,
// or replacing base's object of the same kind and name), and its probes
// resolve against that. base nil is LoadAll.
func LoadAllOn(base *cluster.Cluster, paths ...string) ([]*Scenario, error) {
	var out []*Scenario
	var errs []cluster.FieldError
	for _, p := range paths {
		s, err := load(p, base)
		if s == nil && err != nil {
			return nil, err
		}
		out = append(out, s...)
		errs = appendErr(errs, err)
	}
	return out, validationError(errs)
}

// Parse reads the scenarios of one file's content.
func Parse(file string, data []byte) ([]*Scenario, error) {
	return parse(file, data, true, nil)
}

// parse is Parse; fast lets tests compare the probe line reader with the
// YAML parser.
func parse(file string, data []byte, fast bool, base *cluster.Cluster) ([]*Scenario, error) {
	var (
		lineProbes []fastProbe
		docs       []cluster.Document
		err        error
	)
	if fast {
		if rest, probes, keyLine, ok := splitProbes(data); ok {
			d, derr := cluster.ParseDocuments(file, rest)
			if derr == nil && tookProbes(d, keyLine) {
				docs, lineProbes = d, probes
			}
		}
	}
	if lineProbes == nil {
		docs, err = cluster.ParseDocuments(file, data)
	}
	errs := appendErr(nil, err)
	out := make([]*Scenario, 0, len(docs))
	for _, d := range docs {
		s, derrs := parseDocument(d, lineProbes, base)
		errs = append(errs, derrs...)
		if s != nil {
			out = append(out, s)
		}
	}
	return out, validationError(errs)
}

// document is the scenario's own keys; objects are read by package cluster.
type document struct {
	Name    string            `json:"name"`
	Source  string            `json:"source"`
	Objects []json.RawMessage `json:"objects"`
	Probes  []json.RawMessage `json:"probes"`
}

type probeJSON struct {
	From     string `json:"from"`
	To       string `json:"to"`
	Port     int    `json:"port"`
	Protocol string `json:"protocol"`
	Family   int    `json:"family"`
	Expect   string `json:"expect"`
}

// parseDocument reads one scenario document; lineProbes, when not nil,
// are its probes as the line reader read them (the document's own probes
// list is then empty).
func parseDocument(d cluster.Document, lineProbes []fastProbe, base *cluster.Cluster) (*Scenario, []cluster.FieldError) {
	fail := func(field, msg string) cluster.FieldError {
		return cluster.FieldError{File: d.File, Doc: d.Index, Field: field, Msg: msg}
	}
	var doc document
	strict, err := sigsjson.UnmarshalStrict(d.JSON, &doc)
	if err != nil {
		return nil, []cluster.FieldError{fail("", "not a scenario: "+strings.TrimPrefix(err.Error(), "json: "))}
	}
	var errs []cluster.FieldError
	for _, se := range strict {
		errs = append(errs, fail("", "not a scenario: "+se.Error()))
	}
	if len(errs) > 0 {
		return nil, errs
	}
	if doc.Objects == nil && doc.Probes == nil && lineProbes == nil {
		return nil, []cluster.FieldError{fail("", "not a scenario: it has neither objects nor probes")}
	}
	c, err := cluster.DecodeDocuments(d)
	errs = appendErr(errs, err)
	// A scenario's verdicts are only meaningful if every object it holds
	// is read: one the model skips is an error, not a silent omission.
	errs = append(errs, c.Skipped...)
	if base != nil {
		c, err = cluster.Overlay(base, c, nil)
		if err != nil {
			return nil, append(errs, fail("objects", err.Error()))
		}
	}
	s := &Scenario{Name: doc.Name, Source: doc.Source, File: d.File, Doc: d.Index, Cluster: c, Index: cluster.NewIndex(c)}
	if s.Name == "" {
		s.Name = strings.TrimSuffix(filepath.Base(d.File), filepath.Ext(d.File))
		if d.Index > 1 {
			s.Name = fmt.Sprintf("%s#%d", s.Name, d.Index)
		}
	}
	lines := probeLines(d)
	n := len(doc.Probes)
	if lineProbes != nil {
		n = len(lineProbes)
	}
	s.Probes = make([]Probe, 0, n)
	for i := 0; i < n; i++ {
		var p Probe
		var perrs []string
		if lineProbes != nil {
			p, perrs = s.check(lineProbes[i].p, nil)
			p.Line = lineProbes[i].line
		} else {
			p, perrs = s.probe(doc.Probes[i])
			if i < len(lines) {
				p.Line = lines[i]
			}
		}
		if len(perrs) > 0 {
			for _, e := range perrs {
				fe := fail(fmt.Sprintf("probes[%d]", i), e)
				if p.Line > 0 {
					fe.Object = fmt.Sprintf("line %d", p.Line)
				}
				errs = append(errs, fe)
			}
			continue
		}
		s.Probes = append(s.Probes, p)
	}
	return s, errs
}

// probe decodes, defaults and checks one probe, resolving its endpoints.
func (s *Scenario) probe(raw []byte) (Probe, []string) {
	var pj probeJSON
	strict, err := sigsjson.UnmarshalStrict(raw, &pj)
	if err != nil {
		return Probe{}, []string{strings.TrimPrefix(err.Error(), "json: ")}
	}
	var errs []string
	for _, se := range strict {
		errs = append(errs, se.Error())
	}
	return s.check(pj, errs)
}

// check defaults and checks a decoded probe and resolves its endpoints;
// errs are the problems found while decoding it.
func (s *Scenario) check(pj probeJSON, errs []string) (Probe, []string) {
	if pj.Protocol == "" {
		pj.Protocol = "TCP"
	}
	if pj.Family == 0 {
		pj.Family = 4
	}
	p := Probe{From: pj.From, To: pj.To, Port: pj.Port, Protocol: pj.Protocol, Family: pj.Family, Expect: pj.Expect}
	if p.Port < 1 || p.Port > 65535 {
		errs = append(errs, fmt.Sprintf("port: %d is not between 1 and 65535", p.Port))
	}
	switch p.Protocol {
	case "TCP", "UDP", "SCTP":
	default:
		errs = append(errs, fmt.Sprintf("protocol: %q is not TCP, UDP or SCTP", p.Protocol))
	}
	if p.Family != 4 && p.Family != 6 {
		errs = append(errs, fmt.Sprintf("family: %d is not 4 or 6", p.Family))
	}
	switch p.Expect {
	case Allow, Deny:
	case "":
		errs = append(errs, "expect: required (allow or deny)")
	default:
		errs = append(errs, fmt.Sprintf("expect: %q is not allow or deny", p.Expect))
	}
	if p.Family != 4 && p.Family != 6 {
		return p, errs
	}
	var srcErr, dstErr error
	if p.From == "" {
		errs = append(errs, "from: required")
	} else if p.Src, srcErr = s.Index.Resolve(p.From, p.Family); srcErr != nil {
		errs = append(errs, "from: "+srcErr.Error())
	}
	if p.To == "" {
		errs = append(errs, "to: required")
	} else if p.Dst, dstErr = s.Index.Resolve(p.To, p.Family); dstErr != nil {
		errs = append(errs, "to: "+dstErr.Error())
	}
	if p.From != "" && p.To != "" && srcErr == nil && dstErr == nil && p.Src.Pod != nil && p.Src.Pod == p.Dst.Pod {
		errs = append(errs, "from and to are the same pod: that traffic is not specified")
	}
	return p, errs
}

// probeLines returns the file line of each entry of the probes list.
func probeLines(d cluster.Document) []int {
	n := d.Node
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value != "probes" {
			continue
		}
		seq := n.Content[i+1]
		if seq.Kind != yaml.SequenceNode {
			return nil
		}
		lines := make([]int, len(seq.Content))
		for j, item := range seq.Content {
			lines[j] = d.FileLine(item)
		}
		return lines
	}
	return nil
}

func appendErr(errs []cluster.FieldError, err error) []cluster.FieldError {
	if err == nil {
		return errs
	}
	if ve, ok := err.(*cluster.ValidationError); ok {
		return append(errs, ve.Errors...)
	}
	return append(errs, cluster.FieldError{Msg: err.Error()})
}

func validationError(errs []cluster.FieldError) error {
	if len(errs) == 0 {
		return nil
	}
	return &cluster.ValidationError{Errors: errs}
}
