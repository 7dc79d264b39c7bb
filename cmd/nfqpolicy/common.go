package main

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/nfqpolicy/nfqpolicy/cluster"
	"github.com/nfqpolicy/nfqpolicy/filter"
)

// portSpec is a destination port and protocol, written 80/TCP.
type portSpec struct {
	port  int
	proto uint8
}

func (p portSpec) String() string { return fmt.Sprintf("%d/%s", p.port, filter.ProtoName(p.proto)) }

func parsePort(s string) (portSpec, error) {
	num, proto, _ := strings.Cut(s, "/")
	n, err := strconv.Atoi(num)
	if err != nil || n < 1 || n > 65535 {
		return portSpec{}, fmt.Errorf("port %q: want a number 1-65535, optionally /TCP, /UDP or /SCTP", s)
	}
	pr, err := filter.ProtoNumber(proto)
	if err != nil {
		return portSpec{}, fmt.Errorf("port %q: %w", s, err)
	}
	return portSpec{port: n, proto: pr}, nil
}

// portList collects repeated --port flags.
type portList []portSpec

func (l *portList) String() string {
	parts := make([]string, len(*l))
	for i, p := range *l {
		parts[i] = p.String()
	}
	return strings.Join(parts, ",")
}

func (l *portList) Set(s string) error {
	p, err := parsePort(s)
	if err != nil {
		return err
	}
	*l = append(*l, p)
	return nil
}

// flagList collects repeated string flags.
type flagList []string

func (l *flagList) String() string     { return strings.Join(*l, ",") }
func (l *flagList) Set(s string) error { *l = append(*l, s); return nil }

// loadSnapshot reads snapshot files and compiles them. Objects that fail
// validation are reported; loading stops there, as the offline tools must
// not answer questions about a cluster they only partly read.
func loadSnapshot(paths []string) (*cluster.Cluster, *filter.Ruleset, error) {
	if len(paths) == 0 {
		return nil, nil, fmt.Errorf("--snapshot is required")
	}
	c, err := cluster.LoadFiles(paths...)
	if err != nil {
		return nil, nil, err
	}
	rs, err := filter.Compile(c)
	if err != nil {
		return nil, nil, err
	}
	return c, rs, nil
}
