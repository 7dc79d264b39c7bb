// Package e2e runs reachability scenarios against the real kernel: it builds
// a cluster out of network namespaces (one per node with a bridge, one per
// pod with a veth into its node's bridge, an underlay bridge joining the
// nodes and a namespace holding every external address), starts one
// `nfqpolicy run` agent per node namespace, and sends every probe of a
// scenario as real traffic: a TCP connect, a UDP request that an echo server
// answers, or a crafted SCTP INIT that a raw socket at the destination must
// see.
//
// Everything lives in namespaces this package creates and deletes; nothing
// is added to the namespace the process starts in, and no packet leaves the
// namespaces. Names start with "nfqp-<pid>-" so that a later run can sweep
// what a killed run left behind.
package e2e
