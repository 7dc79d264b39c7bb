package e2e

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/nfqpolicy/nfqpolicy/k8swatch"
)

// Scenario is one reachability scenario (testdata/conformance/FORMAT.md).
//
// TODO(e2e): this and LoadScenarios are a thin stand-in for the scenario
// package (scenario.Load) until it lands; they then become a conversion.
type Scenario struct {
	Name, Source, File string
	Cluster            *k8swatch.Cluster
	Probes             []Probe
}

// Probe is one expected verdict of a scenario, defaults applied.
type Probe struct {
	From     string `json:"from"`
	To       string `json:"to"`
	Port     int    `json:"port"`
	Protocol string `json:"protocol"`
	Family   int    `json:"family"`
	Expect   string `json:"expect"`
}

// LoadScenarios reads scenario files and directories (every *.yaml, *.yml
// and *.json directly in them). Any parse or validation error is returned:
// a kernel run of a half-read scenario would report nonsense.
func LoadScenarios(paths ...string) ([]*Scenario, error) {
	files, err := k8swatch.ExpandPaths(paths)
	if err != nil {
		return nil, err
	}
	var out []*Scenario
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("read scenario: %w", err)
		}
		ss, err := ParseScenarios(f, data)
		if err != nil {
			return nil, err
		}
		out = append(out, ss...)
	}
	return out, nil
}

// ParseScenarios reads the scenarios of one file's content; file names it
// in errors.
func ParseScenarios(file string, data []byte) ([]*Scenario, error) {
	docs, err := k8swatch.ParseDocuments(file, data)
	if err != nil {
		return nil, err
	}
	var out []*Scenario
	for _, d := range docs {
		s, err := decodeScenario(d)
		if err != nil {
			return nil, fmt.Errorf("%s (document %d): %w", file, d.Index, err)
		}
		out = append(out, s)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no scenario", file)
	}
	return out, nil
}

func decodeScenario(d k8swatch.Document) (*Scenario, error) {
	var raw struct {
		Name    string          `json:"name"`
		Source  string          `json:"source"`
		Objects json.RawMessage `json:"objects"`
		Probes  []Probe         `json:"probes"`
	}
	if err := json.Unmarshal(d.JSON, &raw); err != nil {
		return nil, fmt.Errorf("not a scenario: %w", err)
	}
	if raw.Probes == nil {
		return nil, fmt.Errorf("not a scenario: no probes")
	}
	c, err := k8swatch.DecodeDocuments(d)
	if err != nil {
		return nil, err
	}
	s := &Scenario{Name: raw.Name, Source: raw.Source, File: d.File, Cluster: c}
	if s.Name == "" {
		s.Name = fmt.Sprintf("%s#%d", d.File, d.Index)
	}
	for i, p := range raw.Probes {
		if p.Protocol == "" {
			p.Protocol = "TCP"
		}
		if p.Family == 0 {
			p.Family = 4
		}
		if err := checkProbe(p); err != nil {
			return nil, fmt.Errorf("probes[%d]: %w", i, err)
		}
		s.Probes = append(s.Probes, p)
	}
	return s, nil
}

func checkProbe(p Probe) error {
	switch {
	case p.From == "" || p.To == "":
		return fmt.Errorf("from and to are required")
	case p.Port < 1 || p.Port > 65535:
		return fmt.Errorf("port %d out of range 1-65535", p.Port)
	case p.Protocol != "TCP" && p.Protocol != "UDP" && p.Protocol != "SCTP":
		return fmt.Errorf("protocol %q is not TCP, UDP or SCTP", p.Protocol)
	case p.Family != 4 && p.Family != 6:
		return fmt.Errorf("family %d is not 4 or 6", p.Family)
	case p.Expect != "allow" && p.Expect != "deny":
		return fmt.Errorf("expect %q is not allow or deny", p.Expect)
	}
	return nil
}
