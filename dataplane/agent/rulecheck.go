package agent

import (
	"context"
	"sync/atomic"
	"time"
)

// ruleChecks counts what checkRules found.
type ruleChecks struct {
	checks, errors, restored atomic.Uint64
	lastRestoreMS            atomic.Int64
}

// checkRules looks for our jumps, chains and sets and restores them when
// something is missing. Until then new flows are not policed at all
// (nothing diverts them) or, after an ipset flush, the pods missing from a
// set are not: the full resync would take up to ResyncInterval to notice,
// so this cheap check (one iptables-save per family and one ipset list)
// runs every CheckInterval instead. Established flows are not affected by
// the restore: the connmark accept rule comes back with the chains.
func (a *Agent) checkRules(ctx context.Context) {
	eng := a.engine.Load()
	if eng == nil {
		return
	}
	rs := eng.Ruleset()
	a.checks.checks.Add(1)
	missing, err := a.tables.Check(ctx, a.cfg.Rules, rs.LocalPodAddrs(a.cfg.NodeName), rs.LocalPodCIDRs(a.cfg.NodeName))
	if err != nil {
		a.checks.errors.Add(1)
		a.log.Warn().Err(err).Msg("checking our rules and sets failed")
		return
	}
	if len(missing) == 0 {
		return
	}
	start := time.Now()
	a.log.Warn().Strs("missing", missing).Msg("rules or sets were removed by someone else (iptables -F, ipset flush, a firewall reload); restoring them")
	if err := a.sync(ctx, rs, true); err != nil {
		a.log.Error().Err(err).Msg("restoring rules and sets failed; retrying at the next check")
		return
	}
	took := time.Since(start)
	a.checks.restored.Add(1)
	a.checks.lastRestoreMS.Store(took.Milliseconds())
	a.log.Warn().Int64("took_ms", took.Milliseconds()).Msg("rules and sets restored")
}
