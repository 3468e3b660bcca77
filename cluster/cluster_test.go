package cluster_test

import (
	"net/netip"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/cluster"
	"github.com/handoff-lb/handoff/internal/etcdtest"
)

// TestPinsReplicate: a pin made on one host is in the other's data plane
// with the same backend, key and remaining lifetime; an unpin on the other
// host removes it on the first; a client classified on one host goes to
// the same backend through the other without being classified again.
func TestPinsReplicate(t *testing.T) {
	etcd, s, a, b := startPair(t, 3)

	if err := a.eng.PinClient(ctx(t), "web", netip.MustParseAddr("198.18.0.7"), "be3"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Second, "the hand pin on b", func() bool { p, ok := b.pin(t, "198.18.0.7"); return ok && p.Backend == "be3" })
	p := b.pins(t)["198.18.0.7"]
	if p.Key != balancer.ManualKey || p.TTL < 59*time.Minute || p.TTL > time.Hour {
		t.Errorf("b's pin = %+v, want key %q and about 1h left", p, balancer.ManualKey)
	}

	if err := b.eng.UnpinClient(ctx(t), "web", netip.MustParseAddr("198.18.0.7")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Second, "the unpin on a", func() bool { _, ok := a.pin(t, "198.18.0.7"); return !ok })

	// 127.0.0.1 is classified on a (source, maglev); b forwards it to the
	// same backend without classifying (its pin came from a).
	first := a.ask(t)
	waitFor(t, 2*time.Second, "a's new client on b", func() bool { p, ok := b.pin(t, "127.0.0.1"); return ok && p.Backend == first })
	if got := b.ask(t); got != first {
		t.Errorf("through b the client reached %s, through a %s", got, first)
	}
	st, err := b.node.Status(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if !st.Etcd.Reachable || st.Applied < 2 || len(st.Nodes) != 2 || st.Lag.Count == 0 {
		t.Errorf("b's status = %+v, want etcd reachable, 2 pins applied, 2 nodes, lag measured", st)
	}

	// A host joining later has the live pin and not the unpinned one: the
	// unpin's tombstone outranks the page that still holds the hand pin.
	c := startHost(t, etcd, "c", s)
	waitFor(t, 2*time.Second, "a's client on the joining host", func() bool { p, ok := c.pin(t, "127.0.0.1"); return ok && p.Backend == first })
	if p, ok := c.pin(t, "198.18.0.7"); ok {
		t.Errorf("the joining host has the unpinned client: %+v", p)
	}
}

// TestRuntimeReplicates: drains, closed listeners and registrations made
// through one host's API hold on the other.
func TestRuntimeReplicates(t *testing.T) {
	etcd, s, a, b := startPair(t, 2)

	if _, err := a.eng.Drain(ctx(t), "web", "be1", balancer.DrainStart); err != nil {
		t.Fatal(err)
	}
	extra := startBackend(t, "be9")
	if err := b.eng.Register(ctx(t), "web", balancer.Registration{Name: "be9", Address: extra.ln.Addr().(interface{ AddrPort() netip.AddrPort }).AddrPort()}); err != nil {
		t.Fatal(err)
	}
	if err := a.eng.SetOpen(ctx(t), "web", false); err != nil {
		t.Fatal(err)
	}
	want := func(h *host) func() bool {
		return func() bool {
			rt := h.eng.Runtime()
			return len(rt.Drains) == 1 && rt.Drains[0].Backend == "be1" && len(rt.Registrations) == 1 && rt.Registrations[0].Name == "be9" && len(rt.Closed) == 1
		}
	}
	defer func() {
		if t.Failed() {
			t.Logf("a: %+v\nb: %+v", a.eng.Runtime(), b.eng.Runtime())
		}
	}()
	waitFor(t, 3*time.Second, "a's drain and close and b's registration on b", want(b))
	waitFor(t, 3*time.Second, "b's registration on a", want(a))
	if b.eng.Addr("web") != nil {
		t.Error("b's listener is open after a closed it")
	}
	st, _ := b.eng.Status(ctx(t))
	draining := false
	for _, be := range st.Services[0].Backends {
		if be.Name == "be1" {
			draining = be.Draining
		}
	}
	if !draining {
		t.Error("be1 is not draining on b")
	}

	if _, err := b.eng.Drain(ctx(t), "web", "be1", balancer.DrainUndo); err != nil {
		t.Fatal(err)
	}
	if err := b.eng.Deregister(ctx(t), "web", "be9"); err != nil {
		t.Fatal(err)
	}
	if err := b.eng.SetOpen(ctx(t), "web", true); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*time.Second, "b's undo on a", func() bool {
		rt := a.eng.Runtime()
		return len(rt.Drains) == 0 && len(rt.Registrations) == 0 && len(rt.Closed) == 0 && a.eng.Addr("web") != nil
	})

	// A host joining later takes the cluster's runtime state, not its own.
	if _, err := a.eng.Drain(ctx(t), "web", "be2", balancer.DrainStart); err != nil {
		t.Fatal(err)
	}
	c := startHost(t, etcd, "c", s)
	waitFor(t, 3*time.Second, "the drain on a joining host", func() bool {
		rt := c.eng.Runtime()
		return len(rt.Drains) == 1 && rt.Drains[0].Backend == "be2"
	})
}

