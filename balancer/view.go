package balancer

import (
	"sync"
	"sync/atomic"
)

// view implements classifier.View over the engine's backends. Generation
// changes whenever a backend's usability changes, so policies can cache
// tables per generation.
type view struct {
	gen      atomic.Uint64
	mu       sync.RWMutex
	services map[string]map[string]*backend
	kernel   bool // Load counts pins (kernel mode) rather than live connections
}

func newView(kernel bool) *view {
	return &view{services: map[string]map[string]*backend{}, kernel: kernel}
}

func (v *view) lookup(service, name string) *backend {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.services[service][name]
}

// Usable reports whether a backend may receive new clients.
func (v *view) Usable(service, name string) bool {
	b := v.lookup(service, name)
	return b != nil && b.usable()
}

// Load is the least-conn measure: live proxied connections in userspace
// mode, pins in kernel mode.
func (v *view) Load(service, name string) int {
	b := v.lookup(service, name)
	if b == nil {
		return 0
	}
	if v.kernel {
		return int(b.pins.Load())
	}
	return int(b.active.Load())
}

// Generation changes whenever usability of any backend changes.
func (v *view) Generation() uint64 { return v.gen.Load() }

func (v *view) bump() { v.gen.Add(1) }

// set replaces the backends of a service, keeping the state of backends
// that remain (same name, address and pool). A backend whose address or
// pool changed gets a new record (handlers of the old one keep it) that
// carries the old one's health, pins and totals: the health monitor keeps
// a target's state across an address change, so a backend down before is
// down until checks of its new address bring it up.
func (v *view) set(service string, bs []*backend) map[string]*backend {
	v.mu.Lock()
	defer v.mu.Unlock()
	old := v.services[service]
	m := make(map[string]*backend, len(bs))
	for _, b := range bs {
		if o := old[b.name]; o != nil && o.addr == b.addr && o.pool == b.pool {
			b = o // handlers read addr and pool without a lock: never change them
		} else if o != nil {
			b.carryOver(o)
		}
		m[b.name] = b
	}
	v.services[service] = m
	v.gen.Add(1)
	return m
}

func (v *view) remove(service string) {
	v.mu.Lock()
	delete(v.services, service)
	v.mu.Unlock()
	v.gen.Add(1)
}
