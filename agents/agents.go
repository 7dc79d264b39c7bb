// Package agents reaches the node agents of a cluster from a laptop,
// through the API server only: it finds the DaemonSet's pods and runs the
// nfqpolicy CLI inside them (pods/exec, as kubectl exec does), which talks
// to the agent's debug socket. No listener is added on the nodes.
package agents

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/streaming/pkg/httpstream"
)

// Defaults matching deploy/: the DaemonSet's namespace, pod label, container,
// the binary's path in the image and the debug socket the agent serves.
const (
	DefaultNamespace = "kube-system"
	DefaultSelector  = "app.kubernetes.io/name=nfqpolicy"
	DefaultContainer = "nfqpolicy"
	DefaultBinary    = "/usr/local/bin/nfqpolicy"
	DefaultSocket    = "/run/nfqpolicy/debug.sock"
)

// Agent is one node's agent pod.
type Agent struct {
	Node      string
	Namespace string
	Pod       string
	Container string
}

func (a Agent) String() string { return a.Namespace + "/" + a.Pod }

// Options say where the agents are. The zero value means deploy/'s.
type Options struct {
	Namespace, Selector, Container, Binary, Socket string
}

func (o Options) withDefaults() Options {
	if o.Namespace == "" {
		o.Namespace = DefaultNamespace
	}
	if o.Selector == "" {
		o.Selector = DefaultSelector
	}
	if o.Container == "" {
		o.Container = DefaultContainer
	}
	if o.Binary == "" {
		o.Binary = DefaultBinary
	}
	if o.Socket == "" {
		o.Socket = DefaultSocket
	}
	return o
}

// Execer runs a command in a pod's container and streams its output. The
// API server implementation is NewExecer; tests use fakes.
type Execer interface {
	Exec(ctx context.Context, a Agent, cmd []string, stdout, stderr io.Writer) error
}

// Cluster finds agents and runs the CLI in them.
type Cluster struct {
	client kubernetes.Interface
	exec   Execer
	opts   Options
}

// New returns a Cluster reaching agents through client and exec.
func New(client kubernetes.Interface, exec Execer, opts Options) *Cluster {
	return &Cluster{client: client, exec: exec, opts: opts.withDefaults()}
}

// Socket is the debug socket path the CLI in the agent's pod is given.
func (c *Cluster) Socket() string { return c.opts.Socket }

// NoAgentError says that no running agent pod was found where one was
// needed.
type NoAgentError struct {
	Node     string // "" for "on any node"
	Selector string
	NS       string
}

func (e *NoAgentError) Error() string {
	where := "in the cluster"
	if e.Node != "" {
		where = "on node " + e.Node
	}
	return fmt.Sprintf("no running nfqpolicy agent pod %s (pods labelled %s in namespace %s)", where, e.Selector, e.NS)
}

// Find returns the running agent pods, one per node, sorted by node; with
// nodes given, exactly those nodes' agents (a node without one is a
// *NoAgentError).
func (c *Cluster) Find(ctx context.Context, nodes ...string) ([]Agent, error) {
	l, err := c.client.CoreV1().Pods(c.opts.Namespace).List(ctx, metav1.ListOptions{LabelSelector: c.opts.Selector})
	if err != nil {
		return nil, fmt.Errorf("find agent pods: %w", err)
	}
	byNode := map[string]Agent{}
	for i := range l.Items {
		p := &l.Items[i]
		if p.Status.Phase != corev1.PodRunning || p.DeletionTimestamp != nil || p.Spec.NodeName == "" {
			continue
		}
		if old, dup := byNode[p.Spec.NodeName]; dup && old.Pod < p.Name {
			continue // during a rollout two may run; any one answers
		}
		byNode[p.Spec.NodeName] = Agent{Node: p.Spec.NodeName, Namespace: p.Namespace, Pod: p.Name, Container: c.opts.Container}
	}
	var out []Agent
	if len(nodes) == 0 {
		for _, a := range byNode {
			out = append(out, a)
		}
		if len(out) == 0 {
			return nil, &NoAgentError{Selector: c.opts.Selector, NS: c.opts.Namespace}
		}
	} else {
		for _, n := range nodes {
			a, ok := byNode[n]
			if !ok {
				return nil, &NoAgentError{Node: n, Selector: c.opts.Selector, NS: c.opts.Namespace}
			}
			if !slices.Contains(out, a) {
				out = append(out, a)
			}
		}
	}
	slices.SortFunc(out, func(a, b Agent) int { return strings.Compare(a.Node, b.Node) })
	return out, nil
}

// Run runs the nfqpolicy CLI with args in agent a's pod, streaming its
// standard output to stdout. A failing command's error carries the last
// line it printed on standard error.
func (c *Cluster) Run(ctx context.Context, a Agent, args []string, stdout io.Writer) error {
	var stderr tailBuffer
	err := c.exec.Exec(ctx, a, append([]string{c.opts.Binary}, args...), stdout, &stderr)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if msg := stderr.lastLine(); msg != "" {
			return fmt.Errorf("agent %s on %s: %s", a, a.Node, msg)
		}
		return fmt.Errorf("agent %s on %s: %w", a, a.Node, err)
	}
	return nil
}

// tailBuffer keeps the end of a command's standard error.
type tailBuffer struct{ b []byte }

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > 8192 {
		t.b = t.b[len(t.b)-8192:]
	}
	return len(p), nil
}

func (t *tailBuffer) lastLine() string {
	lines := strings.Split(strings.TrimSpace(string(t.b)), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// apiExecer runs commands through the API server's pods/exec, WebSocket
// first and SPDY for servers that refuse the upgrade, as kubectl exec does.
type apiExecer struct {
	cfg    *rest.Config
	client kubernetes.Interface
}

// NewExecer returns the Execer that goes through the API server at cfg.
func NewExecer(cfg *rest.Config, client kubernetes.Interface) Execer {
	return &apiExecer{cfg: cfg, client: client}
}

func (e *apiExecer) Exec(ctx context.Context, a Agent, cmd []string, stdout, stderr io.Writer) error {
	req := e.client.CoreV1().RESTClient().Post().Resource("pods").Namespace(a.Namespace).Name(a.Pod).
		SubResource("exec").VersionedParams(&corev1.PodExecOptions{
		Container: a.Container, Command: cmd, Stdout: true, Stderr: true,
	}, scheme.ParameterCodec)
	ws, err := remotecommand.NewWebSocketExecutor(e.cfg, http.MethodGet, req.URL().String())
	if err != nil {
		return fmt.Errorf("exec in %s: %w", a, err)
	}
	spdy, err := remotecommand.NewSPDYExecutor(e.cfg, http.MethodPost, req.URL())
	if err != nil {
		return fmt.Errorf("exec in %s: %w", a, err)
	}
	ex, err := remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
	if err != nil {
		return fmt.Errorf("exec in %s: %w", a, err)
	}
	if err := ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: stdout, Stderr: stderr}); err != nil {
		return fmt.Errorf("exec in %s: %w", a, err)
	}
	return nil
}

// ErrStreamEnded is returned by Trace when an agent's stream ends while
// the caller still wants it.
var ErrStreamEnded = errors.New("the agent's trace stream ended")
