package cluster

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/config"
	"github.com/handoff-lb/handoff/dataplane"
)

// These tests drive the Node's bookkeeping by hand, event by event, in the
// orders a watch and a write can interleave; the tests of cluster_test.go
// run the same code against a real etcd.

// applied records what the Node hands to the engine.
type applied struct {
	pins   []balancer.RemotePin
	unpins []dataplane.Pin
}

func (a *applied) ApplyPins(_ context.Context, pins []balancer.RemotePin) (balancer.Applied, error) {
	a.pins = append(a.pins, pins...)
	return balancer.Applied{Pinned: len(pins)}, nil
}
func (a *applied) ApplyUnpins(_ context.Context, pins []dataplane.Pin) error {
	a.unpins = append(a.unpins, pins...)
	return nil
}
func (a *applied) RemoveLeftovers(context.Context, []dataplane.Pin, func(dataplane.Pin) bool) error {
	return nil
}
func (a *applied) ApplyRuntime(context.Context, func() (balancer.Runtime, bool)) error { return nil }
func (a *applied) Renew(string, string, time.Duration) error                           { return nil }
func (a *applied) Runtime() balancer.Runtime                                           { return balancer.Runtime{} }
func (a *applied) PinReader() balancer.PinReader                                       { return nil }
func (a *applied) Services() map[string]time.Duration {
	return map[string]time.Duration{"web": time.Hour}
}
func (a *applied) State() balancer.State { return balancer.StateServing }

