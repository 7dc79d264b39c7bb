package iptables

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// Detection is what Detect found: the backend to use and why.
type Detection struct {
	Backend Backend
	// Kube counts the KUBE-* chains (kube-proxy's, kubelet's canaries) in
	// each backend, all tables, the families asked.
	Kube map[Backend]int
	// Ours counts our own chains in each backend.
	Ours map[Backend]int
	// Reason says which rule decided, for the agent's log.
	Reason string
}

// Detect picks the backend for Auto the way kube-proxy's iptables-wrapper
// does: the one that already holds the node's Kubernetes rules. Our rules
// must sit in the same rule set as kube-proxy's, or the two split silently
// between two sets of hooks (and a reader of one save never sees the
// other). The order:
//
//  1. the backend with more KUBE-* chains (kubelet writes its canary chains
//     at start, before any pod runs, kube-proxy its service chains);
//  2. with none anywhere, the backend already holding our chains (a restart,
//     or a cleanup after a run with an explicit backend);
//  3. otherwise nft, Debian's and the iptables-wrapper's default.
//
// A backend whose save fails (binary missing, kernel without nf_tables or
// ip_tables) is never picked; Detect fails only when both fail.
func Detect(ctx context.Context, r Runner, fams ...Family) (Detection, error) {
	if len(fams) == 0 {
		fams = AllFamilies()
	}
	d := Detection{Kube: map[Backend]int{}, Ours: map[Backend]int{}}
	var errs []error
	usable := map[Backend]bool{}
	for _, b := range []Backend{Legacy, NFT} {
		for _, f := range fams {
			out, err := r.Run(ctx, "", b.binary(f, "save"))
			if err != nil {
				errs = append(errs, err)
				continue
			}
			usable[b] = true
			kube, ours := countChains(out)
			d.Kube[b] += kube
			d.Ours[b] += ours
		}
	}
	switch {
	case !usable[Legacy] && !usable[NFT]:
		return d, fmt.Errorf("detecting the iptables backend: neither iptables-legacy-save nor iptables-nft-save works: %w", errors.Join(errs...))
	case !usable[NFT]:
		d.Backend, d.Reason = Legacy, "nft unusable"
	case !usable[Legacy]:
		d.Backend, d.Reason = NFT, "legacy unusable"
	case d.Kube[Legacy] > d.Kube[NFT]:
		d.Backend, d.Reason = Legacy, "the node's KUBE-* chains are in legacy"
	case d.Kube[NFT] > d.Kube[Legacy]:
		d.Backend, d.Reason = NFT, "the node's KUBE-* chains are in nft"
	case d.Ours[Legacy] > d.Ours[NFT]:
		d.Backend, d.Reason = Legacy, "no KUBE-* chains; ours are in legacy"
	case d.Ours[NFT] > d.Ours[Legacy]:
		d.Backend, d.Reason = NFT, "no KUBE-* chains; ours are in nft"
	default:
		d.Backend, d.Reason = NFT, "no KUBE-* chains anywhere; nft by default"
	}
	d.Reason = fmt.Sprintf("%s (KUBE-* chains: legacy %d, nft %d)", d.Reason, d.Kube[Legacy], d.Kube[NFT])
	return d, nil
}

// countChains counts the chain declarations (":NAME POLICY [p:b]") of an
// iptables-save dump that are Kubernetes' and ours.
func countChains(save string) (kube, ours int) {
	for line := range strings.Lines(save) {
		name, ok := strings.CutPrefix(line, ":")
		if !ok {
			continue
		}
		switch {
		case strings.HasPrefix(name, "KUBE-"):
			kube++
		case strings.HasPrefix(name, Prefix):
			ours++
		}
	}
	return kube, ours
}