// TestEtcdOutage: with etcd down, hosts pin and serve from local state,
// say so, and queue; when it returns, the queued pins are published and
// the hosts converge with no pin lost and none moved.
func TestEtcdOutage(t *testing.T) {
	etcd, _, a, b := startPair(t, 3)
	if err := a.eng.PinClient(ctx(t), "web", netip.MustParseAddr("198.18.0.1"), "be1"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Second, "the first pin on b", func() bool { _, ok := b.pin(t, "198.18.0.1"); return ok })

	etcd.Stop()
	waitFor(t, 5*time.Second, "a noticing etcd down", func() bool { st, _ := a.node.Status(ctx(t)); return !st.Etcd.Reachable })
	if err := a.eng.PinClient(ctx(t), "web", netip.MustParseAddr("198.18.0.2"), "be2"); err != nil {
		t.Fatal(err)
	}
	if err := b.eng.PinClient(ctx(t), "web", netip.MustParseAddr("198.18.0.3"), "be3"); err != nil {
		t.Fatal(err)
	}
	first := a.ask(t) // new clients are classified and served
	waitFor(t, 2*time.Second, "a's status saying so", func() bool {
		st, _ := a.node.Status(ctx(t))
		return st.Pending >= 2 && st.Etcd.Error != "" && st.Etcd.Errors > 0
	})
	for _, h := range []*host{a, b} { // several failed requests: the warning below is logged once for all of them
		waitFor(t, 15*time.Second, h.name+" failing again", func() bool { st, _ := h.node.Status(ctx(t)); return st.Etcd.Errors >= 2 })
	}

	etcd.Restart()
	want := map[string]string{"198.18.0.1": "be1", "198.18.0.2": "be2", "198.18.0.3": "be3", "127.0.0.1": first}
	for _, h := range []*host{a, b} {
		waitFor(t, 10*time.Second, h.name+" converged", func() bool {
			got := h.pins(t)
			for c, be := range want {
				if got[c].Backend != be {
					return false
				}
			}
			return len(got) == len(want)
		})
		waitFor(t, 5*time.Second, h.name+" reachable", func() bool { st, _ := h.node.Status(ctx(t)); return st.Etcd.Reachable && st.Pending == 0 })
	}
	// Each host said so once, however many requests failed meanwhile.
	const down, back = "etcd unreachable: serving from local state; pins and changes are queued until it returns", "etcd reachable again: publishing the queued pins and changes"
	for _, h := range []*host{a, b} {
		st, _ := h.node.Status(ctx(t))
		if n, m := h.logged(down), h.logged(back); n != 1 || m != 1 || st.Etcd.Errors < 2 {
			t.Errorf("%s logged %q %d times and %q %d times over %d etcd errors; want each once over several", h.name, down, n, back, m, st.Etcd.Errors)
		}
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{etcd.Endpoint}})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if n := len(etcdPins(t, cli)); n != len(want) {
		t.Errorf("etcd holds %d pins, want %d", n, len(want))
	}
}

