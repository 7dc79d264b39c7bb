package k8swatch

import (
	"errors"
	"fmt"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// ErrNoKubeconfig is returned by RESTConfig when no configuration applies.
var ErrNoKubeconfig = errors.New("no kubeconfig: pass --kubeconfig or run in a pod")

// RESTConfig finds the API server the way an operator expects: an explicit
// kubeconfig path first, then the pod's service account (the DaemonSet case),
// then $KUBECONFIG or ~/.kube/config (running by hand on a node).
func RESTConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
		}
		return cfg, nil
	}
	cfg, err := rest.InClusterConfig()
	if err == nil {
		return cfg, nil
	}
	if !errors.Is(err, rest.ErrNotInCluster) {
		// In a pod but the service account files are unreadable: falling
		// back to a kubeconfig would hide a broken deployment.
		return nil, fmt.Errorf("in-cluster config: %w", err)
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	cfg, err = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		if clientcmd.IsEmptyConfig(err) {
			return nil, ErrNoKubeconfig
		}
		return nil, fmt.Errorf("kubeconfig from $KUBECONFIG or ~/.kube/config: %w", err)
	}
	return cfg, nil
}
