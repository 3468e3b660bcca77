package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/dataplane"
)

// syncPage is how many keys (other than pin pages) one range request of a
// sync reads.
const syncPage = 20000

// applyChunk bounds the pins handed to the engine at once.
const applyChunk = 16384

// errResync ends a watch whose history etcd compacted away.
var errResync = errors.New("watch history compacted; reading the cluster's state again")

// watchLoop reads the cluster's whole state once (a sync), applies it, and
// then follows etcd's changes from that revision on. When the watch
// breaks for good (compaction) it syncs again.
func (n *Node) watchLoop(ctx context.Context, eng Engine) {
	retry := time.Duration(0)
	for {
		rev, err := n.sync(ctx, eng)
		if err == nil {
			err = n.watch(ctx, eng, rev+1)
		}
		if ctx.Err() != nil {
			return
		}
		if err != nil && !errors.Is(err, errResync) {
			n.health.failed(err, n.queued())
			retry = min(max(2*retry, retryMin), retryMax)
		} else {
			retry = 0
		}
		if !sleep(ctx, retry) {
			return
		}
	}
}

// event is one change of a key, from a sync or a watch.
type event struct {
	rev   int64 // its modification revision
	key   string
	value []byte // a deleted key's last value, when the watch has it
	del   bool
}

// pinEvent is one change of a client's pin: a write of its own key, an
// entry of a page, or a page deleted by its lease.
type pinEvent struct {
	rev     int64
	key     string // the client's own key (what the queue and held know it by)
	pk      pinKey
	v       pinValue
	del     bool
	page    string // the page of an entry; "" for the client's own key
	expired bool   // the page was deleted: only a pin whose value it holds goes
}

// syncPages is how many pin pages one range request of a sync reads
// (up to pageMax pins each).
const syncPages = 64

// sync reads every key of the cluster at one revision, in pages, applies
// what differs from this host's state, publishes this host's runtime state
// when the cluster has none yet, and returns the revision read. A
// client's value is the newest of its entries (pages and its own key),
// which is etcd's last write of it.
func (n *Node) sync(ctx context.Context, eng Engine) (int64, error) {
	start := time.Now()
	rootEnd, pagesEnd := clientv3.GetPrefixRangeEnd(n.k.root), clientv3.GetPrefixRangeEnd(n.k.pages())
	var evs []event
	total := 0
	seeded := false
	last := newestPins{}
	each := func(kvs []*mvccpb.KeyValue) {
		for _, kv := range kvs {
			ev := event{rev: kv.ModRevision, key: string(kv.Key), value: kv.Value}
			if ev.key == n.k.seeded() {
				seeded = true
			}
			if !n.collectPins(ev, last) {
				evs = append(evs, ev)
			}
		}
		total += len(kvs)
		n.handle(ctx, eng, evs, true)
		evs = evs[:0]
	}
	n.nodes.Store(&[]NodeStatus{})
	rev, err := n.rangeAt(ctx, n.k.root, n.k.pages(), 0, syncPage, each)
	if err == nil {
		_, err = n.rangeAt(ctx, pagesEnd, rootEnd, rev, syncPage, each)
	}
	if err == nil {
		_, err = n.rangeAt(ctx, n.k.pages(), pagesEnd, rev, syncPages, each)
	}
	if err != nil {
		return 0, fmt.Errorf("reading the cluster's state: %w", err)
	}
	pes := make([]pinEvent, 0, len(last))
	for _, pe := range last {
		pes = append(pes, pe)
	}
	clear(last)
	n.handlePins(ctx, eng, pes, true)
	n.etcdRev.Store(max(n.etcdRev.Load(), rev))
	n.applied.Store(rev)
	n.health.succeeded(n.queued())
	if !seeded {
		if err := n.seed(ctx, eng); err != nil {
			return 0, err
		}
	} else {
		n.applyRuntime(ctx, eng)
	}
	n.log.WithFields(logrus.Fields{"keys": total, "pins": len(pes), "revision": rev, "took": time.Since(start).Round(time.Millisecond)}).Info("cluster state read and applied")
	return rev, nil
}

// newestPins holds the newest value of each client read so far.
type newestPins map[pinKey]pinEvent

