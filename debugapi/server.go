// Package debugapi is the agent's local debug API: recent decisions, the
// compiled policy state, explain against the live state, and a live trace
// of decisions. It is served on a unix socket (root-only by default, no
// network exposure) and can also be mounted on the health port's mux.
//
//	GET /flows?n=100&from=&to=&port=     recent decisions, JSON lines
//	GET /policies                        compiled state, JSON
//	GET /explain?from=&to=&port=80/TCP&family=4
//	GET /trace?from=&to=&port=           matching decisions as JSON lines
//	                                     until the client goes away
//
// Decisions are rendered by flowlog's Renderer, so /flows, /trace and the
// flow log share one format (flowlog.Entry reads all three).
package debugapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/nfqpolicy/nfqpolicy/filter"
	"github.com/nfqpolicy/nfqpolicy/flowlog"
)

// DefaultSocket is where the agent serves the debug API unless told
// otherwise, and where the CLI looks for it.
const DefaultSocket = "/run/nfqpolicy/debug.sock"

// StateFunc returns the Ruleset the agent decides with now (nil before
// the first compile).
type StateFunc func() *filter.Ruleset

// ExplainFunc explains one flow against the live state; the result is
// served as JSON. port is the destination port, proto "TCP", "UDP" or
// "SCTP", family 4 or 6. An error is the caller's fault (unknown pod, bad
// address) and is served as 400.
type ExplainFunc func(from, to string, port int, proto string, family int) (any, error)

// Options configure a Server. Hub is required; without State or Explain
// those endpoints answer 503.
type Options struct {
	Hub      *Hub
	State    StateFunc
	Explain  ExplainFunc
	Renderer flowlog.Renderer
	// TraceBuffer is each trace subscriber's buffer (default 256).
	TraceBuffer int
	// TraceReport is how often an idle trace stream reports pending loss
	// (default 1s).
	TraceReport time.Duration
}

// Server serves the debug API.
type Server struct {
	o Options
}

// New checks o and returns a Server.
func New(o Options) (*Server, error) {
	if o.Hub == nil {
		return nil, errors.New("debugapi: no hub")
	}
	if o.TraceReport <= 0 {
		o.TraceReport = time.Second
	}
	return &Server{o: o}, nil
}

// Register adds the endpoints to mux under prefix ("" or e.g. "/debug").
func (s *Server) Register(mux *http.ServeMux, prefix string) {
	prefix = strings.TrimSuffix(prefix, "/")
	mux.HandleFunc("GET "+prefix+"/flows", s.flows)
	mux.HandleFunc("GET "+prefix+"/policies", s.policies)
	mux.HandleFunc("GET "+prefix+"/explain", s.explain)
	mux.HandleFunc("GET "+prefix+"/trace", s.trace)
}

// Handler serves the endpoints at the root.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	s.Register(mux, "")
	return mux
}

func httpError(w http.ResponseWriter, code int, format string, args ...any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]string{"error": fmt.Sprintf(format, args...)})
}

func (s *Server) flows(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	m, err := ParseFilter(q.Get("from"), q.Get("to"), q.Get("port"))
	if err != nil {
		httpError(w, http.StatusBadRequest, "%v", err)
		return
	}
	n := 100
	if v := q.Get("n"); v != "" {
		if n, err = strconv.Atoi(v); err != nil || n < 0 {
			httpError(w, http.StatusBadRequest, "n %q: want a count (0: all kept)", v)
			return
		}
	}
	recs := s.o.Hub.Recent(n, m)
	w.Header().Set("Content-Type", "application/x-ndjson")
	zl := zerolog.New(w)
	for i := range recs {
		s.o.Renderer.Fields(zl.Log(), &recs[i]).Send()
	}
}

// PolicyState is one compiled policy as /policies shows it.
type PolicyState struct {
	Name   string `json:"name"`
	Staged bool   `json:"staged,omitempty"`
}

// PodState is one pod's compiled isolation.
type PodState struct {
	Name   string            `json:"name"`
	Node   string            `json:"node,omitempty"`
	Labels map[string]string `json:"labels,omitempty"`
	// Ingress and Egress name the policies that isolate the pod in that
	// direction (enforced); the Audit lists include staged ones.
	Ingress      []string `json:"ingress_isolated_by,omitempty"`
	Egress       []string `json:"egress_isolated_by,omitempty"`
	AuditIngress []string `json:"audit_ingress_isolated_by,omitempty"`
	AuditEgress  []string `json:"audit_egress_isolated_by,omitempty"`
}

// State is the /policies document.
type State struct {
	Pods     int           `json:"pods"`
	Nodes    int           `json:"nodes"`
	Rules    int           `json:"rules"`
	Staged   bool          `json:"has_staged"`
	Policies []PolicyState `json:"policies"`
	// Isolated lists the pods on this node that some policy isolates
	// (with ?all=1, every pod of the cluster).
	Isolated []PodState `json:"isolated_pods"`
	Warnings []string   `json:"warnings,omitempty"`
}

