package realcluster

import (
	"fmt"
	"net/netip"
)

// containerdConfig is one node's containerd: its own root, state, sockets
// and runc root, so two containerds share nothing but the binaries.
//
// restrict_oom_score_adj: this machine's root lacks CAP_SYS_RESOURCE, so
// runc cannot lower a container's oom_score_adj below containerd's and every
// sandbox would fail ("can't get final child's PID from pipe: EOF").
// The hugetlb options: the v1 hierarchy here has no hugetlb controller.
// netns_mounts_under_state_dir keeps pod namespaces out of /run/netns, so
// everything the node mounts lies under its own directory.
func containerdConfig(root, state, sock, runcRoot, runc, cniBin, cniConf string) string {
	return fmt.Sprintf(`version = 3
root = %q
state = %q
disabled_plugins = [
  "io.containerd.nri.v1.nri",
  "io.containerd.internal.v1.tracing",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.snapshotter.v1.erofs",
]

[grpc]
  address = %q

[ttrpc]
  address = %q

[debug]
  level = "warn"

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = "overlayfs"
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = %q

  [plugins.'io.containerd.cri.v1.runtime']
    restrict_oom_score_adj = true
    tolerate_missing_hugetlb_controller = true
    disable_hugetlb_controller = true
    netns_mounts_under_state_dir = true
    enable_cdi = false
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = %q
          Root = %q
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = [%q]
      conf_dir = %q
      max_conf_num = 1

  [plugins.'io.containerd.grpc.v1.cri']
    disable_tcp_service = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
`, root, state, sock, sock+".ttrpc", PauseImage, runc, runcRoot, cniBin, cniConf)
}

// cniConfig wires pods with ptp (a veth per pod, host routes, no bridge),
// addresses from the node's podCIDR (host-local) and hostPorts (portmap).
// No masquerade: a pod's address must reach the other node unchanged, or
// policies could not see who sent a packet.
func cniConfig(network string, podCIDR netip.Prefix, ipamDir string) string {
	return fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": %q,
  "plugins": [
    {
      "type": "ptp",
      "ipMasq": false,
      "mtu": 1500,
      "ipam": {
        "type": "host-local",
        "dataDir": %q,
        "ranges": [[{"subnet": %q}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`, network, ipamDir, podCIDR.String())
}

// kubeletConfig: cgroup v1 hybrid here (failCgroupV1: false, kubelet >= 1.35
// refuses it otherwise), cgroupfs driver under the node's own cgroupRoot,
// no swap check, x509 + webhook authentication and webhook authorization
// so that the API server can exec and read logs, generous eviction
// thresholds (the machine is shared), and oomScoreAdj 0 because lowering
// it needs CAP_SYS_RESOURCE.
func kubeletConfig(nodeIP netip.Addr, caFile, certFile, keyFile, cgroupRoot, runtimeSock, podLogs string) string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: %s
authorization:
  mode: Webhook
tlsCertFile: %s
tlsPrivateKeyFile: %s
rotateCertificates: false
serverTLSBootstrap: false
cgroupDriver: cgroupfs
cgroupRoot: %s
cgroupsPerQOS: true
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://%s
imageServiceEndpoint: unix://%s
podLogsDir: %s
clusterDomain: cluster.local
oomScoreAdj: 0
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 50Mi
  nodefs.available: 1%%
  imagefs.available: 1%%
  nodefs.inodesFree: 1%%
maxPods: 60
nodeStatusUpdateFrequency: 5s
syncFrequency: 10s
shutdownGracePeriod: 0s
shutdownGracePeriodCriticalPods: 0s
`, nodeIP, caFile, certFile, keyFile, cgroupRoot, runtimeSock, runtimeSock, podLogs)
}

// kubeProxyConfig: iptables mode; the conntrack settings are zero so that
// kube-proxy leaves the machine-wide nf_conntrack_max and timeouts alone,
// and oomScoreAdj 0 as for kubelet.
func kubeProxyConfig(kubeconfig, node, clusterCIDR string) string {
	return fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %s
mode: iptables
hostnameOverride: %s
clusterCIDR: %s
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
oomScoreAdj: 0
iptables:
  localhostNodePorts: false
  syncPeriod: 30s
  minSyncPeriod: 0s
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
`, kubeconfig, node, clusterCIDR)
}
