// Package filter turns a cluster's NetworkPolicies into a Ruleset and decides
// flows against it.
//
// Compile resolves every selector and named port once, so that deciding a
// flow is a pair of address lookups and a walk over the few compiled rules
// of the two pods involved: no selector is evaluated and nothing is
// allocated per packet. The Engine puts a sharded LRU flow cache in front of
// the Ruleset and swaps Rulesets atomically when the cluster changes; the
// Decoder reads flows out of raw IPv4 and IPv6 packets with gopacket's
// DecodingLayerParser. The offline tools (test, matrix, explain) and the node
// agent use this same path, so what the tools report is what the agent does.
package filter
