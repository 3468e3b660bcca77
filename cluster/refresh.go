package cluster

import (
	"context"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/handoff-lb/handoff/dataplane"
)

// refreshSlack is how much later than etcd's a pin's expiry in this host's
// data plane must be before it counts as refreshed here: the kernel's
// timeouts have whole seconds.
const refreshSlack = 2 * time.Second

// refreshLoop keeps the pins of clients this host forwards alive in etcd
// (see refresh).
func (n *Node) refreshLoop(ctx context.Context, eng Engine) {
	for {
		if !sleep(ctx, n.refreshEvery(eng)) {
			return
		}
		n.refresh(ctx, eng)
	}
}

// refreshEvery is RefreshInterval, shortened to a quarter of the shortest
// client TTL, so a refreshed pin is written again well before it would
// expire elsewhere.
func (n *Node) refreshEvery(eng Engine) time.Duration {
	every := n.cfg.RefreshInterval
	ttls := eng.Services()
	n.ttls.Store(&ttls)
	for _, ttl := range ttls {
		if ttl > 0 {
			every = min(every, max(ttl/4, time.Second))
		}
	}
	return every
}

// refresh reads every pin of this host's data plane with its remaining
// lifetime. The kernel's SET rule restarts a pin's timeout on each new
// connection that this host forwards; a pin whose expiry here is later
// than etcd's by more than a quarter of its TTL is written again with the
// new expiry, so a client active anywhere stays pinned everywhere, for one
// write per active client per TTL/4. Pins the Node did not know (adopted
// from the kernel at start, made while it was not running) are published;
// an entry of a client in another backend's set than the one etcd gives
// (left over by a move) is removed.
func (n *Node) refresh(ctx context.Context, eng Engine) {
	start := n.now()
	var stale []dataplane.Pin
	republished, adopted := 0, 0
	for svc, ttl := range eng.Services() {
		if ttl == 0 {
			continue
		}
		threshold := max(refreshSlack, ttl/4).Milliseconds()
		err := eng.PinReader().Pins(ctx, svc, "", func(p dataplane.Pin) error {
			pk := pinKey{svc, p.Client.Unmap()}
			exp := start.Add(p.TTL).UnixMilli()
			if p.TTL == 0 {
				return nil // about to expire
			}
			n.mu.Lock()
			defer n.mu.Unlock()
			lp, have := n.local[pk]
			switch {
			case !have:
				lp = localPin{backend: p.Backend, key: p.Key, expires: exp, refreshed: exp}
				n.local[pk] = lp
				n.queuePinLocked(pk, lp, start)
				adopted++
			case lp.backend != p.Backend:
				stale = append(stale, dataplane.Pin{Service: svc, Backend: p.Backend, Client: pk.client})
			case lp.expires != 0 && exp > lp.expires+threshold:
				lp.expires, lp.refreshed = exp, exp
				n.local[pk] = lp
				n.queuePinLocked(pk, lp, start)
				republished++
			default:
				lp.refreshed = exp
				n.local[pk] = lp
			}
			return nil
		})
		if err != nil && ctx.Err() == nil {
			n.log.WithError(err).WithField("service", svc).Warn("reading pins to refresh them in etcd")
		}
	}
	if republished+adopted > 0 {
		n.mu.Lock()
		n.kickLocked()
		n.mu.Unlock()
	}
	if len(stale) > 0 {
		// A client's pin read in another backend than the Node knows may
		// be a move or a new pin that the engine has written and not yet
		// reported: that one is kept. RemoveLeftovers asks again once
		// every such change is reported.
		stillStale := func(p dataplane.Pin) bool {
			n.mu.Lock()
			defer n.mu.Unlock()
			lp, have := n.local[pinKey{p.Service, p.Client}]
			return have && lp.backend != p.Backend
		}
		if err := eng.RemoveLeftovers(ctx, stale, stillStale); err != nil && ctx.Err() == nil {
			n.log.WithError(err).Warn("removing pins left in a backend's set by a move")
		}
	}
	swept := n.sweep(start)
	n.stats.refreshed.Add(uint64(republished))
	if republished+adopted+len(stale)+swept > 0 {
		n.log.WithFields(logrus.Fields{"refreshed": republished, "adopted": adopted, "stale_removed": len(stale), "forgotten": swept, "took": time.Since(start).Round(time.Millisecond)}).Debug("pins refreshed in etcd")
	}
}

// sweep forgets the pins that expired everywhere before start: in this
// host's data plane (the pass that read it would have seen one refreshed
// there) and in etcd, where the deletion of their page did not reach this
// host (etcd unreachable or its history compacted meanwhile) or where
// they were never written (expired in the queue). It walks the whole
// index under the lock: 16 ms for 565,000 pins (about 30 ms per million)
// on the 2-vCPU VM.
func (n *Node) sweep(start time.Time) int {
	cut := start.UnixMilli() - refreshSlack.Milliseconds()
	n.mu.Lock()
	defer n.mu.Unlock()
	swept := 0
	for pk, lp := range n.local {
		if lp.expires != 0 && max(lp.expires, lp.refreshed) < cut && !n.queuedLocked(n.k.pin(pk.service, pk.client)) {
			delete(n.local, pk)
			swept++
		}
	}
	return swept
}
