package realcluster

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
)

// Kubectl runs the cluster's kubectl as the admin user from the root
// namespace and returns its standard output; a failure's error carries
// standard error.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) (string, error) {
	return c.KubectlIn(ctx, "", args...)
}

// KubectlIn is Kubectl with standard input.
func (c *Cluster) KubectlIn(ctx context.Context, stdin string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, c.Bins.Kubectl, append([]string{"--kubeconfig", c.Kubeconfig}, args...)...)
	cmd.Env = c.env
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out.String(), nil
}

// Apply applies YAML manifests (kubectl apply -f -).
func (c *Cluster) Apply(ctx context.Context, yaml string) error {
	_, err := c.KubectlIn(ctx, yaml, "apply", "-f", "-")
	return err
}

// Exec runs argv in a pod's (first) container through the API server and
// kubelet (kubectl exec) and returns the combined output. The exit status
// of argv is the error's: a non-zero one is an *exec.ExitError.
func (c *Cluster) Exec(ctx context.Context, namespace, pod string, argv ...string) (string, error) {
	args := append([]string{"--kubeconfig", c.Kubeconfig, "exec", "-n", namespace, pod, "--"}, argv...)
	cmd := exec.CommandContext(ctx, c.Bins.Kubectl, args...)
	cmd.Env = c.env
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl exec %s/%s %s: %w: %s", namespace, pod, strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// InNode runs a command inside a node's network namespace (nsenter --net,
// like the node's daemons) and returns its combined output.
func (c *Cluster) InNode(ctx context.Context, n *Node, name string, args ...string) (string, error) {
	return runIn(ctx, n.NS.Name, c.env, name, args...)
}

// InControlPlane runs a command in the control plane's namespace: a
// client outside every node, as an external host would be.
func (c *Cluster) InControlPlane(ctx context.Context, name string, args ...string) (string, error) {
	return runIn(ctx, c.CP.Name, c.env, name, args...)
}

func runIn(ctx context.Context, ns string, env []string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=/run/netns/" + ns, "--", name}, args...)...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("in %s: %s %s: %w: %s", ns, name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}
