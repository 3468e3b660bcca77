package balancer

import (
	"maps"
	"sync"
	"sync/atomic"
	"time"
)

// Results of a new client's classification, as Status.Classified counts them.
const (
	ResultPinned    = "pinned"     // classified and pinned
	ResultNoBackend = "no-backend" // its pool had no usable backend: reset, not pinned
	ResultNoRoute   = "no-route"   // no route matched and the service has no default pool: reset
	ResultPinFailed = "pin-failed" // the data plane failed to pin (an error): reset
	// ResultFull: the backend's set (the affinity table) was full; the
	// client was served as on_full says (proxied without a pin, or reset).
	ResultFull = "full"
	// ResultOverBudget: the client's network had spent its pin budget;
	// served as on_full says.
	ResultOverBudget = "over-budget"
	// "unclassified/<reason>": the key could not be read; the client went to
	// the default pool. "rejected/<reason>": the same with
	// on_unclassified: reject (reset, not pinned). Reasons are those of
	// classifier.Reason: no-match, timeout, too-long, malformed, closed.
)

// FirstOutcome is how a new client's first connection was served.
type FirstOutcome int

// First-connection outcomes, as Status.FirstConnections names them.
const (
	// FirstInKernel: its SYN was held in the kernel until the pin existed,
	// then took the DNAT rule like every later connection (classify:
	// source, kernel mode); the listener never saw it.
	FirstInKernel FirstOutcome = iota
	// FirstTransparent: proxied from the client's own address (kernel
	// mode), so the backend sees the client on every connection.
	FirstTransparent
	// FirstProxied: proxied from this host's address (userspace mode,
	// snat services, or where transparent dials are unavailable).
	FirstProxied
	// FirstReset: reset (first_connection: reset); the retry goes in-kernel.
	FirstReset
	firstOutcomes
)

var firstNames = [firstOutcomes]string{"in-kernel", "transparent", "proxied", "reset"}

func (o FirstOutcome) String() string { return firstNames[o] }

// stats holds the engine's counters that are not per backend. The admin
// package exports them as metrics.
type stats struct {
	mu      sync.Mutex
	svcs    map[string]*serviceCounters // kept across reloads by service name
	migr    map[string]*migrationStats
	reloads map[string]uint64 // ok | invalid | failed
}

type migrationStats struct {
	count   uint64
	clients uint64
	took    time.Duration
}

// serviceCounters counts a service's new clients by result. The common
// results are atomics, bumped on the accept path without a lock; the
// unclassified ones, keyed by reason, take a lock.
type serviceCounters struct {
	pinned, noBackend, noRoute, pinFailed, full, overBudget atomic.Uint64
	first                                                   [firstOutcomes]atomic.Uint64

	mu      sync.Mutex
	unclass map[string]uint64 // "unclassified/<reason>" or "rejected/<reason>"
}

// service returns the counters of a service, created on first use; a
// service object caches the pointer.
func (s *stats) service(name string) *serviceCounters {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.svcs == nil {
		s.svcs = map[string]*serviceCounters{}
	}
	c := s.svcs[name]
	if c == nil {
		c = &serviceCounters{}
		s.svcs[name] = c
	}
	return c
}

func (c *serviceCounters) unclassified(reason string, rejected bool) {
	k := "unclassified/" + reason
	if rejected {
		k = "rejected/" + reason
	}
	c.mu.Lock()
	if c.unclass == nil {
		c.unclass = map[string]uint64{}
	}
	c.unclass[k]++
	c.mu.Unlock()
}

// results returns the non-zero counts by result.
func (c *serviceCounters) results() map[string]uint64 {
	c.mu.Lock()
	out := maps.Clone(c.unclass)
	c.mu.Unlock()
	if out == nil {
		out = map[string]uint64{}
	}
	for k, v := range map[string]uint64{ResultPinned: c.pinned.Load(), ResultNoBackend: c.noBackend.Load(), ResultNoRoute: c.noRoute.Load(), ResultPinFailed: c.pinFailed.Load(),
		ResultFull: c.full.Load(), ResultOverBudget: c.overBudget.Load()} {
		if v > 0 {
			out[k] = v
		}
	}
	return out
}

func (s *stats) migration(service string, clients int, took time.Duration) {
	s.mu.Lock()
	if s.migr == nil {
		s.migr = map[string]*migrationStats{}
	}
	m := s.migr[service]
	if m == nil {
		m = &migrationStats{}
		s.migr[service] = m
	}
	m.count++
	m.clients += uint64(clients)
	m.took += took
	s.mu.Unlock()
}

func (s *stats) reload(result string) {
	s.mu.Lock()
	if s.reloads == nil {
		s.reloads = map[string]uint64{}
	}
	s.reloads[result]++
	s.mu.Unlock()
}

// fill copies the counters of service into ss.
func (s *stats) fill(ss *ServiceStatus) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ss.FirstConnections = map[string]uint64{}
	for _, n := range firstNames {
		ss.FirstConnections[n] = 0
	}
	if c := s.svcs[ss.Name]; c != nil {
		ss.Classified = c.results()
		for i := range c.first {
			ss.FirstConnections[firstNames[i]] = c.first[i].Load()
		}
	} else {
		ss.Classified = map[string]uint64{}
	}
	if m := s.migr[ss.Name]; m != nil {
		ss.Migrations, ss.MigratedClients, ss.MigrationSeconds = m.count, m.clients, m.took.Seconds()
	}
}

func (s *stats) reloadCounts() map[string]uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]uint64{"ok": 0, "invalid": 0, "failed": 0}
	maps.Copy(out, s.reloads)
	return out
}
