package balancer

import (
	"maps"
	"sync"
	"time"
)

// Results of a new client's classification, as Status.Classified counts them.
const (
	ResultPinned    = "pinned"     // classified and pinned
	ResultNoBackend = "no-backend" // its pool had no usable backend: reset, not pinned
	ResultPinFailed = "pin-failed" // the data plane refused the pin (full table, error): reset
	// "unclassified/<reason>": the key could not be read; the client went to
	// the default pool. "rejected/<reason>": the same with
	// on_unclassified: reject (reset, not pinned). Reasons are those of
	// classifier.Reason: no-match, timeout, too-long, malformed, closed.
)

// stats holds the engine's counters that are not per backend. The admin
// package exports them as metrics.
type stats struct {
	mu      sync.Mutex
	results map[string]map[string]uint64 // service -> result -> clients
	migr    map[string]*migrationStats
	reloads map[string]uint64 // ok | invalid | failed
	unclass map[[2]string]uint64
}

type migrationStats struct {
	count   uint64
	clients uint64
	took    time.Duration
}

func (s *stats) result(service, result string) {
	s.mu.Lock()
	if s.results == nil {
		s.results = map[string]map[string]uint64{}
	}
	m := s.results[service]
	if m == nil {
		m = map[string]uint64{}
		s.results[service] = m
	}
	m[result]++
	s.mu.Unlock()
}

func (s *stats) noBackend(service string) { s.result(service, ResultNoBackend) }

func (s *stats) unclassified(service, reason string, rejected bool) {
	if rejected {
		s.result(service, "rejected/"+reason)
	} else {
		s.result(service, "unclassified/"+reason)
	}
	s.mu.Lock()
	if s.unclass == nil {
		s.unclass = map[[2]string]uint64{}
	}
	s.unclass[[2]string{service, reason}]++
	s.mu.Unlock()
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
	ss.Classified = maps.Clone(s.results[ss.Name])
	if ss.Classified == nil {
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

// Unclassified returns how many clients of each (service, reason) could not
// be classified.
func (e *Engine) Unclassified() map[[2]string]uint64 {
	e.stats.mu.Lock()
	defer e.stats.mu.Unlock()
	return maps.Clone(e.stats.unclass)
}