// Describe renders a Ruleset as /policies serves it: the isolated pods of
// node (every node's when node is ""), or with all every pod.
func Describe(rs *filter.Ruleset, node string, all bool) State {
	pods, nodes, policies, rules := rs.Counts()
	st := State{Pods: pods, Nodes: nodes, Rules: rules, Staged: rs.HasStaged(), Warnings: rs.Warnings,
		Policies: make([]PolicyState, 0, policies), Isolated: []PodState{}}
	for i := range int32(policies) {
		st.Policies = append(st.Policies, PolicyState{Name: rs.PolicyName(i), Staged: rs.PolicyStaged(i)})
	}
	for i := range int32(pods) {
		if !all && node != "" && rs.PodNode(i) != node {
			continue
		}
		p := PodState{
			Name:         rs.PodName(i),
			Node:         rs.PodNode(i),
			Labels:       rs.PodLabels(i),
			Ingress:      rs.Isolators(i, "ingress", false),
			Egress:       rs.Isolators(i, "egress", false),
			AuditIngress: rs.Isolators(i, "ingress", true),
			AuditEgress:  rs.Isolators(i, "egress", true),
		}
		if !rs.HasStaged() {
			p.AuditIngress, p.AuditEgress = nil, nil
		}
		if all || len(p.Ingress)+len(p.Egress)+len(p.AuditIngress)+len(p.AuditEgress) > 0 {
			st.Isolated = append(st.Isolated, p)
		}
	}
	return st
}

func (s *Server) policies(w http.ResponseWriter, r *http.Request) {
	if s.o.State == nil {
		httpError(w, http.StatusServiceUnavailable, "policy state is not wired")
		return
	}
	rs := s.o.State()
	if rs == nil {
		httpError(w, http.StatusServiceUnavailable, "no policies compiled yet")
		return
	}
	all := r.URL.Query().Get("all")
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(Describe(rs, s.o.Renderer.Node, all == "1" || all == "true"))
}

func (s *Server) explain(w http.ResponseWriter, r *http.Request) {
	if s.o.Explain == nil {
		httpError(w, http.StatusServiceUnavailable, "explain is not wired")
		return
	}
	q := r.URL.Query()
	from, to := q.Get("from"), q.Get("to")
	if from == "" || to == "" {
		httpError(w, http.StatusBadRequest, "from and to are required")
		return
	}
	port, proto, err := parsePortProto(q.Get("port"))
	if err != nil {
		httpError(w, http.StatusBadRequest, "%v", err)
		return
	}
	family := 4
	if f := q.Get("family"); f != "" {
		if family, err = strconv.Atoi(f); err != nil || (family != 4 && family != 6) {
			httpError(w, http.StatusBadRequest, "family %q: want 4 or 6", f)
			return
		}
	}
	res, err := s.o.Explain(from, to, port, proto, family)
	if err != nil {
		httpError(w, http.StatusBadRequest, "%v", err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(res)
}

// parsePortProto reads "80", "80/TCP" or "53/udp" (default 80/TCP).
func parsePortProto(s string) (int, string, error) {
	if s == "" {
		return 80, "TCP", nil
	}
	num, proto, _ := strings.Cut(s, "/")
	n, err := strconv.Atoi(num)
	if err != nil || n < 1 || n > 65535 {
		return 0, "", fmt.Errorf("port %q: want a number 1-65535, optionally /TCP, /UDP or /SCTP", s)
	}
	p, err := filter.ProtoNumber(proto)
	if err != nil {
		return 0, "", fmt.Errorf("port %q: %w", s, err)
	}
	return n, strings.ToUpper(filter.ProtoName(p)), nil
}

func (s *Server) trace(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	m, err := ParseFilter(q.Get("from"), q.Get("to"), q.Get("port"))
	if err != nil {
		httpError(w, http.StatusBadRequest, "%v", err)
		return
	}
	sub := s.o.Hub.Subscribe(m, s.o.TraceBuffer)
	defer sub.Close()
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	// The first flush tells the client the stream is open, so that a
	// client can wait for it before generating traffic.
	if err := rc.Flush(); err != nil {
		return
	}
	zl := zerolog.New(w)
	// Poll the subscription rather than block on it: a verdict goroutine
	// sending to a parked receiver would pay for waking it.
	poll := time.NewTicker(10 * time.Millisecond)
	defer poll.Stop()
	report := time.NewTicker(s.o.TraceReport)
	defer report.Stop()
	var rec flowlog.Record
	for {
		select {
		case <-r.Context().Done():
			return
		case <-poll.C:
			wrote := 0
		drain:
			for wrote < cap(sub.ch) {
				select {
				case rec = <-sub.C():
					s.o.Renderer.Fields(zl.Log(), &rec).Send()
					wrote++
				default:
					break drain
				}
			}
			if wrote > 0 {
				if err := rc.Flush(); err != nil {
					return
				}
			}
		case <-report.C:
			if lost := sub.TakeLost(); lost > 0 {
				zl.Log().Str("time", time.Now().UTC().Format(time.RFC3339Nano)).
					Uint64("lost", lost).Str("message", "trace client too slow: records lost").Send()
			}
			// An empty write also notices a client that went away.
			if err := rc.Flush(); err != nil {
				return
			}
		}
	}
}

// ServeUnix serves h on a unix socket at path until ctx is done. A stale
// socket file is replaced; the socket is made accessible to its owner only
// (the API reveals the cluster's policies and traffic).
func ServeUnix(ctx context.Context, path string, h http.Handler) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("debugapi: socket directory: %w", err)
	}
	if st, err := os.Lstat(path); err == nil {
		if st.Mode()&fs.ModeSocket == 0 {
			return fmt.Errorf("debugapi: %s exists and is not a socket", path)
		}
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("debugapi: remove stale socket: %w", err)
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("debugapi: listen: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return fmt.Errorf("debugapi: chmod socket: %w", err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, BaseContext: func(net.Listener) context.Context { return ctx }}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		// Trace streams never finish on their own; their handlers end
		// with the base context, and Shutdown waits for them briefly.
		srv.Shutdown(sctx)
		os.Remove(path)
		return nil
	case err := <-errc:
		os.Remove(path)
		return fmt.Errorf("debugapi: serve: %w", err)
	}
}
