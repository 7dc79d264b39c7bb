package realcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/nfqpolicy/nfqpolicy/internal/netns"
)

// Addresses. Every one of them lives inside the cluster's own namespaces;
// the root namespace gets none.
var (
	underlay = netip.MustParsePrefix("10.77.0.0/24")
	// ControlPlaneIP is the control plane's address; from its namespace
	// (Cluster.CP) clients reach nodes and pods as an outside host would.
	ControlPlaneIP = netip.MustParseAddr("10.77.0.2")
	clusterCIDR    = netip.MustParsePrefix("10.244.0.0/16")
	serviceCIDR    = netip.MustParsePrefix("10.96.0.0/16")
	// ServiceIP is the "kubernetes" Service's ClusterIP (first of the range).
	serviceIP = netip.MustParseAddr("10.96.0.1")
)

// nodeNames are the cluster's nodes, in order.
var nodeNames = []string{"node-1", "node-2"}

func nodeIP(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 77, 0, byte(11 + i)}) }

// cgroupRootOf is node's kubelet cgroupRoot in cluster name.
func cgroupRootOf(name, node string) string { return "/" + name + "-" + node }

// Options change how Up builds a cluster.
type Options struct {
	// Binaries to run; zero means FindBinaries.
	Binaries *Binaries
	// Images are OCI or docker image tarballs imported into every node's
	// containerd before its kubelet starts (pause and agnhost at least).
	Images []string
	// APIAddr is the root-namespace address the API server forwarder
	// listens on; default 127.0.0.1 on a free port.
	APIAddr string
	// Logf receives progress lines; nil discards them.
	Logf func(format string, args ...any)
}

// Cluster is a running two-node cluster.
type Cluster struct {
	// Name is NamePrefix+"<pid>-<n>": namespaces, cgroups and Dir use it.
	Name string
	// Dir holds certificates, configs, data and every daemon's log.
	Dir string
	// Kubeconfig is an admin (system:masters) kubeconfig that reaches the
	// API server from the root namespace through the forwarder.
	Kubeconfig string
	// Config and Client reach the API server as that admin.
	Config *rest.Config
	Client kubernetes.Interface
	// Bins are the binaries the cluster runs (Kubectl for tests).
	Bins Binaries
	// Nodes are node-1 and node-2.
	Nodes []*Node
	// CP is the control plane's network namespace (etcd, kube-apiserver,
	// controller-manager, scheduler); from there nodes and pods are
	// reachable as from outside the cluster.
	CP *netns.NS

	logf   func(string, ...any)
	ul     *netns.NS
	fwd    *forwarder
	cpDir  string
	ca     *ca
	env    []string
	etcd   *proc
	apis   *proc
	cm     *proc
	sched  *proc
	closed atomic.Bool
}

// Node is one node: its network namespace holds kubelet, containerd and
// kube-proxy, and the host side of its pods' veths.
type Node struct {
	Name    string
	IP      netip.Addr
	NS      *netns.NS
	PodCIDR netip.Prefix
	// Dir holds the node's containerd, kubelet and CNI state.
	Dir string
	// ContainerdSock is the node's containerd address.
	ContainerdSock string

	cgroupRoot string
	containerd *proc
	kubelet    *proc
	kubeProxy  *proc
}

var seq atomic.Int32

