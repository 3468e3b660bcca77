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
	mu         sync.Mutex
	svcs       map[string]*serviceCounters // kept across reloads by service name
	migr       map[string]*migrationStats
	reloads    map[string]uint64 // ok | invalid | failed
	lastReload *ReloadResult
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
	added, unpinned                                         atomic.Uint64 // pins made (new clients, by hand), removed through the API

	// expiry derives PinsExpired from the pin counts; Status updates it.
	expiryMu sync.Mutex
	expiry   expiry

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
	s.lastReload = &ReloadResult{OK: result == "ok", At: time.Now()}
	s.mu.Unlock()
}

func (s *stats) lastReloadResult() *ReloadResult {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lastReload == nil {
		return nil
	}
	r := *s.lastReload
	return &r
}

// expiry derives how many pins ended without the engine removing them:
// between two looks, the pins that should be there (those seen last time,
// plus those added, less those unpinned through the API) but are not.
type expiry struct {
	seen                  bool
	live, added, unpinned uint64 // at the last look
	expired               uint64
}

// observeExpiry updates the expiry count of c from live, the service's pin
// count, read between the counter readings addedBefore and c.added's value
// now: pins added meanwhile may or may not be in live, so that many are
// forgiven.
func (c *serviceCounters) observeExpiry(live int64, addedBefore uint64) uint64 {
	added, unpinned := c.added.Load(), c.unpinned.Load()
	c.expiryMu.Lock()
	defer c.expiryMu.Unlock()
	x := &c.expiry
	l := uint64(max(live, 0))
	if x.seen {
		want := int64(x.live) + int64(added-x.added) - int64(unpinned-x.unpinned)
		if gone := want - int64(l) - int64(added-addedBefore); gone > 0 {
			x.expired += uint64(gone)
		}
	}
	x.seen, x.live, x.added, x.unpinned = true, l, added, unpinned
	return x.expired
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
	if c := s.svcs[ss.Name]; c != nil {
		ss.PinsAdded, ss.PinsUnpinned = c.added.Load(), c.unpinned.Load()
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
