package admin

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
)

// clusterCollector turns one ClusterReader.Status per scrape into the
// handoff_cluster_* metrics.
type clusterCollector struct {
	cl  ClusterReader
	log *logrus.Entry

	up, pending, published, removed, applied, unpinned, refreshed, unknown *prometheus.Desc
	writes, txns, errors, revision, behind, nodes, lag                     *prometheus.Desc
}

func newClusterCollector(cl ClusterReader, log *logrus.Entry) *clusterCollector {
	d := prometheus.NewDesc
	return &clusterCollector{
		cl: cl, log: log,
		up:        d("handoff_cluster_etcd_up", "1 when etcd answered this host's last request, else 0 (pins and changes are then queued).", nil, nil),
		pending:   d("handoff_cluster_pending_writes", "Writes queued for etcd or in flight.", nil, nil),
		published: d("handoff_cluster_pins_published_total", "Pins this host wrote to etcd: new, moved and refreshed.", nil, nil),
		removed:   d("handoff_cluster_pins_removed_total", "Pin deletions this host wrote to etcd.", nil, nil),
		applied:   d("handoff_cluster_pins_applied_total", "Other hosts' pins applied to this host's data plane.", nil, nil),
		unpinned:  d("handoff_cluster_pins_unpinned_total", "Other hosts' pin removals applied here.", nil, nil),
		refreshed: d("handoff_cluster_pins_refreshed_total", "Pins written again because this host's kernel refreshed them (the client connects through this host).", nil, nil),
		unknown:   d("handoff_cluster_pins_unknown_total", "Other hosts' pins of a service or backend this host does not have.", nil, nil),
		writes:    d("handoff_cluster_etcd_writes_total", "Keys this host put or deleted in etcd.", nil, nil),
		txns:      d("handoff_cluster_etcd_txns_total", "etcd transactions this host committed for them.", nil, nil),
		errors:    d("handoff_cluster_etcd_errors_total", "etcd requests of this host that failed.", nil, nil),
		revision:  d("handoff_cluster_applied_revision", "The etcd revision this host has applied up to.", nil, nil),
		behind:    d("handoff_cluster_behind_revisions", "How many etcd revisions a host had not applied when it last reported.", []string{"node"}, nil),
		nodes:     d("handoff_cluster_nodes", "Hosts whose node key is alive in etcd.", nil, nil),
		lag:       d("handoff_cluster_apply_lag_seconds", "Time from another host making a pin to this host applying it (wall clocks).", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *clusterCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.up, c.pending, c.published, c.removed, c.applied, c.unpinned, c.refreshed, c.unknown, c.writes, c.txns, c.errors, c.revision, c.behind, c.nodes, c.lag} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *clusterCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), statusTimeout)
	defer cancel()
	st, err := c.cl.Status(ctx)
	if err != nil {
		c.log.WithError(err).Warn("metrics: reading the cluster's status")
		return
	}
	emit := func(d *prometheus.Desc, t prometheus.ValueType, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, t, v, labels...)
	}
	emit(c.up, prometheus.GaugeValue, bit(st.Etcd.Reachable))
	emit(c.pending, prometheus.GaugeValue, float64(st.Pending))
	emit(c.published, prometheus.CounterValue, float64(st.Published))
	emit(c.removed, prometheus.CounterValue, float64(st.Removed))
	emit(c.applied, prometheus.CounterValue, float64(st.Applied))
	emit(c.unpinned, prometheus.CounterValue, float64(st.Unpinned))
	emit(c.refreshed, prometheus.CounterValue, float64(st.Refreshed))
	emit(c.unknown, prometheus.CounterValue, float64(st.Unknown))
	emit(c.writes, prometheus.CounterValue, float64(st.Writes))
	emit(c.txns, prometheus.CounterValue, float64(st.Txns))
	emit(c.errors, prometheus.CounterValue, float64(st.Etcd.Errors))
	emit(c.revision, prometheus.GaugeValue, float64(st.AppliedRevision))
	emit(c.nodes, prometheus.GaugeValue, float64(len(st.Nodes)))
	for _, n := range st.Nodes {
		emit(c.behind, prometheus.GaugeValue, float64(n.Behind), n.Node)
	}
	buckets := make(map[float64]uint64, len(st.Lag.Buckets))
	for i, b := range st.Lag.Buckets {
		buckets[b] = st.Lag.Counts[i]
	}
	ch <- prometheus.MustNewConstHistogram(c.lag, st.Lag.Count, st.Lag.Sum, buckets)
}
