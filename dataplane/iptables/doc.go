// Package iptables renders and installs the kernel state the node agent
// owns: the NFQPOLICY-* chains of the filter table (IPv4 and IPv6), the
// jumps to them from FORWARD and INPUT, and the ipsets the chains match:
// NFQPOLICY-LOCAL4/6 (hash:ip, the local pods' addresses) and
// NFQPOLICY-PODNET4/6 (hash:net, the local node's pod CIDRs, so that a pod
// the agent has not seen yet is diverted too).
//
// Everything is installed with iptables-restore --noflush (and ipset
// restore), so other people's rules are never flushed or reordered:
// installing flushes and refills only our own chains, inserts a jump only
// when it is absent, and cleanup deletes exactly the jumps to our chains,
// our chains and our sets.
package iptables
