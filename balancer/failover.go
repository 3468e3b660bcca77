package balancer

import (
	"time"

	"github.com/sirupsen/logrus"

	"github.com/handoff-lb/handoff/config"
	"github.com/handoff-lb/handoff/healthcheck"
)

// healthTargets lists every backend of cfg for the health monitor.
func healthTargets(cfg *config.Config) []healthcheck.Target {
	var ts []healthcheck.Target
	for i := range cfg.Services {
		sc := &cfg.Services[i]
		for _, p := range sc.Pools {
			for _, b := range p.Backends {
				ts = append(ts, healthcheck.Target{Service: sc.Name, Backend: b.Name, Addr: b.Address, Health: sc.Health, ProxyProtocol: sc.ProxyProtocol})
			}
		}
	}
	return ts
}

// onHealth applies a health transition: a backend that went down has its
// clients migrated, one that came back takes back those its pool's
// failback gives it. The healthQueue calls it from one goroutine per
// service, so a service's migrations never overlap (migrateMu serializes
// them with drains as well), and services do not wait for each other.
func (e *Engine) onHealth(ev healthcheck.Event) {
	e.mu.Lock()
	s, ctx := e.services[ev.Service], e.runCtx
	e.mu.Unlock()
	if s == nil || ctx == nil {
		return
	}
	b := s.backend(ev.Backend)
	if b == nil {
		return
	}
	b.mu.Lock()
	b.changedAt, b.reason = ev.At, ev.Reason
	b.mu.Unlock()
	b.down.Store(!ev.Up)
	e.view.bump()
	log := s.log.WithFields(logrus.Fields{"backend": b.name, "reason": ev.Reason, "after": ev.Since.Round(time.Millisecond)})
	if !ev.Up {
		res, err := s.migrate(ctx, b, true)
		e.stats.migration(s.name, res.moved, res.took)
		log = log.WithFields(logrus.Fields{"moved": res.moved, "kept": res.kept, "flows_cut": res.flows, "took": res.took.Round(time.Microsecond)})
		if err != nil {
			log.WithError(err).Error("backend down; migration incomplete")
			return
		}
		log.Warn("backend down")
		return
	}
	moved, took, err := s.failback(ctx, b)
	if moved > 0 {
		e.stats.migration(s.name, moved, took)
	}
	log = log.WithFields(logrus.Fields{"moved_back": moved, "took": took.Round(time.Microsecond)})
	if err != nil {
		log.WithError(err).Error("backend up; failback incomplete")
		return
	}
	log.Info("backend up")
}