// Up builds and starts a cluster: namespaces, certificates, etcd,
// kube-apiserver, controller-manager, scheduler, and per node containerd,
// kubelet, CNI and kube-proxy; it returns once both nodes are Ready. On
// failure everything it made is removed.
func Up(ctx context.Context, o Options) (c *Cluster, err error) {
	start := time.Now()
	logf := o.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	var bins Binaries
	if o.Binaries != nil {
		bins = *o.Binaries
	} else if bins, err = FindBinaries(); err != nil {
		return nil, err
	}
	if swept, err := Sweep(); err != nil {
		logf("sweep of dead clusters: %v", err)
	} else if len(swept) > 0 {
		logf("swept leftovers of dead clusters: %v", swept)
	}
	name := fmt.Sprintf("%s%d-%d", NamePrefix, os.Getpid(), seq.Add(1))
	base := BaseDir()
	c = &Cluster{Name: name, Dir: filepath.Join(base, name), Bins: bins, logf: logf}
	// Leftovers of a dead process whose pid we now carry.
	if err := cleanupNamed(name, c.Dir); err != nil {
		return nil, fmt.Errorf("clearing a stale %s: %w", name, err)
	}
	defer func() {
		if err != nil {
			if derr := c.Down(); derr != nil {
				err = errors.Join(err, fmt.Errorf("teardown after failed start: %w", derr))
			}
			c = nil
		}
	}()
	unlock, err := lockBase(base)
	if err != nil {
		return c, err
	}
	err = os.MkdirAll(c.Dir, 0o755)
	unlock()
	if err != nil {
		return c, err
	}
	path := strings.Join([]string{filepath.Dir(bins.Shim), filepath.Dir(bins.Containerd), filepath.Dir(bins.Runc), "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"}, ":")
	c.env = append(filteredEnv("PATH", "KUBECONFIG"), "PATH="+path)

	if err := c.network(ctx); err != nil {
		return c, err
	}
	if err := c.certificates(); err != nil {
		return c, err
	}
	logf("namespaces and certificates ready (%v)", time.Since(start).Round(time.Millisecond))

	// The control plane and the nodes' containerd (with image imports)
	// come up in parallel; kubelets wait for both.
	var wg sync.WaitGroup
	nodeErrs := make([]error, len(c.Nodes))
	for i, n := range c.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nodeErrs[i] = c.startContainerd(ctx, n, o.Images)
		}()
	}
	cpErr := c.startControlPlane(ctx, o.APIAddr)
	wg.Wait()
	if err := errors.Join(append(nodeErrs, cpErr)...); err != nil {
		return c, err
	}
	logf("control plane and containerd ready (%v)", time.Since(start).Round(time.Millisecond))
	if err := saveSysctls(base); err != nil {
		return c, err
	}
	for _, n := range c.Nodes {
		if err := c.startKubelet(n); err != nil {
			return c, err
		}
	}
	for _, n := range c.Nodes {
		if err := c.joinNode(ctx, n); err != nil {
			return c, err
		}
	}
	if err := c.routes(ctx); err != nil {
		return c, err
	}
	for _, n := range c.Nodes {
		if err := c.waitNodeReady(ctx, n); err != nil {
			return c, err
		}
	}
	logf("cluster %s up: %d nodes Ready (%v)", name, len(c.Nodes), time.Since(start).Round(time.Millisecond))
	return c, nil
}

// filteredEnv is the environment without the named variables.
func filteredEnv(drop ...string) []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		keep := true
		for _, d := range drop {
			if k == d {
				keep = false
			}
		}
		if keep {
			out = append(out, kv)
		}
	}
	return out
}

// network makes the underlay namespace with its bridge and one namespace
// per member (control plane, nodes), each linked to the bridge by a veth
// created directly between the two namespaces.
func (c *Cluster) network(ctx context.Context) error {
	var err error
	if c.ul, err = netns.Create(ctx, c.Name+"-ul", netns.Replace()); err != nil {
		return err
	}
	if c.CP, err = netns.Create(ctx, c.Name+"-cp", netns.Replace()); err != nil {
		return err
	}
	members := []*netns.NS{c.CP}
	addrs := []netip.Addr{ControlPlaneIP}
	for i, name := range nodeNames {
		ns, err := netns.Create(ctx, c.Name+"-n"+strconv.Itoa(i+1), netns.Replace())
		if err != nil {
			return err
		}
		n := &Node{Name: name, IP: nodeIP(i), NS: ns, Dir: filepath.Join(c.Dir, name), cgroupRoot: cgroupRootOf(c.Name, name)}
		n.ContainerdSock = filepath.Join(n.Dir, "containerd.sock")
		c.Nodes = append(c.Nodes, n)
		members = append(members, ns)
		addrs = append(addrs, n.IP)
	}
	ul := []string{"link set lo up", "link add br0 type bridge", "link set br0 up"}
	for i, m := range members {
		port := fmt.Sprintf("p%d", i)
		ul = append(ul,
			fmt.Sprintf("link add %s type veth peer name eth0 netns %s", port, m.Name),
			fmt.Sprintf("link set %s master br0", port),
			fmt.Sprintf("link set %s up", port))
	}
	if err := c.ul.IPBatch(ctx, ul); err != nil {
		return err
	}
	for i, m := range members {
		lines := []string{
			"link set lo up",
			fmt.Sprintf("addr add %s/%d dev eth0", addrs[i], underlay.Bits()),
			"link set eth0 up",
		}
		if m != c.CP {
			// Like any host, a node needs a route for Service
			// addresses: a local connection to a ClusterIP is routed
			// before kube-proxy's OUTPUT rule DNATs it.
			lines = append(lines, "route add default via "+ControlPlaneIP.String())
		}
		if err := m.IPBatch(ctx, lines); err != nil {
			return err
		}
		if err := m.Sysctl("net.ipv4.ip_forward=1"); err != nil {
			return err
		}
	}
	return nil
}

