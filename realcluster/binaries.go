package realcluster

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// Version is the Kubernetes release the cluster runs.
const Version = "v1.37.2"

// Image references the cluster's nodes expect (what v1.37.2's kubelet pins
// as the sandbox and what its e2e suite runs).
const (
	PauseImage   = "registry.k8s.io/pause:3.10.2"
	AgnhostImage = "registry.k8s.io/e2e-test-images/agnhost:2.66.1"
)

// Binaries are the programs a cluster runs. Each is an absolute path;
// CNIDir holds the ptp, host-local, portmap and loopback plugins.
type Binaries struct {
	Etcd, APIServer, ControllerManager, Scheduler string
	Kubelet, KubeProxy, Kubectl                   string
	Containerd, Ctr, Shim, Runc                   string
	CNIDir                                        string
}

// CacheDir is where the Kubernetes binaries are built and cached:
// $NFQPOLICY_CACHE, else $XDG_CACHE_HOME/nfqpolicy, else ~/.cache/nfqpolicy.
func CacheDir() string {
	if d := os.Getenv("NFQPOLICY_CACHE"); d != "" {
		return d
	}
	base := os.Getenv("XDG_CACHE_HOME")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			home = "/root"
		}
		base = filepath.Join(home, ".cache")
	}
	return filepath.Join(base, "nfqpolicy")
}

// Directories tools/kubernetes/build.sh fills (see its header): the
// Kubernetes binaries, containerd with ctr and the runc shim, the CNI
// plugins, and the image tarballs.
func k8sDir() string {
	if d := os.Getenv("NFQPOLICY_K8S_BIN_DIR"); d != "" {
		return d
	}
	return filepath.Join(CacheDir(), "kubernetes-"+Version)
}

func containerdDir() string { return filepath.Join(CacheDir(), "containerd-"+ContainerdVersion) }

func cniDir() string {
	if d := os.Getenv("NFQPOLICY_CNI_DIR"); d != "" {
		return d
	}
	return filepath.Join(CacheDir(), "cni-plugins-"+CNIVersion)
}

// Versions of the node runtime pieces tools/kubernetes/build.sh builds.
const (
	ContainerdVersion = "v2.4.2"
	CNIVersion        = "v1.10.0"
)

// ImageTarballs returns the pause and agnhost image tarballs every node
// needs, or an error naming the missing one.
func ImageTarballs() ([]string, error) {
	dir := filepath.Join(CacheDir(), "images")
	var out []string
	var errs []error
	for _, f := range []string{"pause-3.10.2.tar", "agnhost-2.66.1-" + Version + ".tar"} {
		p := filepath.Join(dir, f)
		if _, err := os.Stat(p); err != nil {
			errs = append(errs, fmt.Errorf("image tarball %s (sh tools/kubernetes/build.sh pause-image agnhost-image): %w", p, err))
			continue
		}
		out = append(out, p)
	}
	return out, errors.Join(errs...)
}

// FindBinaries locates every binary, or returns an error naming each one
// that is missing and how to build it.
func FindBinaries() (Binaries, error) {
	var missing []error
	find := func(name string, candidates ...string) string {
		for _, c := range candidates {
			if c == "" {
				continue
			}
			if !filepath.IsAbs(c) {
				if p, err := exec.LookPath(c); err == nil {
					return p
				}
				continue
			}
			if st, err := os.Stat(c); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
				return c
			}
		}
		missing = append(missing, fmt.Errorf("%s (looked for %v)", name, candidates))
		return ""
	}
	k8s := func(name string) string {
		return find(name, os.Getenv("NFQPOLICY_"+envName(name)), filepath.Join(k8sDir(), name))
	}
	ctrd := func(name string) string {
		return find(name, os.Getenv("NFQPOLICY_"+envName(name)), filepath.Join(containerdDir(), name))
	}
	var b Binaries
	b.Etcd = find("etcd", os.Getenv("NFQPOLICY_ETCD"), "etcd")
	b.APIServer = find("kube-apiserver", os.Getenv("NFQPOLICY_KUBE_APISERVER"), filepath.Join(k8sDir(), "kube-apiserver"), filepath.Join(CacheDir(), "kube-apiserver-"+Version))
	b.ControllerManager = k8s("kube-controller-manager")
	b.Scheduler = k8s("kube-scheduler")
	b.Kubelet = k8s("kubelet")
	b.KubeProxy = k8s("kube-proxy")
	b.Kubectl = k8s("kubectl")
	b.Containerd = ctrd("containerd")
	b.Ctr = ctrd("ctr")
	b.Shim = ctrd("containerd-shim-runc-v2")
	b.Runc = find("runc", os.Getenv("NFQPOLICY_RUNC"), "/usr/sbin/runc", "/usr/bin/runc", "runc")
	b.CNIDir = cniDir()
	for _, p := range []string{"ptp", "host-local", "portmap", "loopback"} {
		find("CNI plugin "+p, filepath.Join(b.CNIDir, p))
	}
	for _, tool := range []string{"nsenter", "ip", "iptables", "conntrack"} {
		find(tool, tool)
	}
	if len(missing) > 0 {
		return b, fmt.Errorf("missing binaries (build them with `sh tools/kubernetes/build.sh`; Debian packages: etcd-server runc iptables conntrack iproute2): %w", errors.Join(missing...))
	}
	return b, nil
}

// envName turns kube-proxy into KUBE_PROXY for a per-binary override.
func envName(name string) string {
	out := []byte(name)
	for i, c := range out {
		switch {
		case c == '-':
			out[i] = '_'
		case c >= 'a' && c <= 'z':
			out[i] = c - 'a' + 'A'
		}
	}
	return string(out)
}
