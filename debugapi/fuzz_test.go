package debugapi

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/nfqpolicy/nfqpolicy/filter"
	"github.com/nfqpolicy/nfqpolicy/internal/testcluster"
)

// FuzzRequest sends arbitrary requests to every endpoint of the debug
// socket, as any local client may: no request may panic the server, and
// each gets a status that says what happened (never a 500).
func FuzzRequest(f *testing.F) {
	for _, s := range []string{
		"/debug/flows?n=10&from=10.0.1.1&to=x/b&port=80",
		"/debug/flows?n=-1&port=99999",
		"/debug/policies?all=1",
		"/debug/explain?from=x/a&to=10.0.1.2&port=80/TCP&family=6",
		"/debug/explain?from=&to=%zz&port=/",
		"/debug/trace?from=10.0.1.0/24&port=80-90",
		"/debug/flows?from=::ffff:10.0.0.1%25eth0&to=[::1]",
	} {
		f.Add(s)
	}
	rs := testcluster.Compile(f)
	h := NewHub(64)
	for i := range 20 {
		fl := tcp("10.0.1.1", "10.0.1.2", uint16(i+1))
		h.OnVerdict(fl, rs.Decide(fl), nil, time.Now(), 0)
	}
	s, err := New(Options{Hub: h, State: func() *filter.Ruleset { return rs },
		Explain: func(from, to string, port int, proto string, family int) (any, error) {
			return map[string]any{"from": from, "to": to, "port": port, "proto": proto, "family": family}, nil
		}})
	if err != nil {
		f.Fatal(err)
	}
	mux := http.NewServeMux()
	s.Register(mux, "/debug")
	f.Fuzz(func(t *testing.T, target string) {
		u, err := url.ParseRequestURI(target)
		if err != nil {
			return // not a request a client can send
		}
		// A trace streams until the client goes away: give it a moment.
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		req := httptest.NewRequestWithContext(ctx, http.MethodGet, "/", nil)
		req.URL = u
		req.RequestURI = u.RequestURI()
		w := httptest.NewRecorder()
		mux.ServeHTTP(w, req)
		if w.Code >= 500 && w.Code != http.StatusServiceUnavailable {
			t.Fatalf("GET %s: HTTP %d %s", target, w.Code, w.Body.String())
		}
	})
}
