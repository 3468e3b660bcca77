package admin

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/handoff-lb/handoff/balancer"
)

// overloadDescs are the metrics of the host's own capacity: the
// connection tracking table's fill and the health checks not counted
// because this host could not open connections.
type overloadDescs struct {
	conntrackEntries, conntrackMax, inconclusive *prometheus.Desc
}

func newOverloadDescs() overloadDescs {
	d := prometheus.NewDesc
	return overloadDescs{
		conntrackEntries: d("handoff_conntrack_entries", "Entries of the connection tracking table of the data plane's namespace (kernel mode).", nil, nil),
		conntrackMax:     d("handoff_conntrack_max", "The connection tracking table's limit, nf_conntrack_max (kernel mode); from 95% full failed health checks are not counted against backends.", nil, nil),
		inconclusive:     d("handoff_health_checks_inconclusive_total", "Failed health checks and dial reports not counted against their backend because this host could not open connections (no descriptor, port or buffer; a full conntrack table).", nil, nil),
	}
}

func (o overloadDescs) list() []*prometheus.Desc {
	return []*prometheus.Desc{o.conntrackEntries, o.conntrackMax, o.inconclusive}
}

func (o overloadDescs) collect(st balancer.Status, emit func(*prometheus.Desc, prometheus.ValueType, float64, ...string)) {
	if c := st.Conntrack; c != nil {
		emit(o.conntrackEntries, prometheus.GaugeValue, float64(c.Entries))
		emit(o.conntrackMax, prometheus.GaugeValue, float64(c.Max))
	}
	emit(o.inconclusive, prometheus.CounterValue, float64(st.InconclusiveChecks))
}