// collectPins keeps in m the newer of its value and those ev holds, when
// ev is a page or a client's own key, and reports whether it was.
func (n *Node) collectPins(ev event, m newestPins) bool {
	keep := func(pe pinEvent) {
		if old, ok := m[pe.pk]; !ok || pe.rev >= old.rev {
			m[pe.pk] = pe
		}
	}
	switch {
	case strings.HasPrefix(ev.key, n.k.pages()):
		n.pageEntries(ev, keep)
	case strings.HasPrefix(ev.key, n.k.pins()):
		if pe, ok := n.keyEntry(ev); ok {
			keep(pe)
		}
	default:
		return false
	}
	return true
}

// rangeAt reads the keys from from up to end at revision rev (0: the
// newest), limit keys a request, and hands each response's keys to fn. It
// returns the revision read.
func (n *Node) rangeAt(ctx context.Context, from, end string, rev, limit int64, fn func([]*mvccpb.KeyValue)) (int64, error) {
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(limit)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		gctx, cancel := context.WithTimeout(ctx, 4*requestTimeout)
		resp, err := n.cli.Get(gctx, from, opts...)
		cancel()
		if err != nil {
			return 0, err
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		fn(resp.Kvs)
		if !resp.More || len(resp.Kvs) == 0 {
			return rev, nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// seed publishes this host's runtime state as the cluster's first, unless
// another host did so first.
func (n *Node) seed(ctx context.Context, eng Engine) error {
	rt := eng.Runtime()
	n.mu.Lock()
	n.rt = rt
	n.mu.Unlock()
	var ops []clientv3.Op
	add := func(key string, v runtimeValue) {
		b, _ := jsonMarshal(v)
		ops = append(ops, clientv3.OpPut(key, string(b)))
	}
	add(n.k.seeded(), runtimeValue{Node: n.cfg.Node})
	for _, r := range rt.Registrations {
		reg := r
		add(n.k.registration(r.Service, r.Name), runtimeValue{Node: n.cfg.Node, Registration: &reg})
	}
	for _, d := range rt.Drains {
		add(n.k.drain(d.Service, d.Backend), runtimeValue{Node: n.cfg.Node})
	}
	for _, s := range rt.Closed {
		add(n.k.closed(s), runtimeValue{Node: n.cfg.Node})
	}
	tctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	resp, err := n.cli.Txn(tctx).If(clientv3.Compare(clientv3.Version(n.k.seeded()), "=", 0)).Then(ops...).Commit()
	if err != nil {
		return fmt.Errorf("publishing the runtime state: %w", err)
	}
	if resp.Succeeded {
		n.log.WithFields(logrus.Fields{"registrations": len(rt.Registrations), "drains": len(rt.Drains), "closed": len(rt.Closed)}).Info("this host's runtime state is the cluster's first")
	}
	return nil
}

// watch follows the cluster's keys from rev until ctx ends or the watch
// fails.
func (n *Node) watch(ctx context.Context, eng Engine, rev int64) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// A deleted page (its lease ended) is read from its previous value;
	// a lease that ends deletes all its pages in one revision, so large
	// responses come in fragments.
	wch := n.cli.Watch(wctx, n.k.root, clientv3.WithPrefix(), clientv3.WithRev(rev), clientv3.WithPrevKV(), clientv3.WithFragment())
	var evs []event
	for resp := range wch {
		if resp.CompactRevision != 0 {
			return errResync
		}
		if err := resp.Err(); err != nil {
			return err
		}
		evs = evs[:0]
		for _, ev := range resp.Events {
			e := event{rev: ev.Kv.ModRevision, key: string(ev.Kv.Key), value: ev.Kv.Value, del: ev.Type == mvccpb.DELETE}
			if e.del && ev.PrevKv != nil {
				e.value = ev.PrevKv.Value
			}
			evs = append(evs, e)
		}
		n.handle(ctx, eng, evs, false)
		n.mu.Lock()
		n.seenLocked(resp.Header.Revision)
		dirty := n.rtDirty
		n.mu.Unlock()
		if dirty {
			n.applyRuntime(ctx, eng) // held back until this host's own change came back
		}
		n.etcdRev.Store(max(n.etcdRev.Load(), resp.Header.Revision))
		n.applied.Store(max(n.applied.Load(), resp.Header.Revision))
		n.health.succeeded(n.queued())
	}
	if ctx.Err() != nil {
		return nil
	}
	return errors.New("etcd watch closed")
}

// pinChanges is what a batch of pin events changes here.
type pinChanges struct {
	pins    []balancer.RemotePin
	written []int64 // when each of pins was written
	unpins  []dataplane.Pin
}

// handle applies a batch of changes, in order: pins through the engine in
// one batch, runtime items once the batch is read. sync is set for the
// events of a sync.
func (n *Node) handle(ctx context.Context, eng Engine, evs []event, sync bool) {
	now := n.now()
	var ch pinChanges
	var renews []renew
	var nodes []event

	n.mu.Lock()
	for _, ev := range evs {
		if r := n.held[ev.key]; r != 0 && ev.rev >= r {
			delete(n.held, ev.key) // this host's write came back
		}
		switch {
		case strings.HasPrefix(ev.key, n.k.pages()):
			if node, _ := n.k.pageNode(ev.key); node == n.cfg.Node && !ev.del {
				continue // this host's own page: it holds these pins
			}
			n.pageEntries(ev, func(pe pinEvent) { n.pinEventLocked(pe, now, &ch) })
		case strings.HasPrefix(ev.key, n.k.pins()):
			if pe, ok := n.keyEntry(ev); ok {
				n.pinEventLocked(pe, now, &ch)
			}
		case strings.HasPrefix(ev.key, n.k.nodes()):
			nodes = append(nodes, ev)
		case strings.HasPrefix(ev.key, n.k.runtime()):
			if ev.key == n.k.seeded() {
				continue
			}
			if ev.del {
				delete(n.runtime, ev.key)
				n.rtDirty = true
				continue
			}
			var v runtimeValue
			if err := jsonUnmarshal(ev.value, &v); err != nil {
				n.log.WithError(err).WithField("key", ev.key).Warn("ignoring a runtime item that is not handoff's")
				continue
			}
			if isHeartbeat(n.k, ev.key) {
				if v.Node != n.cfg.Node && !sync {
					if r, ok := parseHeartbeat(n.k, ev.key, v); ok {
						renews = append(renews, r)
					}
				}
				n.runtime[ev.key] = v
				continue
			}
			n.runtime[ev.key] = v
			if v.Node != n.cfg.Node {
				n.rtDirty = true
			}
		}
	}
	n.redoLocked(now, &ch)
	dirty := n.rtDirty
	n.mu.Unlock()

	n.updateNodes(nodes)
	n.applyPins(ctx, eng, ch, sync)
	for _, r := range renews {
		if err := eng.Renew(r.service, r.backend, r.ttl); err != nil {
			n.log.WithError(err).WithFields(logrus.Fields{"service": r.service, "backend": r.backend}).Debug("heartbeat from the cluster")
		}
	}
	if dirty && !sync {
		n.applyRuntime(ctx, eng)
	}
}

// handlePins applies pin events (a sync's newest value of each client).
func (n *Node) handlePins(ctx context.Context, eng Engine, pes []pinEvent, sync bool) {
	now := n.now()
	var ch pinChanges
	n.mu.Lock()
	for _, pe := range pes {
		n.pinEventLocked(pe, now, &ch)
	}
	n.mu.Unlock()
	n.applyPins(ctx, eng, ch, sync)
}

// applyPins hands what pin events changed to the engine.
func (n *Node) applyPins(ctx context.Context, eng Engine, ch pinChanges, sync bool) {
	for i := 0; i < len(ch.pins); i += applyChunk {
		chunk := ch.pins[i:min(i+applyChunk, len(ch.pins))]
		res, err := eng.ApplyPins(ctx, chunk)
		if err != nil && ctx.Err() == nil {
			n.log.WithError(err).Warn("applying the cluster's pins")
		}
		n.stats.applied.Add(uint64(res.Pinned + res.Moved))
		n.stats.unknown.Add(uint64(res.Unknown))
	}
	if !sync {
		done := n.now()
		for _, w := range ch.written {
			n.stats.lag.observe(done.Sub(time.UnixMilli(w)))
		}
	}
	if len(ch.unpins) > 0 {
		if err := eng.ApplyUnpins(ctx, ch.unpins); err != nil && ctx.Err() == nil {
			n.log.WithError(err).Warn("removing pins the cluster removed")
		}
		n.stats.unpinned.Add(uint64(len(ch.unpins)))
	}
}

// deferredEvent is another host's write of a client that met this host's
// write of it in flight.
type deferredEvent struct {
	pe    pinEvent
	newer bool // this host's write committed at a lower revision: pe is etcd's last value
}

// redoLocked applies the deferred events that turned out newer than this
// host's write; mu is held.
func (n *Node) redoLocked(now time.Time, ch *pinChanges) {
	for k, d := range n.deferred {
		if !d.newer {
			continue
		}
		delete(n.deferred, k)
		n.pinEventLocked(d.pe, now, ch) // releases k: this host's write is older
	}
}

// keyEntry reads the write of a client's own key.
func (n *Node) keyEntry(ev event) (pinEvent, bool) {
	pk, ok := n.k.parsePin(ev.key)
	if !ok {
		return pinEvent{}, false
	}
	pe := pinEvent{rev: ev.rev, key: ev.key, pk: pk, del: ev.del}
	if ev.del {
		return pe, true
	}
	v, err := decodePin(ev.value)
	if err != nil {
		n.log.WithError(err).WithField("key", ev.key).Warn("ignoring a pin that is not handoff's")
		return pinEvent{}, false
	}
	pe.v = v
	return pe, true
}

// pageEntries hands the entries of a written page to fn, in order, or
// those of a deleted page (from its last value) as expirations. A page
// that cannot be read is logged and skipped.
func (n *Node) pageEntries(ev event, fn func(pinEvent)) {
	node, ok := n.k.pageNode(ev.key)
	if !ok || ev.del && ev.value == nil {
		return
	}
	err := decodePage(ev.value, node, func(e pageEntry) {
		pe := pinEvent{rev: ev.rev, key: n.k.pin(e.pk.service, e.pk.client), pk: e.pk, v: e.v, del: e.del, page: ev.key}
		if ev.del {
			if e.del {
				return
			}
			pe.del, pe.expired = true, true
		}
		fn(pe)
	})
	if err != nil {
		n.log.WithError(err).WithField("key", ev.key).Warn("ignoring the rest of a pin page that is not handoff's")
	}
}

// pinEventLocked applies one pin event to this host's view and records
// what the engine must change; mu is held. An event that meets a write
// of this host's in flight (its revision not known yet) waits in
// deferred: committed tells whether it is newer than that write.
func (n *Node) pinEventLocked(pe pinEvent, now time.Time, ch *pinChanges) {
	if r := n.held[pe.key]; r != 0 && pe.rev >= r {
		delete(n.held, pe.key) // this host's write of the client came back before
	}
	if r, held := n.held[pe.key]; held && r == 0 {
		if _, pending := n.pending[pe.key]; !pending {
			n.deferred[pe.key] = deferredEvent{pe: pe}
		}
		return
	}
	delete(n.deferred, pe.key) // a newer event of the client than the one waiting
	if pe.del {
		// A page deleted by its lease, or a client's own key deleted (an
		// unpin, or the lease of a key an earlier version wrote), concern
		// the client only if they hold its newest value.
		if lp, ok := n.local[pe.pk]; (pe.expired || pe.page == "") && ok && lp.page != pe.page {
			return // a newer value of the client lives elsewhere
		}
		if u, ok := n.deletedLocked(pe.key, pe.pk, now); ok {
			ch.unpins = append(ch.unpins, u)
		}
		return
	}
	if rp, ok := n.putLocked(pe.key, pe.pk, pe.v, pe.page, now); ok {
		ch.pins = append(ch.pins, rp)
		ch.written = append(ch.written, pe.v.Written)
	}
}

// putLocked decides whether a pin written to etcd must be applied here;
// mu is held. This host applies etcd's history in revision order, so that
// every host ends with etcd's last value: its own writes are skipped
// while it still holds them, a write another host made after one of its
// own is applied, and a write overtaken by one of its own still queued is
// skipped (that one lands later).
func (n *Node) putLocked(key string, pk pinKey, v pinValue, page string, now time.Time) (balancer.RemotePin, bool) {
	if v.Expires != 0 && v.Expires <= now.UnixMilli() {
		return balancer.RemotePin{}, false
	}
	if n.queuedLocked(key) {
		return balancer.RemotePin{}, false
	}
	lp, have := n.local[pk]
	if have && lp.backend == v.Backend && lp.key == v.Key {
		lp.page = page // etcd's value of the client is in this page from now on
		n.local[pk] = lp
		if v.Node == n.cfg.Node || v.Expires != 0 && v.Expires <= lp.expires+1000 || v.Expires == 0 && lp.expires == 0 {
			return balancer.RemotePin{}, false // already so here, for as long
		}
	}
	rp := balancer.RemotePin{Pin: dataplane.Pin{Service: pk.service, Backend: v.Backend, Client: pk.client, Key: v.Key}}
	if v.Expires != 0 {
		rp.TTL = time.UnixMilli(v.Expires).Sub(now)
	}
	if have {
		rp.Prev = lp.backend
	}
	np := localPin{backend: v.Backend, key: v.Key, expires: v.Expires, page: page}
	if have && lp.backend == v.Backend {
		np.refreshed = lp.refreshed
	}
	n.local[pk] = np
	return rp, true
}

// deletedLocked decides whether a pin deleted from etcd must be removed
// here; mu is held. What this host holds of the client is etcd's last
// value (or a write of its own still queued, which wins), so the watch
// needs no previous values. A pin that expired in etcd while this host's
// kernel refreshed it (the client connects through this host) stays, and
// is written again; one deleted before it expired (unpinned by hand,
// migrated with reclassify) goes.
func (n *Node) deletedLocked(key string, pk pinKey, now time.Time) (dataplane.Pin, bool) {
	lp, have := n.local[pk]
	if !have || n.queuedLocked(key) {
		return dataplane.Pin{}, false
	}
	if lp.expires != 0 && lp.expires <= now.UnixMilli()+1000 && lp.refreshed > lp.expires+refreshSlack.Milliseconds() && lp.refreshed > now.UnixMilli()+1000 {
		lp.expires = lp.refreshed
		n.local[pk] = lp
		n.queuePinLocked(pk, lp, now)
		n.kickLocked()
		return dataplane.Pin{}, false
	}
	delete(n.local, pk)
	return dataplane.Pin{Service: pk.service, Backend: lp.backend, Client: pk.client}, true
}

// applyRuntime hands etcd's runtime state to the engine, unless a change
// of this host's waits to be written (it would be undone until then): it
// is applied with the next change seen after that one's write. The engine
// reads the state under its own lock (see balancer.Engine.ApplyRuntime).
func (n *Node) applyRuntime(ctx context.Context, eng Engine) {
	err := eng.ApplyRuntime(ctx, func() (balancer.Runtime, bool) {
		n.mu.Lock()
		defer n.mu.Unlock()
		for k := range n.pending {
			if strings.HasPrefix(k, n.k.runtime()) && !isHeartbeat(n.k, k) {
				n.rtDirty = true
				return balancer.Runtime{}, false
			}
		}
		for k := range n.held {
			if strings.HasPrefix(k, n.k.runtime()) && !isHeartbeat(n.k, k) {
				n.rtDirty = true
				return balancer.Runtime{}, false
			}
		}
		n.rt = n.runtimeLocked()
		n.rtDirty = false
		return n.rt, true
	})
	if err != nil && ctx.Err() == nil {
		n.log.WithError(err).Warn("applying the cluster's runtime state")
	}
}

// runtimeLocked assembles the runtime state etcd holds; mu is held.
func (n *Node) runtimeLocked() balancer.Runtime {
	var rt balancer.Runtime
	for key, v := range n.runtime {
		rest := strings.TrimPrefix(key, n.k.runtime())
		kind, name, _ := strings.Cut(rest, "/")
		switch kind {
		case "registrations":
			if v.Registration != nil {
				rt.Registrations = append(rt.Registrations, *v.Registration)
			}
		case "drains":
			if svc, be, ok := strings.Cut(name, "/"); ok {
				rt.Drains = append(rt.Drains, dataplane.BackendRef{Service: svc, Backend: be})
			}
		case "closed":
			rt.Closed = append(rt.Closed, name)
		}
	}
	slices.Sort(rt.Closed)
	return rt
}

type renew struct {
	service, backend string
	ttl              time.Duration
}

func isHeartbeat(k keys, key string) bool {
	return strings.HasPrefix(key, k.runtime()+"heartbeats/")
}

func parseHeartbeat(k keys, key string, v runtimeValue) (renew, bool) {
	svc, be, ok := strings.Cut(strings.TrimPrefix(key, k.runtime()+"heartbeats/"), "/")
	ttl, err := time.ParseDuration(v.TTL)
	if !ok || err != nil || ttl <= 0 {
		return renew{}, false
	}
	return renew{svc, be, ttl}, true
}

func sameRuntime(a, b runtimeValue) bool {
	if (a.Registration == nil) != (b.Registration == nil) {
		return false
	}
	return a.Registration == nil || *a.Registration == *b.Registration
}
