package balancer

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/handoff-lb/handoff/proxy"
)

// backend is the runtime state of one backend of one service. The fields
// behind atomics are read on the accept path without locks.
type backend struct {
	name string
	addr netip.AddrPort
	pool string

	down     atomic.Bool // health says down
	draining atomic.Bool // no new clients
	active   atomic.Int64
	pins     atomic.Int64 // kernel mode: set members at the last recount plus pins made since
	// flow counts the proxied bytes as they move (the routes to this
	// backend name it).
	flow  proxy.Flow
	conns atomic.Uint64 // proxied connections served

	mu        sync.Mutex
	changedAt time.Time // last health transition
	reason    string    // last health reason
}

func (b *backend) usable() bool { return !b.down.Load() && !b.draining.Load() }

// carryOver gives a new record of a backend (its address changed) the
// state of the old one o, but not o's live connections, which end on o.
func (b *backend) carryOver(o *backend) {
	b.down.Store(o.down.Load())
	b.draining.Store(o.draining.Load())
	b.pins.Store(o.pins.Load())
	b.flow.ClientToBackend.Store(o.flow.ClientToBackend.Load())
	b.flow.BackendToClient.Store(o.flow.BackendToClient.Load())
	b.conns.Store(o.conns.Load())
	o.mu.Lock()
	b.changedAt, b.reason = o.changedAt, o.reason
	o.mu.Unlock()
}
