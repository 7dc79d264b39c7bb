// Package conntrack re-decides established flows when the compiled policy
// changes (the agent's --established=recheck).
//
// An allowed flow carries the allow value in its connmark, and the kernel
// accepts every later packet of it on that mark alone: no policy change
// reaches such a flow on its own. After each swap the Rechecker dumps the
// conntrack entries that carry our mark, decides each against the new
// Ruleset and deletes the entries whose verdict flipped, so that the next
// packet of the flow is NEW again, is queued and gets the new verdict.
//
// It talks ctnetlink over a raw NETLINK_NETFILTER socket rather than through
// github.com/ti-mo/conntrack, whose Dump and DumpFilter collect the whole
// table into a []Flow before returning and whose Delete costs one netlink
// round trip per entry: DumpFilter of 100,000 entries allocated 245 MiB
// in 4.1 million objects here (a recheck allocates about 100 KiB), and
// per-entry deletes would add a round trip for each cut. Here the dump is parsed in place from one
// reused buffer, each entry is decided while its bytes are still in that
// buffer, and deletes go out in batches of many messages per sendmsg from
// a second goroutine and socket, so that deleting overlaps dumping. The
// sockets live in the network namespace the Rechecker was made in.
//
// Deleting relies on the next packet of a cut flow being NEW: true for UDP
// and ICMP, and for TCP with nf_conntrack_tcp_loose=1 (the default). With
// 0 it is INVALID instead, never queued, and only a rule dropping INVALID
// stops the connection (kube-proxy's iptables mode installs one in
// KUBE-FORWARD unless nf_conntrack_tcp_be_liberal is set); NewRechecker
// warns then. Measured in a namespace with tcp_loose=0 and no such rule:
// the connection was not cut.
package conntrack
