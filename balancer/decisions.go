package balancer

import (
	"context"
	"net/netip"
	"sync"
	"time"
)

// decisions makes the decision about a new client once, however many of
// its connections race in: the first connection classified (through the
// listener, or a held SYN) pins the client; the others, classified by
// then, wait only for that pin and follow its decision. A decision is
// remembered for a few seconds after it is made, for connections whose
// SYN passed the kernel's rules before the pin existed and which the
// listener accepts after.
//
// Memory is bounded: decisions live in two generations, swapped every
// recentFor or once the newer one holds maxRecent clients, so at most
// 2·maxRecent are remembered.
type decisions struct {
	mu        sync.Mutex
	cur, prev map[netip.Addr]*flight
	swapped   time.Time
}

const (
	// recentFor is how long a decision is remembered, at least.
	recentFor = 2 * time.Second
	// maxRecent bounds each generation.
	maxRecent = 1 << 16
)

// flight is one decision in flight or made.
type flight struct {
	done chan struct{} // closed by finish
	d    decision
	ok   bool // d holds a pinned decision
}

// begin returns the flight of client and whether the caller leads it:
// a leader decides and calls finish; the others call wait.
func (ds *decisions) begin(client netip.Addr) (f *flight, leader bool) {
	ds.mu.Lock()
	defer ds.mu.Unlock()
	if now := time.Now(); ds.cur == nil || now.Sub(ds.swapped) > recentFor || len(ds.cur) >= maxRecent {
		ds.prev, ds.cur, ds.swapped = ds.cur, make(map[netip.Addr]*flight), now
	}
	if f := ds.cur[client]; f != nil {
		return f, false
	}
	if f := ds.prev[client]; f != nil {
		return f, false
	}
	f = &flight{done: make(chan struct{})}
	ds.cur[client] = f
	return f, true
}

// finish records the leader's decision (ok: pinned) and wakes the waiters.
// A failed decision is forgotten, so the next connection decides afresh.
func (ds *decisions) finish(client netip.Addr, f *flight, d decision, ok bool) {
	f.d, f.ok = decision{backend: d.backend, key: d.key, label: d.label}, ok // not the leader's peeked bytes
	close(f.done)
	if ok {
		return
	}
	ds.mu.Lock()
	if ds.cur[client] == f {
		delete(ds.cur, client)
	}
	if ds.prev[client] == f {
		delete(ds.prev, client)
	}
	ds.mu.Unlock()
}

// forget drops the decision about client (its pin was removed: unpinned
// by hand, moved by a migration), so that its next connection decides.
func (ds *decisions) forget(client netip.Addr) {
	ds.mu.Lock()
	delete(ds.cur, client)
	delete(ds.prev, client)
	ds.mu.Unlock()
}

// wait returns the leader's decision once it is made; ok is false when
// the leader failed or ctx ended first.
func (f *flight) wait(ctx context.Context) (decision, bool) {
	select {
	case <-f.done:
		return f.d, f.ok
	case <-ctx.Done():
		return decision{}, false
	}
}