// certificates writes the CA, every component's certificate and the
// kubeconfigs (the in-cluster ones name the API server by its underlay
// address; the admin one by the forwarder, written once it listens).
func (c *Cluster) certificates() error {
	var err error
	if c.ca, err = newCA(); err != nil {
		return err
	}
	c.cpDir = filepath.Join(c.Dir, "control-plane")
	if err := os.MkdirAll(c.cpDir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(c.Dir, "ca.crt"), c.ca.certPEM, 0o644); err != nil {
		return err
	}
	issue := func(dir, file string, s certSpec) (keyPair, error) {
		p, err := c.ca.issue(s)
		if err != nil {
			return p, err
		}
		_, _, err = p.write(dir, file)
		return p, err
	}
	if _, err := issue(c.cpDir, "apiserver", certSpec{
		cn:     "kube-apiserver",
		ips:    []net.IP{ControlPlaneIP.AsSlice(), serviceIP.AsSlice(), net.IPv4(127, 0, 0, 1)},
		dns:    []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost"},
		server: true,
	}); err != nil {
		return err
	}
	if _, err := issue(c.cpDir, "apiserver-kubelet-client", certSpec{cn: "kube-apiserver-kubelet-client", orgs: []string{"system:masters"}, client: true}); err != nil {
		return err
	}
	saKey, err := serviceAccountKey()
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(c.cpDir, "sa.key"), saKey, 0o600); err != nil {
		return err
	}
	inCluster := "https://" + ControlPlaneIP.String() + ":6443"
	for _, k := range []struct{ file, cn string }{
		{"controller-manager", "system:kube-controller-manager"},
		{"scheduler", "system:kube-scheduler"},
	} {
		p, err := c.ca.issue(certSpec{cn: k.cn, client: true})
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(c.cpDir, k.file+".kubeconfig"), kubeconfig(inCluster, c.ca.certPEM, p), 0o600); err != nil {
			return err
		}
	}
	for _, n := range c.Nodes {
		if err := os.MkdirAll(n.Dir, 0o755); err != nil {
			return err
		}
		if _, err := issue(n.Dir, "kubelet-serving", certSpec{cn: n.Name, ips: []net.IP{n.IP.AsSlice()}, dns: []string{n.Name}, server: true}); err != nil {
			return err
		}
		p, err := c.ca.issue(certSpec{cn: "system:node:" + n.Name, orgs: []string{"system:nodes"}, client: true})
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(n.Dir, "kubelet.kubeconfig"), kubeconfig(inCluster, c.ca.certPEM, p), 0o600); err != nil {
			return err
		}
		p, err = c.ca.issue(certSpec{cn: "system:kube-proxy", client: true})
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(n.Dir, "kube-proxy.kubeconfig"), kubeconfig(inCluster, c.ca.certPEM, p), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// startControlPlane starts etcd and kube-apiserver in the control-plane
// namespace, the root-namespace forwarder, then controller-manager and
// scheduler, and waits until the API server is ready.
func (c *Cluster) startControlPlane(ctx context.Context, apiAddr string) error {
	d := c.cpDir
	ns := c.CP.Name
	var err error
	c.etcd, err = startIn(ns, "etcd", c.Bins.Etcd, []string{
		"--name=cp",
		"--data-dir=" + filepath.Join(d, "etcd"),
		"--listen-client-urls=http://127.0.0.1:2379",
		"--advertise-client-urls=http://127.0.0.1:2379",
		"--listen-peer-urls=http://127.0.0.1:2380",
		"--initial-advertise-peer-urls=http://127.0.0.1:2380",
		"--initial-cluster=cp=http://127.0.0.1:2380",
		"--log-level=warn",
		"--logger=zap",
		"--unsafe-no-fsync",
	}, c.env, filepath.Join(d, "etcd.log"))
	if err != nil {
		return err
	}
	cp := &http.Client{Timeout: time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return dialIn(ctx, c.CP, network, addr)
	}}}
	if err := waitFor(30*time.Second, "etcd", func() error {
		resp, err := cp.Get("http://127.0.0.1:2379/health")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("etcd /health: %s", resp.Status)
		}
		return nil
	}, c.etcd); err != nil {
		return err
	}
	c.apis, err = startIn(ns, "kube-apiserver", c.Bins.APIServer, []string{
		"--etcd-servers=http://127.0.0.1:2379",
		"--bind-address=0.0.0.0",
		"--advertise-address=" + ControlPlaneIP.String(),
		"--secure-port=6443",
		"--tls-cert-file=" + filepath.Join(d, "apiserver.crt"),
		"--tls-private-key-file=" + filepath.Join(d, "apiserver.key"),
		"--client-ca-file=" + filepath.Join(c.Dir, "ca.crt"),
		"--kubelet-client-certificate=" + filepath.Join(d, "apiserver-kubelet-client.crt"),
		"--kubelet-client-key=" + filepath.Join(d, "apiserver-kubelet-client.key"),
		"--kubelet-certificate-authority=" + filepath.Join(c.Dir, "ca.crt"),
		"--kubelet-preferred-address-types=InternalIP",
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--allow-privileged=true",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + filepath.Join(d, "sa.key"),
		"--service-account-signing-key-file=" + filepath.Join(d, "sa.key"),
		"--service-cluster-ip-range=" + serviceCIDR.String(),
		"--storage-media-type=application/vnd.kubernetes.protobuf",
		"--profiling=false",
		"--v=0",
	}, c.env, filepath.Join(d, "kube-apiserver.log"))
	if err != nil {
		return err
	}
	if apiAddr == "" {
		apiAddr = "127.0.0.1:0"
	}
	if c.fwd, err = newForwarder(apiAddr, c.CP, net.JoinHostPort(ControlPlaneIP.String(), "6443")); err != nil {
		return err
	}
	admin, err := c.ca.issue(certSpec{cn: "admin", orgs: []string{"system:masters"}, client: true})
	if err != nil {
		return err
	}
	c.Kubeconfig = filepath.Join(c.Dir, "admin.kubeconfig")
	if err := os.WriteFile(c.Kubeconfig, kubeconfig("https://"+c.fwd.Addr(), c.ca.certPEM, admin), 0o600); err != nil {
		return err
	}
	if c.Config, err = clientcmd.BuildConfigFromFlags("", c.Kubeconfig); err != nil {
		return fmt.Errorf("admin kubeconfig: %w", err)
	}
	c.Config.QPS, c.Config.Burst, c.Config.Timeout = 100, 200, 30*time.Second
	client, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		return err
	}
	c.Client = client
	if err := waitFor(90*time.Second, "kube-apiserver /readyz", func() error {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		body, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err != nil {
			return fmt.Errorf("%w: %s", err, body)
		}
		return nil
	}, c.etcd, c.apis); err != nil {
		return err
	}
	c.cm, err = startIn(ns, "kube-controller-manager", c.Bins.ControllerManager, []string{
		"--kubeconfig=" + filepath.Join(d, "controller-manager.kubeconfig"),
		"--bind-address=127.0.0.1",
		"--leader-elect=false",
		"--allocate-node-cidrs=true",
		"--cluster-cidr=" + clusterCIDR.String(),
		"--node-cidr-mask-size=24",
		"--service-cluster-ip-range=" + serviceCIDR.String(),
		"--service-account-private-key-file=" + filepath.Join(d, "sa.key"),
		"--root-ca-file=" + filepath.Join(c.Dir, "ca.crt"),
		"--use-service-account-credentials=true",
		"--configure-cloud-routes=false",
		"--profiling=false",
		"--v=0",
	}, c.env, filepath.Join(d, "kube-controller-manager.log"))
	if err != nil {
		return err
	}
	c.sched, err = startIn(ns, "kube-scheduler", c.Bins.Scheduler, []string{
		"--kubeconfig=" + filepath.Join(d, "scheduler.kubeconfig"),
		"--bind-address=127.0.0.1",
		"--leader-elect=false",
		"--profiling=false",
		"--v=0",
	}, c.env, filepath.Join(d, "kube-scheduler.log"))
	return err
}

