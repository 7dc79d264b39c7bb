package realcluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// Deployment is nfqpolicy applied to the cluster from the repository's
// deploy/ through a kustomize overlay that only swaps the image.
type Deployment struct {
	c       *Cluster
	overlay string
}

// AgentNamespace and AgentDaemonSet name what deploy/ creates.
const (
	AgentNamespace = "kube-system"
	AgentDaemonSet = "nfqpolicy"
	AgentLabel     = "app.kubernetes.io/name=nfqpolicy"
)

// Deploy applies deployDir (the repository's deploy/) the way a user does,
// `kubectl apply -k` on an overlay whose only change is the image (image,
// as "name:tag", must already be on the nodes: Options.Images or
// ImportImage), and waits until the DaemonSet's pod is ready on every node.
func (c *Cluster) Deploy(ctx context.Context, deployDir, image string) (*Deployment, error) {
	deployDir, err := filepath.Abs(deployDir)
	if err != nil {
		return nil, err
	}
	baseName, err := kustomizedImage(deployDir)
	if err != nil {
		return nil, err
	}
	newName, newTag, ok := splitImage(image)
	if !ok {
		return nil, fmt.Errorf("image %q: want name:tag", image)
	}
	overlay, err := os.MkdirTemp(c.Dir, "overlay-")
	if err != nil {
		return nil, err
	}
	rel, err := filepath.Rel(overlay, deployDir)
	if err != nil {
		return nil, err
	}
	k := fmt.Sprintf(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - %s
images:
  - name: %s
    newName: %s
    newTag: %q
`, rel, baseName, newName, newTag)
	if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(k), 0o644); err != nil {
		return nil, err
	}
	d := &Deployment{c: c, overlay: overlay}
	if _, err := c.Kubectl(ctx, "apply", "-k", overlay); err != nil {
		return nil, err
	}
	if err := d.WaitReady(ctx, 3*time.Minute); err != nil {
		return d, err
	}
	return d, nil
}

// WaitReady waits until the DaemonSet's current generation runs and is
// ready on every node.
func (d *Deployment) WaitReady(ctx context.Context, timeout time.Duration) error {
	c := d.c
	return waitFor(timeout, "DaemonSet nfqpolicy ready on every node", func() error {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		ds, err := c.Client.AppsV1().DaemonSets(AgentNamespace).Get(ctx, AgentDaemonSet, metav1.GetOptions{})
		if err != nil {
			return err
		}
		s := ds.Status
		if s.ObservedGeneration < ds.Generation || s.DesiredNumberScheduled != int32(len(c.Nodes)) ||
			s.UpdatedNumberScheduled != s.DesiredNumberScheduled || s.NumberReady != s.DesiredNumberScheduled || s.NumberUnavailable != 0 {
			return fmt.Errorf("generation %d observed %d: desired %d updated %d ready %d unavailable %d",
				ds.Generation, s.ObservedGeneration, s.DesiredNumberScheduled, s.UpdatedNumberScheduled, s.NumberReady, s.NumberUnavailable)
		}
		return nil
	}, c.nodeProcs()...)
}

// AgentPod returns the name of the agent pod on node.
func (d *Deployment) AgentPod(ctx context.Context, node string) (string, error) {
	pods, err := d.c.Client.CoreV1().Pods(AgentNamespace).List(ctx, metav1.ListOptions{LabelSelector: AgentLabel, FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		return "", err
	}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && p.Status.Phase == "Running" {
			return p.Name, nil
		}
	}
	return "", fmt.Errorf("no running nfqpolicy pod on %s", node)
}

// Delete removes what Deploy applied (kubectl delete -k) and waits for
// the agents to be gone.
func (d *Deployment) Delete(ctx context.Context) error {
	_, err := d.c.Kubectl(ctx, "delete", "-k", d.overlay, "--wait=true", "--timeout=90s")
	if err != nil {
		return err
	}
	return waitFor(90*time.Second, "nfqpolicy pods gone", func() error {
		pods, err := d.c.Client.CoreV1().Pods(AgentNamespace).List(ctx, metav1.ListOptions{LabelSelector: AgentLabel})
		if err != nil {
			return err
		}
		if len(pods.Items) > 0 {
			return fmt.Errorf("%d agent pods left", len(pods.Items))
		}
		return nil
	})
}

func (c *Cluster) nodeProcs() []*proc {
	var out []*proc
	for _, n := range c.Nodes {
		for _, p := range []*proc{n.kubelet, n.containerd} {
			if p != nil {
				out = append(out, p)
			}
		}
	}
	return out
}

// kustomizedImage returns the image name deploy/'s kustomization gives the
// agent (the overlay's images entry must match the base's output).
func kustomizedImage(deployDir string) (string, error) {
	data, err := os.ReadFile(filepath.Join(deployDir, "kustomization.yaml"))
	if err != nil {
		return "", err
	}
	var k struct {
		Images []struct {
			Name    string `json:"name"`
			NewName string `json:"newName"`
		} `json:"images"`
	}
	if err := yaml.Unmarshal(data, &k); err != nil {
		return "", fmt.Errorf("%s/kustomization.yaml: %w", deployDir, err)
	}
	for _, im := range k.Images {
		if im.Name == "nfqpolicy" {
			if im.NewName != "" {
				return im.NewName, nil
			}
			return im.Name, nil
		}
	}
	return "", errors.New("deploy/kustomization.yaml has no images entry for nfqpolicy")
}

// splitImage splits "registry:5000/a/b:tag" into name and tag.
func splitImage(ref string) (name, tag string, ok bool) {
	i := strings.LastIndexByte(ref, ':')
	if i < 0 || strings.Contains(ref[i:], "/") {
		return "", "", false
	}
	return ref[:i], ref[i+1:], ref[:i] != "" && ref[i+1:] != ""
}
