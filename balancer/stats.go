package balancer

import "sync"

// stats holds the engine's counters that are not per backend. The admin
// package exports them as metrics.
type stats struct {
	mu      sync.Mutex
	unclass map[[2]string]uint64 // (service, reason) -> clients
	noBack  map[string]uint64    // service -> new clients reset for want of a usable backend
}

func (s *stats) noBackend(service string) {
	s.mu.Lock()
	if s.noBack == nil {
		s.noBack = map[string]uint64{}
	}
	s.noBack[service]++
	s.mu.Unlock()
}

func (s *stats) unclassified(service, reason string) {
	s.mu.Lock()
	if s.unclass == nil {
		s.unclass = map[[2]string]uint64{}
	}
	s.unclass[[2]string{service, reason}]++
	s.mu.Unlock()
}

// Unclassified returns how many clients of each (service, reason) could not
// be classified.
func (e *Engine) Unclassified() map[[2]string]uint64 {
	e.stats.mu.Lock()
	defer e.stats.mu.Unlock()
	out := make(map[[2]string]uint64, len(e.stats.unclass))
	for k, v := range e.stats.unclass {
		out[k] = v
	}
	return out
}