// startContainerd starts the node's containerd and imports the images.
func (c *Cluster) startContainerd(ctx context.Context, n *Node, images []string) error {
	for _, d := range []string{"containerd/root", "containerd/state", "runc", "cni/conf", "cni/ipam", "kubelet", "pod-logs"} {
		if err := os.MkdirAll(filepath.Join(n.Dir, d), 0o755); err != nil {
			return err
		}
	}
	conf := filepath.Join(n.Dir, "containerd.toml")
	if err := os.WriteFile(conf, []byte(containerdConfig(
		filepath.Join(n.Dir, "containerd/root"), filepath.Join(n.Dir, "containerd/state"),
		n.ContainerdSock, filepath.Join(n.Dir, "runc"), c.Bins.Runc,
		c.Bins.CNIDir, filepath.Join(n.Dir, "cni/conf"))), 0o644); err != nil {
		return err
	}
	var err error
	n.containerd, err = startIn(n.NS.Name, n.Name+" containerd", c.Bins.Containerd, []string{"--config", conf}, c.env, filepath.Join(n.Dir, "containerd.log"))
	if err != nil {
		return err
	}
	if err := waitFor(30*time.Second, n.Name+" containerd", func() error {
		_, err := c.ctr(ctx, n, "version")
		return err
	}, n.containerd); err != nil {
		return err
	}
	for _, img := range images {
		if out, err := c.ctr(ctx, n, "-n", "k8s.io", "images", "import", "--local", img); err != nil {
			return fmt.Errorf("%s: import %s: %w: %s", n.Name, img, err, out)
		}
	}
	return nil
}

