package balancer

import (
	"context"
	"fmt"
	"maps"
	"time"

	"github.com/handoff-lb/handoff/dataplane"
	"github.com/handoff-lb/handoff/healthcheck"
)

// Status returns the engine's current state. Pin counts come from the data
// plane (the sets' element counts in kernel mode).
func (e *Engine) Status(ctx context.Context) (Status, error) {
	e.mu.Lock()
	started := e.start
	e.mu.Unlock()
	st := Status{Mode: "userspace", State: e.State(), Version: e.version, Started: started, Reloads: e.stats.reloadCounts(), LastReload: e.stats.lastReloadResult()}
	if r, ok := e.dp.(syncStatser); ok {
		ss := r.SyncStats()
		st.Sync = &ss
	}
	if e.kernel {
		st.Mode = "kernel"
	}
	if !started.IsZero() {
		st.Uptime = time.Since(started).Seconds()
	}
	e.overloadStatus(&st)
	var fwd map[dataplane.BackendRef]Forwarded
	if e.forwarded != nil {
		var err error
		if fwd, err = e.forwarded(ctx); err != nil {
			e.log.WithError(err).Debug("reading the DNAT rules' counters")
		}
	}
	health := map[dataplane.BackendRef]healthcheck.Status{}
	if m := e.health.Load(); m != nil {
		for _, h := range m.Snapshot() {
			health[dataplane.BackendRef{Service: h.Service, Backend: h.Backend}] = h
		}
	}
	e.reloadMu.Lock()
	regs := map[dataplane.BackendRef]bool{}
	for _, r := range e.rt.Registrations {
		regs[dataplane.BackendRef{Service: r.Service, Backend: r.Name}] = true
	}
	e.reloadMu.Unlock()

	e.mu.Lock()
	cfg, svcs := e.cfg, maps.Clone(e.services)
	e.mu.Unlock()
	now := time.Now()
	for i := range cfg.Services {
		sc := &cfg.Services[i]
		s := svcs[sc.Name]
		if s == nil {
			continue
		}
		ss := ServiceStatus{
			Name:       sc.Name,
			Listen:     sc.Listen.String(),
			Classify:   string(sc.Classify),
			MaxClients: sc.MaxClients,
			OnFull:     string(sc.OnFull),
			Refused:    s.snap.Load().limit.Refused(),
		}
		if a := s.addr(); a != nil {
			ss.Open, ss.Listen = true, a.String()
		}
		addedBefore := s.counts.added.Load()
		counts, err := e.dp.Count(ctx, sc.Name)
		if err != nil {
			return Status{}, fmt.Errorf("service %s: counting pins: %w", sc.Name, err)
		}
		for _, p := range sc.Pools {
			for _, cb := range p.Backends {
				b := s.backend(cb.Name)
				if b == nil {
					continue
				}
				k := dataplane.BackendRef{Service: sc.Name, Backend: cb.Name}
				bs := BackendStatus{
					Name:         cb.Name,
					Address:      cb.Address.String(),
					Pool:         p.Name,
					Weight:       cb.Weight,
					Health:       "up",
					Draining:     b.draining.Load(),
					Registered:   regs[k],
					Pinned:       int64(counts[cb.Name]),
					Active:       b.active.Load(),
					Connections:  b.conns.Load(),
					BytesIn:      uint64(b.flow.ClientToBackend.Load()),
					BytesOut:     uint64(b.flow.BackendToClient.Load()),
					Packets:      fwd[k].Packets,
					ForwardBytes: fwd[k].Bytes,
				}
				if b.down.Load() {
					bs.Health = "down"
				}
				b.mu.Lock()
				bs.Since, bs.Reason = b.changedAt, b.reason
				b.mu.Unlock()
				if h, ok := health[k]; ok {
					bs.HealthChecks, bs.HealthFailedChecks, bs.HealthLatency = h.Checks, h.FailedChecks, h.Latency.Seconds()
					if bs.Since.IsZero() {
						bs.Since = h.Since
					}
					if !h.Expires.IsZero() {
						bs.ExpiresIn = max(0, h.Expires.Sub(now).Seconds())
					}
				}
				ss.Pinned += bs.Pinned
				ss.Active += bs.Active
				ss.Backends = append(ss.Backends, bs)
			}
		}
		e.stats.fill(&ss)
		ss.PinsExpired = s.counts.observeExpiry(ss.Pinned, addedBefore)
		st.Services = append(st.Services, ss)
	}
	return st, nil
}

// syncStatser is a data plane that counts its syncs (both do).
type syncStatser interface {
	SyncStats() dataplane.SyncStats
}