// bookNode is a Node named "a" whose etcd is never reached.
func bookNode(t *testing.T) *Node {
	t.Helper()
	log := logrus.New()
	log.SetLevel(logrus.PanicLevel)
	n, err := New(Options{Config: &config.Cluster{Name: "test", Node: "a", Etcd: config.Etcd{Endpoints: []string{"http://127.0.0.1:1"}, Prefix: "/t"}}, Logger: logrus.NewEntry(log)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// pageOf is another host's page that pins each client to backend.
func pageOf(backend string, expires time.Time, clients ...netip.Addr) []byte {
	var es []pageEntry
	for _, c := range clients {
		es = append(es, pageEntry{pk: pinKey{"web", c}, v: pinValue{Backend: backend, Key: "src=" + c.String(), Expires: expires.UnixMilli(), Written: time.Now().UnixMilli()}})
	}
	return encodePage(es)
}

// commit ends the write of batch as etcd would have, at rev, with the
// pins in one page.
func (n *Node) commit(batch map[string]op, rev int64) {
	u := unit{page: n.k.page(n.cfg.Node, n.boot, n.pageSeq.Add(1))}
	for k, o := range batch {
		u.keys = append(u.keys, k)
		u.entries = append(u.entries, *o.entry)
	}
	n.committed([]unit{u}, batch, rev)
}

// TestPageExpiry: when a page's lease ends, a host drops the pins whose
// value the page held, and keeps those written again since, including a
// refresh of its own that committed just before the deletion arrived.
func TestPageExpiry(t *testing.T) {
	n, eng, ctx := bookNode(t), &applied{}, context.Background()
	kept, gone := netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.2")
	p1 := n.k.page("b", 1, 1)
	v1 := pageOf("be1", time.Now().Add(time.Minute), kept, gone)
	n.handle(ctx, eng, []event{{rev: 10, key: p1, value: v1}}, false)
	if len(eng.pins) != 2 || n.local[pinKey{"web", kept}].page != p1 {
		t.Fatalf("after b's page: applied %+v, local %+v", eng.pins, n.local)
	}

	// This host's kernel refreshed one of them; the refresh is written
	// and commits at 20, before the watch reaches p1's deletion at 30.
	n.mu.Lock()
	lp := n.local[pinKey{"web", kept}]
	lp.expires = time.Now().Add(time.Hour).UnixMilli()
	lp.refreshed = lp.expires
	n.local[pinKey{"web", kept}] = lp
	n.queuePinLocked(pinKey{"web", kept}, lp, time.Now())
	n.mu.Unlock()
	n.commit(n.take(), 20)

	n.handle(ctx, eng, []event{{rev: 30, key: p1, del: true, value: v1}}, false)
	if _, ok := n.local[pinKey{"web", kept}]; !ok {
		t.Error("the refreshed pin was dropped with the page that held its older value")
	}
	if _, ok := n.local[pinKey{"web", gone}]; ok {
		t.Error("the pin the page held is still known")
	}
	if len(eng.unpins) != 1 || eng.unpins[0].Client != gone {
		t.Errorf("unpinned %+v, want only %s", eng.unpins, gone)
	}
}

// TestRefreshedTooLate: a pin whose page went after the refreshed expiry
// too (pages go up to a bucket late) is forgotten, not written again (the
// write would drop it as expired and the Node would hold it forever).
func TestRefreshedTooLate(t *testing.T) {
	n, eng, ctx := bookNode(t), &applied{}, context.Background()
	c := netip.MustParseAddr("198.18.0.3")
	p := n.k.page("b", 1, 1)
	v := pageOf("be1", time.Now().Add(time.Minute), c)
	n.handle(ctx, eng, []event{{rev: 10, key: p, value: v}}, false)
	n.mu.Lock()
	lp := n.local[pinKey{"web", c}]
	lp.expires = time.Now().Add(-40 * time.Second).UnixMilli()
	lp.refreshed = time.Now().Add(-30 * time.Second).UnixMilli()
	n.local[pinKey{"web", c}] = lp
	n.mu.Unlock()
	n.handle(ctx, eng, []event{{rev: 20, key: p, del: true, value: v}}, false)
	if _, ok := n.local[pinKey{"web", c}]; ok || n.queued() != 0 {
		t.Errorf("the pin is still known (queued writes: %d)", n.queued())
	}
}

// TestSweep: the refresh pass forgets pins that expired everywhere, and
// keeps live ones, queued ones and pins that never expire.
func TestSweep(t *testing.T) {
	n := bookNode(t)
	now := time.Now()
	old := now.Add(-10 * time.Second).UnixMilli()
	add := func(last byte, lp localPin) pinKey {
		pk := pinKey{"web", netip.AddrFrom4([4]byte{198, 18, 0, last})}
		n.local[pk] = lp
		return pk
	}
	expired := add(1, localPin{backend: "be1", expires: old})
	refreshed := add(2, localPin{backend: "be1", expires: old, refreshed: now.Add(time.Minute).UnixMilli()})
	live := add(3, localPin{backend: "be1", expires: now.Add(time.Hour).UnixMilli()})
	forever := add(4, localPin{backend: "be1"})
	queued := add(5, localPin{backend: "be1", expires: old})
	n.pending[n.k.pin(queued.service, queued.client)] = op{del: true}
	if got := n.sweep(now); got != 1 {
		t.Errorf("swept %d, want 1", got)
	}
	if _, ok := n.local[expired]; ok {
		t.Error("the expired pin is still known")
	}
	for _, pk := range []pinKey{refreshed, live, forever, queued} {
		if _, ok := n.local[pk]; !ok {
			t.Errorf("%s was forgotten", pk.client)
		}
	}
}

// TestWriteInFlight: another host's write of a client that arrives while
// this host's write of it is in flight is applied once this host's turns
// out older, and ignored when this host's is newer.
func TestWriteInFlight(t *testing.T) {
	for _, tc := range []struct {
		name    string
		ourRev  int64
		backend string
	}{
		{"ours older", 35, "be2"},
		{"ours newer", 45, "be1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, eng, ctx := bookNode(t), &applied{}, context.Background()
			c := netip.MustParseAddr("198.18.0.4")
			n.Pinned([]dataplane.Pin{{Service: "web", Backend: "be1", Client: c, Key: "src=" + c.String(), TTL: time.Hour}})
			batch := n.take()
			n.handle(ctx, eng, []event{{rev: 40, key: n.k.page("b", 1, 1), value: pageOf("be2", time.Now().Add(time.Hour), c)}}, false)
			if len(eng.pins) != 0 {
				t.Fatalf("applied %+v while this host's write was in flight", eng.pins)
			}
			n.commit(batch, tc.ourRev)
			n.handle(ctx, eng, nil, false) // the watch's next response
			if got := n.local[pinKey{"web", c}].backend; got != tc.backend {
				t.Errorf("the client is in %s here, want %s", got, tc.backend)
			}
			if want := tc.backend == "be2"; (len(eng.pins) == 1) != want {
				t.Errorf("applied %+v", eng.pins)
			}
			if len(n.deferred) != 0 {
				t.Errorf("deferred left: %+v", n.deferred)
			}
		})
	}
}

// TestTombstoneLifetime: an unpin's tombstone lives one client TTL from
// now when the pin itself would have expired sooner.
func TestTombstoneLifetime(t *testing.T) {
	n := bookNode(t)
	ttls := map[string]time.Duration{"web": time.Hour}
	n.ttls.Store(&ttls)
	c := netip.MustParseAddr("198.18.0.5")
	n.local[pinKey{"web", c}] = localPin{backend: "be1", expires: time.Now().Add(time.Minute).UnixMilli()}
	n.Unpinned("web", "be1", c)
	o := n.pending[n.k.pin("web", c)]
	if o.entry == nil || !o.entry.del || o.expires() < time.Now().Add(59*time.Minute).UnixMilli() {
		t.Errorf("tombstone %+v (entry %+v), want one expiring in about an hour", o, o.entry)
	}
}

// TestOwnKeyDeleted: the deletion of a client's own key (as an earlier
// version wrote pins, under a lease) does not remove a pin whose newer
// value lives in a page.
func TestOwnKeyDeleted(t *testing.T) {
	n, eng, ctx := bookNode(t), &applied{}, context.Background()
	moved, kept := netip.MustParseAddr("198.18.0.6"), netip.MustParseAddr("198.18.0.7")
	exp := time.Now().Add(time.Minute)
	for _, c := range []netip.Addr{moved, kept} {
		v := pinValue{Backend: "be1", Key: "k", Expires: exp.UnixMilli(), Node: "b", Written: time.Now().UnixMilli()}
		n.handle(ctx, eng, []event{{rev: 10, key: n.k.pin("web", c), value: v.encode()}}, false)
	}
	n.handle(ctx, eng, []event{{rev: 20, key: n.k.page("b", 1, 1), value: pageOf("be2", exp, moved)}}, false)
	n.handle(ctx, eng, []event{{rev: 30, key: n.k.pin("web", moved), del: true}, {rev: 30, key: n.k.pin("web", kept), del: true}}, false)
	if lp, ok := n.local[pinKey{"web", moved}]; !ok || lp.backend != "be2" {
		t.Errorf("the client moved into a page: %+v, %v; want it kept in be2", lp, ok)
	}
	if _, ok := n.local[pinKey{"web", kept}]; ok || len(eng.unpins) != 1 || eng.unpins[0].Client != kept {
		t.Errorf("unpinned %+v; want only %s, whose value was its key", eng.unpins, kept)
	}
}