// ctr runs ctr against the node's containerd.
func (c *Cluster) ctr(ctx context.Context, n *Node, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, c.Bins.Ctr, append([]string{"--address", n.ContainerdSock}, args...)...)
	cmd.Env = c.env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// ImportImage imports an image tarball into every node's containerd (the
// k8s.io namespace kubelet uses).
func (c *Cluster) ImportImage(ctx context.Context, tarball string) error {
	for _, n := range c.Nodes {
		if out, err := c.ctr(ctx, n, "-n", "k8s.io", "images", "import", "--local", tarball); err != nil {
			return fmt.Errorf("%s: import %s: %w: %s", n.Name, tarball, err, out)
		}
	}
	return nil
}

func (c *Cluster) startKubelet(n *Node) error {
	if err := makeCgroupRoot(n.cgroupRoot); err != nil {
		return err
	}
	conf := filepath.Join(n.Dir, "kubelet.yaml")
	if err := os.WriteFile(conf, []byte(kubeletConfig(n.IP, filepath.Join(c.Dir, "ca.crt"),
		filepath.Join(n.Dir, "kubelet-serving.crt"), filepath.Join(n.Dir, "kubelet-serving.key"),
		n.cgroupRoot, n.ContainerdSock, filepath.Join(n.Dir, "pod-logs"))), 0o644); err != nil {
		return err
	}
	var err error
	n.kubelet, err = startIn(n.NS.Name, n.Name+" kubelet", c.Bins.Kubelet, []string{
		"--config=" + conf,
		"--kubeconfig=" + filepath.Join(n.Dir, "kubelet.kubeconfig"),
		"--hostname-override=" + n.Name,
		"--node-ip=" + n.IP.String(),
		"--root-dir=" + filepath.Join(n.Dir, "kubelet"),
		"--v=0",
	}, c.env, filepath.Join(n.Dir, "kubelet.log"))
	return err
}