// TestPinsExpireAndStayAlive: a pin expires in etcd under its lease, on
// every host; a pin whose client keeps connecting through one host stays
// alive in etcd and on the other host.
func TestPinsExpireAndStayAlive(t *testing.T) {
	etcd := etcdtest.Start(t, etcdtest.Options{})
	s := newSpec(t, 2)
	s.ttl = "4s"
	a := startHost(t, etcd, "a", s)
	b := startHost(t, etcd, "b", s)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{etcd.Endpoint}})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	inEtcd := func(client string) bool {
		_, ok := etcdPins(t, cli)["web/"+client]
		return ok
	}

	// The idle client connects once (a hand-made pin would be made
	// again whenever it expires).
	a.askFrom(t, "127.0.0.9")
	first := a.ask(t) // 127.0.0.1, kept alive below
	waitFor(t, 2*time.Second, "both pins on b", func() bool { return len(b.pins(t)) == 2 })
	if !inEtcd("127.0.0.9") {
		t.Fatal("the pin is not in etcd")
	}
	deadline := time.Now().Add(9 * time.Second)
	for time.Now().Before(deadline) {
		if got := a.ask(t); got != first {
			t.Fatalf("the active client moved from %s to %s", first, got)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if inEtcd("127.0.0.9") {
		t.Error("the idle client's pin is still in etcd 9s after a 4s TTL")
	}
	if _, ok := b.pin(t, "127.0.0.9"); ok {
		t.Error("the idle client's pin is still on b")
	}
	if !inEtcd("127.0.0.1") {
		t.Error("the active client's pin expired in etcd")
	}
	if p, ok := b.pin(t, "127.0.0.1"); !ok || p.Backend != first {
		t.Errorf("the active client's pin on b = %+v, %v; want %s", p, ok, first)
	}
}

// TestMigrationAgrees: a backend that fails moves each of its clients
// once, to the same backend on every host, and a host that sees the
// backend down never pins a client to it, even one the other host pinned
// there before it noticed.
//
// Health is local: each host notices the failure at its own next check,
// up to an interval after the other, while the first host's moves reach
// the second in milliseconds. The clients can thus agree on both hosts
// before the second sees the backend down, and until it does, it rightly
// takes a hand-made pin there; so the test waits for each host's own view.
func TestMigrationAgrees(t *testing.T) {
	_, s, a, b := startPair(t, 3)
	for i := range 60 {
		be := []string{"be1", "be2", "be3"}[i%3]
		if err := a.eng.PinClient(ctx(t), "web", netip.AddrFrom4([4]byte{198, 18, 1, byte(i)}), be); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 3*time.Second, "60 pins on b", func() bool { return len(b.pins(t)) == 60 })

	s.backends[1].stop(t) // be2
	defer func() {
		if !t.Failed() {
			return
		}
		pa, pb := a.pins(t), b.pins(t)
		for c, p := range pa {
			if q, ok := pb[c]; !ok || q.Backend != p.Backend || p.Backend == "be2" {
				t.Logf("client %s: a %+v, b %+v (%v)", c, p, q, ok)
			}
		}
		for c, q := range pb {
			if _, ok := pa[c]; !ok {
				t.Logf("client %s: only on b: %+v", c, q)
			}
		}
	}()
	same := func() bool {
		pa, pb := a.pins(t), b.pins(t)
		if len(pa) != 60 || len(pb) != 60 {
			return false
		}
		for c, p := range pa {
			if p.Backend == "be2" || pb[c].Backend != p.Backend {
				return false
			}
		}
		return true
	}
	waitFor(t, 5*time.Second, "be2's clients moved to the same backends on both hosts", same)
	// A hand-made pin to the down backend is refused (a conflict), on
	// either host, once its own health check saw it down (a host may learn
	// of the moved pins from the other one first).
	for _, h := range []*host{a, b} {
		waitFor(t, 5*time.Second, "host "+h.name+" sees be2 down", func() bool { return h.health(t, "be2") == "down" })
		if err := h.eng.PinClient(ctx(t), "web", netip.MustParseAddr("198.18.2.1"), "be2"); err == nil {
			t.Errorf("host %s pinned a client to the down backend by hand", h.name)
		}
	}
	if _, ok := a.pin(t, "198.18.2.1"); ok {
		t.Error("the refused hand pin is on a")
	}
}

// TestJoin: a host joining a cluster that holds pins has them all.
func TestJoin(t *testing.T) {
	etcd := etcdtest.Start(t, etcdtest.Options{})
	s := newSpec(t, 2)
	a := startHost(t, etcd, "a", s)
	const n = 2000
	for i := range n {
		if err := a.eng.PinClient(ctx(t), "web", netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), "be2"); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, "a's pins published", func() bool { st, _ := a.node.Status(ctx(t)); return st.Pending == 0 && st.Published >= n })
	a.stop() // its pins stay in etcd under their leases
	c := startHost(t, etcd, "c", s)
	waitFor(t, 3*time.Second, "the pins on the joining host", func() bool { return len(c.pins(t)) == n })
}

// etcdPins returns the pins etcd holds for the tests' cluster: "svc/client"
// → backend, without tombstones.
func etcdPins(t *testing.T, cli *clientv3.Client) map[string]string {
	t.Helper()
	m, err := cluster.EtcdPins(ctx(t), cli, "/t", "test")
	if err != nil {
		t.Fatal(err)
	}
	for k, be := range m {
		if be == "" {
			delete(m, k)
		}
	}
	return m
}
