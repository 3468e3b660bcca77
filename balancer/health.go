package balancer

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/handoff-lb/handoff/classifier"
	"github.com/handoff-lb/handoff/config"
	"github.com/handoff-lb/handoff/dataplane"
	"github.com/handoff-lb/handoff/healthcheck"
)

// healthTargets lists every backend of cfg for the health monitor.
func healthTargets(cfg *config.Config) []healthcheck.Target {
	var ts []healthcheck.Target
	for i := range cfg.Services {
		sc := &cfg.Services[i]
		for _, p := range sc.Pools {
			for _, b := range p.Backends {
				ts = append(ts, healthcheck.Target{Service: sc.Name, Backend: b.Name, Addr: b.Address, Health: sc.Health})
			}
		}
	}
	return ts
}

// onHealth applies a health transition. The monitor calls it from one
// goroutine, in order, so migrations of a service never overlap.
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
		moved, kept, flows, took, err := s.evacuate(ctx, b)
		log = log.WithFields(logrus.Fields{"moved": moved, "kept": kept, "flows_cut": flows, "took": took.Round(time.Microsecond)})
		if err != nil {
			log.WithError(err).Error("backend down; migration incomplete")
			return
		}
		log.Warn("backend down")
		return
	}
	moved, took, err := s.failback(ctx, b)
	log = log.WithFields(logrus.Fields{"moved_back": moved, "took": took.Round(time.Microsecond)})
	if err != nil {
		log.WithError(err).Error("backend up; failback incomplete")
		return
	}
	log.Info("backend up")
}

// keyOf recovers a pin's classification key from its label ("sni=a.example"
// → "a.example"); a source label gives the client address.
func keyOf(p dataplane.Pin) string {
	if strings.HasPrefix(p.Key, "src=") || p.Key == "" {
		return classifier.SourceKey(p.Client)
	}
	_, k, _ := strings.Cut(p.Key, "=")
	return k
}

// evacuate moves the clients of a down backend. With on_backend_down: rehash
// each is pinned to the backend its pool's policy now picks (added there
// before it is removed here, keeping its remaining TTL and label), or kept
// when the pool has no usable backend. With reclassify each is unpinned, so
// its next connection is classified afresh. Then the backend's conntrack
// entries are dropped so broken flows end now and new ones take the new path.
func (s *service) evacuate(ctx context.Context, b *backend) (moved, kept, flows int, took time.Duration, err error) {
	start := time.Now()
	snap := s.snap.Load()
	var pins []dataplane.Pin
	if err := s.e.dp.Pins(ctx, s.name, b.name, func(p dataplane.Pin) error {
		pins = append(pins, p)
		return nil
	}); err != nil {
		return 0, 0, 0, time.Since(start), err
	}
	pool := snap.router.Pool(b.pool)
	var errs []error
	for _, p := range pins {
		if snap.cfg.OnBackendDown == "reclassify" || pool == nil {
			if err := s.e.dp.Unpin(ctx, s.name, b.name, p.Client); err != nil {
				errs = append(errs, err)
				continue
			}
			moved++
			continue
		}
		nb, err := pool.PickExcept(keyOf(p), s.e.view, b.name)
		if err != nil {
			kept++ // no usable backend: the pin stays
			continue
		}
		if err := s.move(ctx, p, b, nb.Name); err != nil {
			errs = append(errs, err)
			continue
		}
		moved++
	}
	if kept > 0 {
		s.log.WithFields(logrus.Fields{"backend": b.name, "pool": b.pool, "clients": kept}).Warn("pool has no usable backend: its pins stay; new clients are reset")
	}
	n, err := s.e.dp.Forget(ctx, s.name, b.name)
	if err != nil {
		errs = append(errs, err)
	}
	b.pins.Store(int64(kept))
	return moved, kept, n, time.Since(start), errors.Join(errs...)
}

// move re-pins p from backend from to backend to: add first, then delete, so
// the client is never without a pin.
func (s *service) move(ctx context.Context, p dataplane.Pin, from *backend, to string) error {
	np := p
	np.Backend = to
	if np.TTL == 0 && s.snap.Load().cfg.ClientTTL > 0 {
		np.TTL = time.Second // a pin listed without a timeout in a set with one is about to expire
	}
	if err := s.e.dp.Pin(ctx, np); err != nil {
		return err
	}
	if nb := s.backend(to); nb != nil {
		nb.pins.Add(1)
	}
	if err := s.e.dp.Unpin(ctx, s.name, from.name, p.Client); err != nil {
		return err
	}
	from.pins.Add(-1)
	return nil
}

// failback moves clients to a backend that came back, in pools with
// failback: each pin of another backend of the pool whose policy now picks b
// moves to b. Their conntrack entries stay, so live flows finish where they
// are.
func (s *service) failback(ctx context.Context, b *backend) (moved int, took time.Duration, err error) {
	start := time.Now()
	snap := s.snap.Load()
	pool := snap.router.Pool(b.pool)
	pc := snap.cfg.Pool(b.pool)
	if pool == nil || pc == nil || !pc.Failback {
		return 0, 0, nil
	}
	var errs []error
	for _, other := range pc.Backends {
		if other.Name == b.name {
			continue
		}
		from := s.backend(other.Name)
		if from == nil {
			continue
		}
		var pins []dataplane.Pin
		if err := s.e.dp.Pins(ctx, s.name, other.Name, func(p dataplane.Pin) error {
			pins = append(pins, p)
			return nil
		}); err != nil {
			errs = append(errs, err)
			continue
		}
		for _, p := range pins {
			nb, err := pool.Pick(keyOf(p), s.e.view)
			if err != nil || nb.Name != b.name {
				continue
			}
			if err := s.move(ctx, p, from, b.name); err != nil {
				errs = append(errs, err)
				continue
			}
			moved++
		}
	}
	return moved, time.Since(start), errors.Join(errs...)
}