// joinNode waits for the node's Node object and its podCIDR, writes the
// node's CNI configuration and starts kube-proxy (which needs the Node).
func (c *Cluster) joinNode(ctx context.Context, n *Node) error {
	if err := waitFor(90*time.Second, n.Name+" registration and podCIDR", func() error {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		node, err := c.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if node.Spec.PodCIDR == "" {
			return errors.New("no podCIDR yet")
		}
		n.PodCIDR, err = netip.ParsePrefix(node.Spec.PodCIDR)
		return err
	}, n.kubelet, c.cm, n.containerd); err != nil {
		return err
	}
	cni := cniConfig(c.Name+"-"+n.Name, n.PodCIDR, filepath.Join(n.Dir, "cni/ipam"))
	if err := os.WriteFile(filepath.Join(n.Dir, "cni/conf/10-ptp.conflist"), []byte(cni), 0o644); err != nil {
		return err
	}
	conf := filepath.Join(n.Dir, "kube-proxy.yaml")
	if err := os.WriteFile(conf, []byte(kubeProxyConfig(filepath.Join(n.Dir, "kube-proxy.kubeconfig"), n.Name, clusterCIDR.String())), 0o644); err != nil {
		return err
	}
	var err error
	n.kubeProxy, err = startIn(n.NS.Name, n.Name+" kube-proxy", c.Bins.KubeProxy, []string{"--config=" + conf, "--v=0"}, c.env, filepath.Join(n.Dir, "kube-proxy.log"))
	return err
}

// routes sends each node's pod CIDR to that node from the other node and
// from the control plane.
func (c *Cluster) routes(ctx context.Context) error {
	for _, n := range c.Nodes {
		for _, from := range append([]*netns.NS{c.CP}, c.nodeNSExcept(n)...) {
			if err := from.IPBatch(ctx, []string{fmt.Sprintf("route replace %s via %s dev eth0", n.PodCIDR, n.IP)}); err != nil {
				return err
			}
		}
	}
	return nil
}

func (c *Cluster) nodeNSExcept(n *Node) []*netns.NS {
	var out []*netns.NS
	for _, m := range c.Nodes {
		if m != n {
			out = append(out, m.NS)
		}
	}
	return out
}

func (c *Cluster) waitNodeReady(ctx context.Context, n *Node) error {
	return waitFor(90*time.Second, n.Name+" Ready", func() error {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		node, err := c.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, cond := range node.Status.Conditions {
			if cond.Type == corev1.NodeReady {
				if cond.Status == corev1.ConditionTrue {
					return nil
				}
				return fmt.Errorf("%s: %s", cond.Reason, cond.Message)
			}
		}
		return errors.New("no Ready condition yet")
	}, n.kubelet, n.containerd, n.kubeProxy)
}

// APIAddr is the root-namespace address of the API server forwarder.
func (c *Cluster) APIAddr() string {
	if c.fwd == nil {
		return ""
	}
	return c.fwd.Addr()
}

// Down stops every daemon (kube-proxy and kubelet first, then the pods,
// containerd and the control plane) and removes everything the cluster
// made. It is safe to call twice.
func (c *Cluster) Down() error {
	if c == nil || c.closed.Swap(true) {
		return nil
	}
	for _, n := range c.Nodes {
		n.kubeProxy.stop(5 * time.Second)
		n.kubelet.stop(5 * time.Second)
	}
	var errs []error
	for _, n := range c.Nodes {
		if err := killCgroupTree(n.cgroupRoot); err != nil {
			errs = append(errs, err)
		}
	}
	for _, n := range c.Nodes {
		n.containerd.stop(5 * time.Second)
	}
	for _, p := range []*proc{c.sched, c.cm, c.apis, c.etcd} {
		p.stop(10 * time.Second)
	}
	if c.fwd != nil {
		errs = append(errs, c.fwd.Close())
	}
	for _, ns := range append([]*netns.NS{c.CP, c.ul}, nodesNS(c.Nodes)...) {
		if ns != nil {
			ns.Close()
		}
	}
	errs = append(errs, cleanupNamed(c.Name, c.Dir))
	return errors.Join(errs...)
}

func nodesNS(nodes []*Node) []*netns.NS {
	var out []*netns.NS
	for _, n := range nodes {
		out = append(out, n.NS)
	}
	return out
}

// RSS sums the resident memory of every process of the cluster: the
// daemons in its namespaces, the shims, and every container in the nodes'
// cgroup trees (the harness process itself is not counted).
func (c *Cluster) RSS() (bytes int64, processes int) {
	pids := map[int]bool{}
	nss, _ := namespacesOf(c.Name)
	for _, ns := range nss {
		for _, p := range pidsIn(ns) {
			pids[p] = true
		}
	}
	for _, n := range c.Nodes {
		for _, p := range cgroupPids(n.cgroupRoot) {
			pids[p] = true
		}
	}
	delete(pids, os.Getpid())
	for p := range pids {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
				bytes += kb << 10
				processes++
			}
		}
	}
	return bytes, processes
}
