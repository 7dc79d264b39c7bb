package agents

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
)

func agentPod(name, node string, phase corev1.PodPhase) runtime.Object {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "kube-system", Labels: map[string]string{"app.kubernetes.io/name": "nfqpolicy"}},
		Spec:       corev1.PodSpec{NodeName: node},
		Status:     corev1.PodStatus{Phase: phase},
	}
}

// fakeExec plays scripted output per pod: each line is written after its
// delay; err ends the command with that error (and stderr text).
type fakeExec struct {
	mu     sync.Mutex
	cmds   map[string][]string
	script map[string][]scripted
	err    map[string]error
	stderr map[string]string
	block  bool // keep the command running until ctx ends
}

type scripted struct {
	after time.Duration
	line  string
}

func (f *fakeExec) Exec(ctx context.Context, a Agent, cmd []string, stdout, stderr io.Writer) error {
	f.mu.Lock()
	if f.cmds == nil {
		f.cmds = map[string][]string{}
	}
	f.cmds[a.Pod] = cmd
	f.mu.Unlock()
	for _, s := range f.script[a.Pod] {
		select {
		case <-time.After(s.after):
		case <-ctx.Done():
			return ctx.Err()
		}
		fmt.Fprintln(stdout, s.line)
	}
	if e := f.err[a.Pod]; e != nil {
		fmt.Fprint(stderr, f.stderr[a.Pod])
		return e
	}
	if f.block {
		<-ctx.Done()
		return ctx.Err()
	}
	return nil
}

func TestFind(t *testing.T) {
	client := fake.NewClientset(
		agentPod("nfqpolicy-b", "node-2", corev1.PodRunning),
		agentPod("nfqpolicy-a", "node-1", corev1.PodRunning),
		agentPod("nfqpolicy-old", "node-3", corev1.PodFailed),
	)
	c := New(client, &fakeExec{}, Options{})
	all, err := c.Find(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 2 || all[0].Node != "node-1" || all[0].Pod != "nfqpolicy-a" || all[1].Container != "nfqpolicy" {
		t.Errorf("Find() = %+v", all)
	}
	one, err := c.Find(context.Background(), "node-2")
	if err != nil || len(one) != 1 || one[0].Pod != "nfqpolicy-b" {
		t.Errorf("Find(node-2) = %+v, %v", one, err)
	}
	_, err = c.Find(context.Background(), "node-3")
	var na *NoAgentError
	if !errors.As(err, &na) || !strings.Contains(err.Error(), "no running nfqpolicy agent pod on node node-3") {
		t.Errorf("Find(node-3) err = %v", err)
	}
	_, err = New(fake.NewClientset(), &fakeExec{}, Options{}).Find(context.Background())
	if !errors.As(err, &na) {
		t.Errorf("Find on an empty cluster: %v", err)
	}
}

func TestRunReportsStderr(t *testing.T) {
	ex := &fakeExec{err: map[string]error{"p": errors.New("command terminated with exit code 2")},
		stderr: map[string]string{"p": "some noise\nnfqpolicy explain: agent /run/nfqpolicy/debug.sock: --to: unknown pod x/nope\n"}}
	c := New(fake.NewClientset(), ex, Options{})
	err := c.Run(context.Background(), Agent{Node: "n", Namespace: "kube-system", Pod: "p"}, []string{"explain"}, io.Discard)
	if err == nil || !strings.HasSuffix(err.Error(), "--to: unknown pod x/nope") {
		t.Errorf("err = %v", err)
	}
	if got := ex.cmds["p"]; !slices.Equal(got, []string{DefaultBinary, "explain"}) {
		t.Errorf("command %q", got)
	}
}

func entry(ts string, node string) string {
	return fmt.Sprintf(`{"time":%q,"node":%q,"verdict":"allow"}`, ts, node)
}

// Two nodes' streams arrive out of time order with each other; Trace
// prints them in time order, labelled, and passes the filter to the CLI.
func TestTraceMerges(t *testing.T) {
	client := fake.NewClientset(agentPod("a1", "node-1", corev1.PodRunning), agentPod("a2", "node-2", corev1.PodRunning))
	ex := &fakeExec{block: true, script: map[string][]scripted{
		// node-1's decisions reach us first although node-2 decided earlier.
		"a1": {{0, entry("2026-01-01T00:00:02Z", "node-1")}, {0, entry("2026-01-01T00:00:04Z", "node-1")}},
		"a2": {{30 * time.Millisecond, entry("2026-01-01T00:00:01Z", "node-2")}, {0, entry("2026-01-01T00:00:03Z", "node-2")}},
	}}
	c := New(client, ex, Options{})
	as, err := c.Find(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var got []string
	err = c.Trace(ctx, as, TraceQuery{From: "x/a", Port: "80/TCP"}, 200*time.Millisecond, func(l Line) error {
		got = append(got, l.Node+" "+l.Time.Format("05"))
		if len(got) == 4 {
			cancel()
		}
		return nil
	}, func(a Agent, err error) { t.Errorf("%s failed: %v", a, err) })
	if err != nil {
		t.Fatalf("Trace: %v", err)
	}
	want := []string{"node-2 01", "node-1 02", "node-2 03", "node-1 04"}
	if !slices.Equal(got, want) {
		t.Errorf("merged %q, want %q", got, want)
	}
	wantCmd := []string{DefaultBinary, "trace", "--agent", DefaultSocket, "-o", "json", "--from", "x/a", "--port", "80/TCP"}
	ex.mu.Lock()
	defer ex.mu.Unlock()
	if !slices.Equal(ex.cmds["a1"], wantCmd) {
		t.Errorf("command %q, want %q", ex.cmds["a1"], wantCmd)
	}
}

// One node's stream failing is reported at once; the other keeps going
// (its line is printed) and, when it ends too, that is a failure as well:
// a trace only ends when the user stops it.
func TestTraceFailure(t *testing.T) {
	client := fake.NewClientset(agentPod("a1", "node-1", corev1.PodRunning), agentPod("a2", "node-2", corev1.PodRunning))
	ex := &fakeExec{
		script: map[string][]scripted{"a2": {{50 * time.Millisecond, entry("2026-01-01T00:00:01Z", "node-2")}}},
		err:    map[string]error{"a1": errors.New("exit code 1")},
		stderr: map[string]string{"a1": "nfqpolicy trace: debug api at /run/nfqpolicy/debug.sock: connection refused\n"},
	}
	c := New(client, ex, Options{})
	as, _ := c.Find(context.Background())
	var failed []string
	var got int
	err := c.Trace(context.Background(), as, TraceQuery{}, 20*time.Millisecond,
		func(Line) error { got++; return nil },
		func(a Agent, err error) { failed = append(failed, a.Node+": "+err.Error()) })
	if err == nil || !strings.Contains(err.Error(), "2 of 2") {
		t.Errorf("err = %v", err)
	}
	if got != 1 || len(failed) != 2 || !strings.Contains(failed[0], "node-1: agent kube-system/a1 on node-1: nfqpolicy trace: debug api") ||
		!strings.HasSuffix(failed[1], "node-2: agent kube-system/a2 on node-2: "+ErrStreamEnded.Error()) {
		t.Errorf("got %d lines, failures %q", got, failed)
	}
}
