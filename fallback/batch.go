package fallback

import (
	"context"
	"errors"
	"fmt"

	"github.com/handoff-lb/handoff/dataplane"
)

// PinBatch pins every p as Pin does. A table in memory gains nothing from
// batching; the method exists so the balancer migrates clients the same way
// on both data planes. It tries every pin and returns the errors joined.
func (d *Dataplane) PinBatch(ctx context.Context, pins []dataplane.Pin) error {
	var errs []error
	failed := 0
	for _, p := range pins {
		if err := d.Pin(ctx, p); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			failed++
			if len(errs) < 3 {
				errs = append(errs, err)
			}
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d pins failed: %w", failed, len(pins), errors.Join(errs...))
	}
	return nil
}

// Flush removes every pin of one backend of a service. An undeclared
// service or backend wraps dataplane.ErrUnknown.
func (d *Dataplane) Flush(ctx context.Context, service, backendName string) error {
	_, b, err := d.cfg.Load().lookupBackend(service, backendName)
	if err != nil {
		return err
	}
	for i := range d.shards {
		if err := ctx.Err(); err != nil {
			return err
		}
		sh := &d.shards[i]
		sh.mu.Lock()
		for k, e := range sh.pins {
			if k.service == service && e.backend == b {
				delete(sh.pins, k)
				b.pins.Add(-1)
				sh.dirty.Store(true)
			}
		}
		sh.mu.Unlock()
	}
	return nil
}

// Count returns the number of pins per backend of service. Pins that
// expired but were not swept yet (at most sweepInterval old) are counted,
// as the kernel counts set entries until its garbage collector runs.
func (d *Dataplane) Count(ctx context.Context, service string) (map[string]int, error) {
	svc := d.cfg.Load().service(service)
	if svc == nil {
		return nil, fmt.Errorf("service %q: %w", service, dataplane.ErrUnknown)
	}
	out := make(map[string]int, len(svc.backends))
	for name, b := range svc.backends {
		out[name] = int(b.pins.Load())
	}
	return out, nil
}
