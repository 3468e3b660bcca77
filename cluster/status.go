package cluster

import (
	"context"
	"encoding/json"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Status is a point-in-time view of the cluster from this host: what
// `handoff cluster status` and GET /api/v1/cluster show.
type Status struct {
	Name      string     `json:"name"`
	Node      string     `json:"node"`
	Endpoints []string   `json:"endpoints"`
	Etcd      EtcdStatus `json:"etcd"`
	// AppliedRevision is the etcd revision this host has applied up to.
	AppliedRevision int64 `json:"applied_revision"`
	// Pending counts writes queued for etcd (all of them while etcd is
	// unreachable).
	Pending   int          `json:"pending"`
	Pins      int          `json:"pins"` // pins this host holds, as the cluster layer knows them
	Leases    int          `json:"leases"`
	Published uint64       `json:"pins_published"` // pin writes to etcd (new, moved, refreshed)
	Removed   uint64       `json:"pins_removed"`   // pin deletes written to etcd
	Applied   uint64       `json:"pins_applied"`   // other hosts' pins applied here
	Unpinned  uint64       `json:"pins_unpinned"`  // other hosts' removals applied here
	Refreshed uint64       `json:"pins_refreshed"` // pins written again because this host's kernel refreshed them
	Unknown   uint64       `json:"pins_unknown"`   // other hosts' pins of services or backends this host lacks
	Writes    uint64       `json:"etcd_writes"`    // keys written or deleted
	Txns      uint64       `json:"etcd_txns"`
	Lag       LagStatus    `json:"lag"`
	Nodes     []NodeStatus `json:"nodes"`
}

// EtcdStatus is this host's view of etcd.
type EtcdStatus struct {
	Reachable bool      `json:"reachable"`
	Since     time.Time `json:"since,omitzero"` // the last change of Reachable
	Error     string    `json:"error,omitempty"`
	Errors    uint64    `json:"errors"`   // failed requests
	Revision  int64     `json:"revision"` // the newest revision seen
}

// LagStatus summarizes how long other hosts' pins took to be applied here,
// from the moment their host made them (wall clocks).
type LagStatus struct {
	Count   uint64    `json:"count"`
	Sum     float64   `json:"sum_seconds"`
	P50     float64   `json:"p50_seconds"`
	P99     float64   `json:"p99_seconds"`
	Buckets []float64 `json:"-"` // upper bounds, for the metrics
	Counts  []uint64  `json:"-"` // cumulative counts per bucket
}

// NodeStatus is one host of the cluster as its node key says.
type NodeStatus struct {
	Node            string    `json:"node"`
	Version         string    `json:"version"`
	Self            bool      `json:"self"`
	Pins            int       `json:"pins"`
	Pending         int       `json:"pending"`
	AppliedRevision int64     `json:"applied_revision"`
	EtcdRevision    int64     `json:"etcd_revision"`
	Behind          int64     `json:"behind_revisions"` // etcd's revision minus the applied one, when it reported
	LagP99          float64   `json:"lag_p99_seconds"`
	Updated         time.Time `json:"updated"`
	Started         time.Time `json:"started"`
}

// Status returns this host's view of the cluster.
func (n *Node) Status(context.Context) (Status, error) {
	n.mu.Lock()
	pending, pins := n.pendingLocked(), len(n.local)
	n.mu.Unlock()
	st := Status{
		Name:            n.cfg.Name,
		Node:            n.cfg.Node,
		Endpoints:       slices.Clone(n.cfg.Etcd.Endpoints),
		Etcd:            n.health.status(),
		AppliedRevision: n.applied.Load(),
		Pending:         pending,
		Pins:            pins,
		Leases:          n.leases.count(),
		Published:       n.stats.published.Load(),
		Removed:         n.stats.removed.Load(),
		Applied:         n.stats.applied.Load(),
		Unpinned:        n.stats.unpinned.Load(),
		Refreshed:       n.stats.refreshed.Load(),
		Unknown:         n.stats.unknown.Load(),
		Writes:          n.stats.writes.Load(),
		Txns:            n.stats.txns.Load(),
		Lag:             n.stats.lag.status(),
	}
	st.Etcd.Revision = n.etcdRev.Load()
	if p := n.nodes.Load(); p != nil {
		st.Nodes = slices.Clone(*p)
	}
	found := false
	for i := range st.Nodes {
		if st.Nodes[i].Node == n.cfg.Node {
			st.Nodes[i] = n.selfStatus()
			found = true
		}
	}
	if !found {
		st.Nodes = append(st.Nodes, n.selfStatus())
		slices.SortFunc(st.Nodes, func(a, b NodeStatus) int { return strings.Compare(a.Node, b.Node) })
	}
	return st, nil
}

// pendingLocked counts the writes queued or in flight; mu is held.
func (n *Node) pendingLocked() int {
	return len(n.pending) + n.inflight
}

// selfStatus is what this host writes into its node key.
func (n *Node) selfStatus() NodeStatus {
	n.mu.Lock()
	pins, pending := len(n.local), n.pendingLocked()
	n.mu.Unlock()
	applied, rev := n.applied.Load(), n.etcdRev.Load()
	return NodeStatus{
		Node: n.cfg.Node, Version: n.version, Self: true, Pins: pins, Pending: pending,
		AppliedRevision: applied, EtcdRevision: rev, Behind: max(rev-applied, 0),
		LagP99: n.stats.lag.status().P99, Updated: n.now(), Started: n.started,
	}
}

// nodeLoop keeps this host's node key (under a lease of NodeTTL) current,
// every second; the write also tells whether etcd is reachable.
func (n *Node) nodeLoop(ctx context.Context, eng Engine) {
	var lease clientv3.LeaseID
	for {
		err := n.writeNode(ctx, &lease)
		if ctx.Err() != nil {
			break
		}
		if err != nil {
			lease = 0
			n.health.failed(err, n.queued())
		} else {
			n.health.succeeded(n.queued())
		}
		if !sleep(ctx, time.Second) {
			break
		}
	}
	if lease != 0 { // leaving: the other hosts see this host gone at once
		rctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, _ = n.cli.Revoke(rctx, lease)
		cancel()
	}
}

func (n *Node) writeNode(ctx context.Context, lease *clientv3.LeaseID) error {
	rctx, cancel := context.WithTimeout(ctx, n.cfg.Etcd.DialTimeout+time.Second)
	defer cancel()
	if *lease == 0 {
		resp, err := n.cli.Grant(rctx, int64(n.cfg.NodeTTL/time.Second))
		if err != nil {
			return err
		}
		*lease = resp.ID
	} else if _, err := n.cli.KeepAliveOnce(rctx, *lease); err != nil {
		return err
	}
	st := n.selfStatus()
	st.Self = false
	b, _ := json.Marshal(st)
	resp, err := n.cli.Put(rctx, n.k.node(n.cfg.Node), string(b), clientv3.WithLease(*lease))
	if err != nil {
		return err
	}
	n.etcdRev.Store(max(n.etcdRev.Load(), resp.Header.Revision))
	return nil
}

// updateNodes records node keys seen by a sync or the watch (a sync
// empties the list first).
func (n *Node) updateNodes(evs []event) {
	if len(evs) == 0 {
		return
	}
	var cur []NodeStatus
	if p := n.nodes.Load(); p != nil {
		cur = slices.Clone(*p)
	}
	for _, ev := range evs {
		name := strings.TrimPrefix(ev.key, n.k.nodes())
		cur = slices.DeleteFunc(cur, func(s NodeStatus) bool { return s.Node == name })
		if ev.del {
			continue
		}
		var s NodeStatus
		if err := json.Unmarshal(ev.value, &s); err != nil {
			continue
		}
		s.Node = name
		cur = append(cur, s)
	}
	slices.SortFunc(cur, func(a, b NodeStatus) int { return strings.Compare(a.Node, b.Node) })
	n.nodes.Store(&cur)
}

// health tracks whether etcd answers, and logs each change once.
type health struct {
	log    *logrus.Entry
	errors atomic.Uint64

	mu        sync.Mutex
	reachable bool
	known     bool // a request has finished
	since     time.Time
	lastErr   string
}

func (h *health) init(log *logrus.Entry) { h.log = log }

func (h *health) failed(err error, queued int) {
	h.errors.Add(1)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lastErr = err.Error()
	if h.reachable || !h.known {
		h.log.WithError(err).WithField("queued", queued).Warn("etcd unreachable: serving from local state; pins and changes are queued until it returns")
		h.reachable, h.known, h.since = false, true, time.Now()
	}
}

func (h *health) succeeded(queued int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.reachable {
		if h.known {
			h.log.WithField("queued", queued).Info("etcd reachable again: publishing the queued pins and changes")
		}
		h.reachable, h.known, h.since, h.lastErr = true, true, time.Now(), ""
	}
}

func (h *health) status() EtcdStatus {
	h.mu.Lock()
	defer h.mu.Unlock()
	return EtcdStatus{Reachable: h.reachable, Since: h.since, Error: h.lastErr, Errors: h.errors.Load()}
}

// stats are the Node's counters.
type stats struct {
	queued, published, removed, applied, unpinned, refreshed, unknown, writes, txns atomic.Uint64
	lag                                                                             histogram
}

// lagBuckets are the upper bounds of the replication-lag histogram.
var lagBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}

