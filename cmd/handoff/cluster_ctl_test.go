package main

import (
	"strings"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/cluster"
)

func TestPrintCluster(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 10, 0, time.UTC)
	st := cluster.Status{
		Name: "edge-a", Node: "lb1", Endpoints: []string{"http://198.18.10.1:2379"},
		Etcd:            cluster.EtcdStatus{Reachable: false, Error: "context deadline exceeded", Revision: 40},
		AppliedRevision: 38, Pending: 12, Published: 100, Applied: 90,
		Lag:   cluster.LagStatus{Count: 90, P50: .005, P99: .025},
		Nodes: []cluster.NodeStatus{{Node: "lb1", Self: true, Pins: 190, Updated: now}, {Node: "lb2", Version: "v1", Pins: 188, Pending: 3, Behind: 2, LagP99: .01, Updated: now.Add(-4 * time.Second)}},
	}
	var b strings.Builder
	if err := printCluster(&b, st, now); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"cluster         edge-a", "UNREACHABLE: serving from local state, writes queued (context deadline exceeded)",
		"revision        38 applied of 40", "pending writes  12", "p50 ≤ 5ms, p99 ≤ 25ms (90 pins)",
		"lb1 *", "lb2    v1       188   3        2       10ms     4s ago",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}
