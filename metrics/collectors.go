package metrics

import (
	"fmt"
	"os"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nfqpolicy/nfqpolicy/dataplane"
	"github.com/nfqpolicy/nfqpolicy/filter"
)

// queueCollector reads the kernel's per-queue statistics at scrape time:
// they are the kernel's own counters, so mirroring them would only add a
// second, staler copy. A read failure (no queue module, no permission)
// sets nfqpolicy_queue_stats_up to 0 rather than failing the scrape.
type queueCollector struct {
	path                                   string
	up, waiting, dropped, userDropped, seq *prometheus.Desc
}

func newQueueCollector(path string) *queueCollector {
	q := []string{"queue"}
	return &queueCollector{
		path:        path,
		up:          prometheus.NewDesc(namespace+"_queue_stats_up", "Whether the kernel's nfnetlink_queue statistics could be read (1) or not (0).", nil, nil),
		waiting:     prometheus.NewDesc(namespace+"_queue_waiting", "Packets waiting in the kernel queue for a verdict.", q, nil),
		dropped:     prometheus.NewDesc(namespace+"_queue_dropped_total", "Packets the kernel dropped because the queue was full.", q, nil),
		userDropped: prometheus.NewDesc(namespace+"_queue_user_dropped_total", "Packets the kernel dropped because the agent's netlink socket buffer was full.", q, nil),
		seq:         prometheus.NewDesc(namespace+"_queue_packets_total", "Packets the queue has carried (the kernel's id sequence; wraps at 2^32).", q, nil),
	}
}

func (c *queueCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.up, c.waiting, c.dropped, c.userDropped, c.seq} {
		ch <- d
	}
}

func (c *queueCollector) Collect(ch chan<- prometheus.Metric) {
	stats, err := readQueueStats(c.path)
	if err != nil {
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 1)
	for _, s := range stats {
		q := strconv.Itoa(int(s.Queue))
		ch <- prometheus.MustNewConstMetric(c.waiting, prometheus.GaugeValue, float64(s.Waiting), q)
		ch <- prometheus.MustNewConstMetric(c.dropped, prometheus.CounterValue, float64(s.Dropped), q)
		ch <- prometheus.MustNewConstMetric(c.userDropped, prometheus.CounterValue, float64(s.UserDropped), q)
		ch <- prometheus.MustNewConstMetric(c.seq, prometheus.CounterValue, float64(s.IDSequence), q)
	}
}

// readQueueStats uses the dataplane's parser of the same file, so the
// agent's /debug/counters and the metrics cannot read it differently.
func readQueueStats(path string) ([]dataplane.QueueStats, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("queue statistics: %w", err)
	}
	defer f.Close()
	return dataplane.ParseQueueStats(f)
}

// totalsCollector exports another component's totals as one counter with
// a result label.
type totalsCollector struct {
	desc    *prometheus.Desc
	limited bool
	get     func() Totals
}

func newTotalsCollector(name, help string, get func() Totals) *totalsCollector {
	return &totalsCollector{
		desc:    prometheus.NewDesc(namespace+"_"+name, help, []string{"result"}, nil),
		limited: name == "flowlog_records_total",
		get:     get,
	}
}

func (c *totalsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *totalsCollector) Collect(ch chan<- prometheus.Metric) {
	t := c.get()
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(t.Written), "written")
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(t.Lost), "lost")
	if c.limited {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(t.RateLimited), "rate_limited")
	}
}

// domainNamesCollector exports, per ClusterNetworkPolicy, the number of
// rules with domainNames peers, which nfqpolicy does not enforce (they
// match no traffic): a dashboard or alert can tell that a policy is not
// doing what its author meant.
type domainNamesCollector struct {
	desc *prometheus.Desc
	get  func() *filter.Ruleset
}

func newDomainNamesCollector(get func() *filter.Ruleset) *domainNamesCollector {
	return &domainNamesCollector{
		desc: prometheus.NewDesc(namespace+"_cluster_policy_domain_name_rules",
			"ClusterNetworkPolicy rules with domainNames peers, by policy, tier and action. nfqpolicy does not enforce domainNames: those peers match no traffic.",
			[]string{"policy", "tier", "action", "staged"}, nil),
		get: get,
	}
}

func (c *domainNamesCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *domainNamesCollector) Collect(ch chan<- prometheus.Metric) {
	rs := c.get()
	if rs == nil {
		return
	}
	type key struct {
		policy, tier, action string
		staged               bool
	}
	counts := map[key]int{}
	var order []key
	for _, r := range rs.DomainNameRules() {
		k := key{r.Policy, r.Tier, r.Action, r.Staged}
		if counts[k] == 0 {
			order = append(order, k)
		}
		counts[k]++
	}
	for _, k := range order {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(counts[k]), k.policy, k.tier, k.action, strconv.FormatBool(k.staged))
	}
}