// histogram is a fixed-bucket histogram of durations, safe for concurrent
// use without locks.
type histogram struct {
	counts [15]atomic.Uint64 // per bucket of lagBuckets, then +Inf
	sumUs  atomic.Uint64
}

func (h *histogram) observe(d time.Duration) {
	s := max(d.Seconds(), 0)
	i := 0
	for i < len(lagBuckets) && s > lagBuckets[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sumUs.Add(uint64(s * 1e6))
}

func (h *histogram) status() LagStatus {
	st := LagStatus{Buckets: lagBuckets, Counts: make([]uint64, len(lagBuckets))}
	var per [15]uint64
	for i := range per {
		per[i] = h.counts[i].Load()
		st.Count += per[i]
	}
	var cum uint64
	for i := range lagBuckets {
		cum += per[i]
		st.Counts[i] = cum
	}
	st.Sum = float64(h.sumUs.Load()) / 1e6
	st.P50, st.P99 = quantile(per[:], st.Count, .5), quantile(per[:], st.Count, .99)
	return st
}

// quantile returns the upper bound of the bucket holding quantile q.
func quantile(per []uint64, total uint64, q float64) float64 {
	if total == 0 {
		return 0
	}
	want := uint64(math.Ceil(q * float64(total)))
	var cum uint64
	for i, c := range per {
		cum += c
		if cum >= want {
			return lagBuckets[min(i, len(lagBuckets)-1)] // the last bucket stands for "longer" too (JSON has no +Inf)
		}
	}
	return lagBuckets[len(lagBuckets)-1]
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
