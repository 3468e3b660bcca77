package balancer

import (
	"context"
	"time"

	"github.com/handoff-lb/handoff/dataplane"
)

// bindHeld binds the data plane's held-SYN queue when the engine is to
// hold SYNs and the data plane can, and returns the function that serves
// it (nil when SYNs are not held). It runs before the first Sync, which
// asks for the queue rules only once the queue is bound: rules sending
// SYNs to a queue that another process reads would hand it new clients.
func (e *Engine) bindHeld() func(context.Context, func(context.Context, dataplane.HeldSYN) (string, bool)) error {
	if !e.holdSYNs {
		return nil
	}
	h, ok := e.raw.(SYNHolder) // not the replicating wrapper
	if !ok {
		return nil
	}
	serve, err := h.HoldSYNs()
	if err != nil {
		e.log.WithError(err).Warn("cannot hold new clients' first SYNs: source-classified services meet them in the listener")
		return nil
	}
	e.holding.Store(true)
	return serve
}

// decideHeld decides about the client of a held SYN: it follows a decision
// made or in flight for the client, or classifies it by its address and
// pins it. The kernel then releases the SYN to the backend returned.
func (e *Engine) decideHeld(ctx context.Context, syn dataplane.HeldSYN) (string, bool) {
	start := time.Now()
	e.mu.Lock()
	s := e.services[syn.Service]
	e.mu.Unlock()
	if s == nil {
		return "", false
	}
	snap := s.snap.Load()
	log := &connLog{s: s, client: syn.Client}
	key := dataplane.PinKey(syn.Client, snap.cfg.IPv6PinPrefix)
	f, leader := s.decisions.begin(key)
	if !leader {
		d, ok := f.wait(ctx)
		if !ok || d.backend.down.Load() {
			return "", false // the listener meets the SYN
		}
		return d.backend.name, true
	}
	d, err := s.decideSource(snap, syn.Client)
	if err == nil {
		err = s.pin(ctx, snap, d, key, start, log, true)
	} else {
		s.unclassified(err, d, log)
	}
	s.decisions.finish(key, f, d, err == nil)
	if err != nil {
		return "", false
	}
	s.counts.first[FirstInKernel].Add(1)
	return d.backend.name, true
}
