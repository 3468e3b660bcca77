package admin

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/cluster"
)

// fakeCluster reports a fixed cluster status.
type fakeCluster struct{ st cluster.Status }

func (f fakeCluster) Status(context.Context) (cluster.Status, error) { return f.st, nil }

func testCluster() fakeCluster {
	return fakeCluster{cluster.Status{
		Name: "edge-a", Node: "lb1", Endpoints: []string{"http://198.18.10.1:2379"},
		Etcd:            cluster.EtcdStatus{Reachable: false, Error: "context deadline exceeded", Errors: 3, Revision: 40},
		AppliedRevision: 38, Pending: 12, Published: 100, Applied: 90,
		Lag:   cluster.LagStatus{Count: 90, Sum: 0.5, P99: .025, Buckets: []float64{.01, .025}, Counts: []uint64{80, 90}},
		Nodes: []cluster.NodeStatus{{Node: "lb1", Self: true, Pins: 190}, {Node: "lb2", Pins: 190, Behind: 2, Updated: time.Now()}},
	}}
}

func TestClusterEndpoint(t *testing.T) {
	s, _ := newTestServer(t, false, Options{})
	if w := do(s, "GET", "/api/v1/cluster", ""); w.Code != 404 || !strings.Contains(w.Body.String(), "not in a cluster") {
		t.Errorf("without a cluster: %d %s", w.Code, w.Body)
	}
	s, _ = newTestServer(t, false, Options{Cluster: testCluster()})
	var got cluster.Status
	getJSON(t, s, "/api/v1/cluster", &got)
	if got.Name != "edge-a" || got.Etcd.Reachable || got.Pending != 12 || len(got.Nodes) != 2 || got.Nodes[1].Behind != 2 {
		t.Errorf("got %+v", got)
	}
	m := do(s, "GET", "/metrics", "").Body.String()
	for _, want := range []string{
		"handoff_cluster_etcd_up 0", "handoff_cluster_pending_writes 12", "handoff_cluster_pins_published_total 100",
		"handoff_cluster_pins_applied_total 90", "handoff_cluster_etcd_errors_total 3", `handoff_cluster_behind_revisions{node="lb2"} 2`,
		`handoff_cluster_apply_lag_seconds_bucket{le="0.025"} 90`, "handoff_cluster_apply_lag_seconds_count 90",
	} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	page := StatusPage(newFake(), testCluster())
	if body := do(page, "GET", "/", "").Body.String(); !strings.Contains(body, "cluster edge-a") || !strings.Contains(body, "etcd unreachable") || !strings.Contains(body, "lb2") {
		t.Error("the status page does not show the cluster")
	}
}
