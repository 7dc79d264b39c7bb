package agent

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/nfqpolicy/nfqpolicy/cluster"
	"github.com/nfqpolicy/nfqpolicy/dataplane/iptables"
	"github.com/nfqpolicy/nfqpolicy/k8swatch"
)

// staticSource never has a state: enough for what does not run.
type staticSource struct{}

func (staticSource) Run(ctx context.Context) error     { <-ctx.Done(); return nil }
func (staticSource) Current() (*cluster.Cluster, bool) { return nil, false }
func (staticSource) Changed() <-chan struct{}          { return nil }

var okRules = iptables.Config{Marks: iptables.DefaultMarks, QueueBase: 100, Queues: 1}

func TestNewValidates(t *testing.T) {
	ok := http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})
	tests := []struct {
		name    string
		cfg     Config
		src     k8swatch.Source
		wantErr string
	}{
		{"ok", Config{NodeName: "n", Rules: okRules}, staticSource{}, ""},
		{"no node", Config{Rules: okRules}, staticSource{}, "node name is required"},
		{"no source", Config{NodeName: "n", Rules: okRules}, nil, "no cluster source"},
		{"bad marks", Config{NodeName: "n", Rules: iptables.Config{Marks: iptables.Marks{Allow: 1, Deny: 1, Mask: 1}, Queues: 1}}, staticSource{}, "equal"},
		{"bad established", Config{NodeName: "n", Rules: okRules, Established: "forget"}, staticSource{}, "want keep or recheck"},
		{"handler clash", Config{NodeName: "n", Rules: okRules, Handlers: map[string]http.Handler{"GET /readyz": ok}}, staticSource{}, "agent's own"},
		{"bad pattern", Config{NodeName: "n", Rules: okRules, Handlers: map[string]http.Handler{"FROB": ok}}, staticSource{}, "FROB"},
		{"nil handler", Config{NodeName: "n", Rules: okRules, Handlers: map[string]http.Handler{"GET /metrics": nil}}, staticSource{}, "nil"},
		{"extra handler", Config{NodeName: "n", Rules: okRules, Handlers: map[string]http.Handler{"GET /metrics": ok}}, staticSource{}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg, tt.src)
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("New: %v, want %q", err, tt.wantErr)
			}
		})
	}
}

// TestHandlerBeforeStart: alive, not ready (and why), counters as JSON,
// extra handlers served.
func TestHandlerBeforeStart(t *testing.T) {
	metrics := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "metrics here") })
	a, err := New(Config{NodeName: "n", Rules: okRules, Log: zerolog.Nop(), Handlers: map[string]http.Handler{"GET /metrics": metrics}}, staticSource{})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(a.Handler())
	defer srv.Close()
	tests := []struct {
		path     string
		code     int
		contains string
	}{
		{"/healthz", 200, "ok"},
		{"/readyz", 503, "waiting for the first cluster state"},
		{"/debug/counters", 200, `"ready": false`},
		{"/metrics", 200, "metrics here"},
		{"/nothing", 404, ""},
	}
	for _, tt := range tests {
		resp, err := http.Get(srv.URL + tt.path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.code || !strings.Contains(string(body), tt.contains) {
			t.Errorf("GET %s: %d %q, want %d containing %q", tt.path, resp.StatusCode, body, tt.code, tt.contains)
		}
		if tt.path == "/debug/counters" {
			var s Status
			if err := json.Unmarshal(body, &s); err != nil {
				t.Errorf("counters are not a Status: %v", err)
			}
		}
	}
}
