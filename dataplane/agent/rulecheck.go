package agent

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/nfqpolicy/nfqpolicy/dataplane"
)

// ruleChecks counts what checkRules found.
type ruleChecks struct {
	checks, errors, restored atomic.Uint64
	lastRestoreMS            atomic.Int64
	// The INVALID drop total and counter resets as last logged (only the
	// agent's loop touches them).
	invalidLogged, resetsLogged uint64
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
	a.logInvalidDrops()
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

// logInvalidDrops logs the packets NFQPOLICY-INVALID dropped since the
// last check: packets to or from local pods that conntrack marks INVALID
// (malformed headers, bad checksums or flags, TCP segments outside the
// window, ICMP errors about no known connection). They are never queued,
// so no verdict, flow-log record or capture covers them; this line and
// nfqpolicy_invalid_dropped_total do.
func (a *Agent) logInvalidDrops() {
	total, resets := a.tables.InvalidDropped()
	c := &a.checks
	if total == c.invalidLogged && resets == c.resetsLogged {
		return
	}
	e := a.log.Warn().Uint64("dropped", total-c.invalidLogged).Uint64("invalid_dropped_total", total)
	if resets != c.resetsLogged {
		e = e.Uint64("counter_resets", resets-c.resetsLogged).
			Str("note", "the drop counter was reset (iptables -Z or -F, a firewall reload): drops since the previous check before the reset are not counted")
	}
	e.Msg("dropped packets to or from local pods that conntrack marks INVALID (malformed, or outside any known connection)")
	c.invalidLogged, c.resetsLogged = total, resets
}

// queueDrops remembers the kernel's drop counters of our queues, so that
// each check logs what the kernel dropped since the previous one.
type queueDrops map[uint16][2]uint32

// logQueueDrops logs the packets the kernel dropped from our queues
// since the last call: the queue was full (new flows arrived faster than
// the agent decides them) or the agent's socket buffer was. The metrics
// export the totals; the log says when it happened. Those packets are
// dropped, not accepted, unless the agent runs --fail-open.
func (a *Agent) logQueueDrops() {
	stats, err := dataplane.ReadQueueStats()
	if err != nil {
		return // Status reports it
	}
	if a.drops == nil {
		a.drops = queueDrops{}
	}
	for _, s := range stats {
		if s.Queue < a.cfg.Rules.QueueBase || s.Queue >= a.cfg.Rules.QueueBase+a.cfg.Rules.Queues {
			continue
		}
		was, seen := a.drops[s.Queue]
		a.drops[s.Queue] = [2]uint32{s.Dropped, s.UserDropped}
		if !seen {
			was = [2]uint32{}
		}
		full, nobufs := s.Dropped-was[0], s.UserDropped-was[1]
		if full == 0 && nobufs == 0 {
			continue
		}
		verdict := "dropped"
		if a.cfg.Rules.FailOpen {
			verdict = "accepted unpoliced (fail-open)"
		}
		a.log.Warn().Uint16("queue", s.Queue).Uint32("queue_full", full).Uint32("socket_buffer_full", nobufs).
			Uint32("queue_dropped_total", s.Dropped).Uint32("user_dropped_total", s.UserDropped).
			Msg("the kernel could not queue new flows' packets to the agent; they were " + verdict)
	}
}
