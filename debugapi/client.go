package debugapi

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// client talks HTTP over the agent's unix socket; the host in URLs is a
// placeholder.
func client(socket string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}
}

func get(ctx context.Context, socket, path string, q url.Values) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://agent"+path+"?"+q.Encode(), nil)
	if err != nil {
		return nil, fmt.Errorf("debug api %s: %w", path, err)
	}
	resp, err := client(socket).Do(req)
	if err != nil {
		return nil, fmt.Errorf("debug api at %s: %w", socket, err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return nil, fmt.Errorf("debug api %s: %s", path, e.Error)
		}
		return nil, fmt.Errorf("debug api %s: %s: %s", path, resp.Status, strings.TrimSpace(string(b)))
	}
	return resp, nil
}

// Explain asks the agent at socket to explain a flow from -> to on port
// ("80/TCP") for address family 4 or 6, and returns the explanation JSON.
func Explain(ctx context.Context, socket, from, to, port string, family int) (json.RawMessage, error) {
	q := url.Values{"from": {from}, "to": {to}, "port": {port}, "family": {fmt.Sprint(family)}}
	resp, err := get(ctx, socket, "/explain", q)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("debug api /explain: %w", err)
	}
	if !json.Valid(b) {
		return nil, fmt.Errorf("debug api /explain: answer is not JSON")
	}
	return json.RawMessage(b), nil
}

// TraceQuery selects what Trace streams ("" for any).
type TraceQuery struct {
	From, To, Port string
}

func (t TraceQuery) values() url.Values {
	q := url.Values{}
	for k, v := range map[string]string{"from": t.From, "to": t.To, "port": t.Port} {
		if v != "" {
			q.Set(k, v)
		}
	}
	return q
}

// Trace streams matching decisions from the agent at socket, calling line
// with each JSON line, until ctx is done (then it returns nil), the agent
// closes the stream, or line returns an error.
func Trace(ctx context.Context, socket string, tq TraceQuery, line func([]byte) error) error {
	resp, err := get(ctx, socket, "/trace", tq.values())
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if err := line(sc.Bytes()); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("debug api /trace: %w", err)
	}
	return fmt.Errorf("debug api /trace: the agent closed the stream")
}

// Flows fetches up to n recent decisions matching tq as JSON lines.
func Flows(ctx context.Context, socket string, tq TraceQuery, n int) ([]byte, error) {
	q := tq.values()
	q.Set("n", fmt.Sprint(n))
	resp, err := get(ctx, socket, "/flows", q)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}
