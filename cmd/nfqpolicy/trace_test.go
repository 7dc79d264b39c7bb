package main

import (
	"bytes"
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nfqpolicy/nfqpolicy/debugapi"
	"github.com/nfqpolicy/nfqpolicy/filter"
	"github.com/nfqpolicy/nfqpolicy/internal/testcluster"
)

// lockedBuffer lets the test read what cmdTrace writes from another
// goroutine.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestTraceCommand(t *testing.T) {
	rs := testcluster.CompileDocs(t, `
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {nodeName: n, containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
spec: {nodeName: n, containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.1.2}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-b, namespace: x}
spec: {podSelector: {matchLabels: {app: b}}}
`)
	hub := debugapi.NewHub(16)
	srv, err := debugapi.New(debugapi.Options{Hub: hub})
	if err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(t.TempDir(), "agent.sock")
	sctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- debugapi.ServeUnix(sctx, socket, srv.Handler()) }()
	defer func() { stop(); <-served }()
	for i := 0; ; i++ {
		if _, err := os.Stat(socket); err == nil {
			break
		}
		if i > 200 {
			t.Fatal("no socket")
		}
		time.Sleep(10 * time.Millisecond)
	}

	for _, format := range []string{"text", "json"} {
		t.Run(format, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var out lockedBuffer
			var errb bytes.Buffer
			code := make(chan int, 1)
			go func() {
				code <- dispatch(ctx, []string{"trace", "--agent", socket, "--to", "x/b", "--port", "80/TCP", "-o", format}, &out, &errb)
			}()
			for hub.Subscribers() == 0 {
				time.Sleep(5 * time.Millisecond)
			}
			toB := filter.Flow{Src: netip.MustParseAddr("10.0.1.1"), Dst: netip.MustParseAddr("10.0.1.2"), SrcPort: 40000, DstPort: 80, Proto: filter.ProtoTCP}
			toA := toB
			toA.Src, toA.Dst = toB.Dst, toB.Src
			hub.OnVerdict(toA, rs.Decide(toA), nil, time.Now(), 0) // filtered out
			hub.OnVerdict(toB, rs.Decide(toB), nil, time.Now(), 0)
			deadline := time.Now().Add(5 * time.Second)
			for !strings.Contains(out.String(), "\n") && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			cancel()
			if c := <-code; c != 0 {
				t.Fatalf("exit %d; stderr %s", c, errb.String())
			}
			// The agent drops the subscription once it notices the client
			// left; the next subtest counts on that.
			for i := 0; hub.Subscribers() != 0; i++ {
				if i > 500 {
					t.Fatal("the agent kept the subscription of a client that left")
				}
				time.Sleep(10 * time.Millisecond)
			}
			got := out.String()
			if strings.Count(got, "\n") != 1 {
				t.Fatalf("printed %q, want exactly the one matching decision", got)
			}
			want := []string{"DENY  x/a (10.0.1.1):40000 -> x/b (10.0.1.2):80/TCP", "default deny by isolation of x/b from x/deny-b"}
			if format == "json" {
				want = []string{`"verdict":"deny"`, `"src_pod":"x/a"`, `"dst_pod":"x/b"`, `"dst_port":80`}
			}
			for _, w := range want {
				if !strings.Contains(got, w) {
					t.Errorf("output %q lacks %q", got, w)
				}
			}
		})
	}
}

func TestTraceCommandErrors(t *testing.T) {
	for _, tc := range []struct {
		args   []string
		code   int
		stderr string
	}{
		{[]string{"trace", "--agent", filepath.Join(t.TempDir(), "none.sock")}, 1, "none.sock"},
		{[]string{"trace", "--from", "nonsense"}, 2, "not ns/pod"},
		{[]string{"trace", "--port", "80/ICMP"}, 2, "TCP, UDP or SCTP"},
		{[]string{"trace", "-o", "yaml"}, 2, `-o "yaml"`},
		{[]string{"trace", "extra"}, 2, `unexpected argument "extra"`},
	} {
		var out, errb bytes.Buffer
		if code := dispatch(context.Background(), tc.args, &out, &errb); code != tc.code || !strings.Contains(errb.String(), tc.stderr) {
			t.Errorf("%v: exit %d stderr %q, want %d with %q", tc.args, code, errb.String(), tc.code, tc.stderr)
		}
	}
}
