// Package realcluster runs a real two-node Kubernetes cluster on this
// machine, isolated in network namespaces, for nfqpolicy to be deployed on
// as users deploy it and judged there.
//
// Layout (every address lives inside the cluster's own namespaces; the root
// namespace gets no address, route or rule):
//
//	NAME-ul  the underlay: a bridge joining the three below (10.77.0.0/24)
//	NAME-cp  etcd, kube-apiserver (10.77.0.2:6443), controller-manager
//	         (node CIDRs from 10.244.0.0/16), scheduler
//	NAME-n1  node-1 (10.77.0.11): containerd, kubelet, kube-proxy (iptables),
//	NAME-n2  node-2 (10.77.0.12)   CNI ptp + host-local + portmap, its pods
//
// Users and tests reach the API server through a forwarder listening on a
// root-namespace loopback port that dials into NAME-cp. Daemons run in a
// node's namespace through `nsenter --net` (never `ip netns exec`, whose
// private mount namespace would hide kubelet's volume mounts from
// containerd). Each node has its own containerd (root, state, sockets, runc
// root) and kubelet cgroupRoot (/NAME-node-N in every hierarchy).
//
// NAME is NamePrefix+"<pid>-<n>". Teardown (Cluster.Down), and Sweep for a
// run that died, remove every namespace, process, mount under the
// cluster's directory, cgroup tree, shim socket and kubelet log link, and
// restore the global sysctls kubelet sets once no cluster is left.
//
// The binaries come from tools/kubernetes/build.sh (cached outside the
// tree), etcd and runc from Debian.
package realcluster
