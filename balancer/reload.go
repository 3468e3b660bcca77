package balancer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/handoff-lb/handoff/config"
	"github.com/handoff-lb/handoff/dataplane"
)

// Reload applies cfg to a running engine. Services whose listen address is
// unchanged keep their listener, pins and live connections; new services
// open their listener; removed ones close theirs. The data plane is synced
// twice: first to the union of old and new state (new sets and rules exist
// before anyone pins into them), then, once no handler can pick a removed
// backend, to the new state alone.
//
// A new listener that cannot be opened, or a first sync that fails, rejects
// the reload whole: the running config stays. A second sync that fails
// does not: the new config runs, and removing the old state is retried.
//
// cfg is the config file's content; backends registered through the API are
// added to it (Status shows them as registered).
func (e *Engine) Reload(ctx context.Context, cfg *config.Config) error {
	e.reloadMu.Lock()
	defer e.reloadMu.Unlock()
	eff, skipped := effective(cfg, &e.rt)
	for _, s := range skipped {
		e.log.WithField("registration", s).Warn("registered backend not applied")
	}
	if err := e.apply(ctx, eff); err != nil {
		e.stats.reload("failed")
		return err
	}
	e.fileCfg = cfg
	e.stats.reload("ok")
	return nil
}

// ReloadConfig re-reads the config file with Options.LoadConfig and applies
// it with Reload. An invalid file changes nothing; the error wraps
// ErrInvalid and lists every problem.
func (e *Engine) ReloadConfig(ctx context.Context) error {
	if e.load == nil {
		return fmt.Errorf("%w: this engine has no config file to reload", ErrConflict)
	}
	cfg, err := e.load()
	if err != nil {
		e.stats.reload("invalid")
		e.log.WithError(err).Error("reload rejected: the running config stays")
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if err := e.Reload(ctx, cfg); err != nil {
		e.log.WithError(err).Error("reload failed: the running config stays")
		return err
	}
	return nil
}

// apply makes cfg, an effective config, the running one; reloadMu is held.
func (e *Engine) apply(ctx context.Context, cfg *config.Config) error {
	e.mu.Lock()
	runCtx, old, oldCfg := e.runCtx, e.services, e.cfg
	e.mu.Unlock()
	if runCtx == nil || e.health.Load() == nil {
		return errors.New("engine is not running")
	}

	start := time.Now()
	type kept struct {
		s    *service
		snap *snapshot
	}
	var keep []kept
	var opened []*service
	fail := func(err error) error {
		closeAll(opened)
		return err
	}
	for i := range cfg.Services {
		sc := &cfg.Services[i]
		snap, err := newSnapshot(sc)
		if err != nil {
			return fail(err)
		}
		if s := old[sc.Name]; s != nil {
			// One limiter per service for its life: the connections open
			// now count against the new max_connections (install sets it).
			snap.limit = s.snap.Load().limit
		}
		if s := old[sc.Name]; s != nil && s.snap.Load().cfg.Listen == sc.Listen {
			keep = append(keep, kept{s, snap})
			continue
		}
		s := e.allocService(sc.Name)
		s.snap.Store(snap)
		if !e.rt.closed(sc.Name) {
			if err := s.open(ctx); err != nil {
				return fail(err)
			}
		}
		opened = append(opened, s)
	}

	built := time.Now()
	if err := e.dp.Sync(ctx, union(e.desired(oldCfg), e.desired(cfg))); err != nil {
		// The running config stays, so the data plane must too: a kernel
		// data plane keeps retrying the last state it was given (its
		// canary), and that must not be the rejected one.
		if rerr := e.dp.Sync(ctx, e.desired(oldCfg)); rerr != nil {
			e.log.WithError(rerr).Error("restoring the running config's data plane state after a failed sync; it is retried")
		}
		return fail(fmt.Errorf("data plane sync: %w", err))
	}
	synced := time.Now()

	next := make(map[string]*service, len(cfg.Services))
	for _, k := range keep {
		k.s.install(k.snap)
		next[k.s.name] = k.s
	}
	var gone []*service
	for name, s := range old {
		if next[name] == nil {
			gone = append(gone, s)
		}
	}
	closeAll(gone)
	for _, s := range gone {
		if cfg.Service(s.name) == nil {
			e.view.remove(s.name)
		}
	}
	for _, s := range opened {
		s.install(s.snap.Load())
		next[s.name] = s
		s.serve(runCtx)
	}
	e.mu.Lock()
	e.services = next
	e.cfg = cfg
	e.mu.Unlock()

	if err := e.health.Load().Set(healthTargets(cfg)); err != nil {
		e.log.WithError(err).Error("health checks")
	}
	e.applyDrains()
	swapped := time.Now()
	if err := e.dp.Sync(ctx, e.desired(cfg)); err != nil {
		// The new config runs and is the one to keep (callers record it
		// only when apply succeeds); the old state's leftovers are
		// harmless, and the kernel data plane retries removing them (its
		// canary re-applies the last state it was given).
		e.log.WithError(err).Warn("new config is running; removing the old data plane state failed and is retried")
	}
	e.log.WithFields(map[string]any{
		"kept": len(keep), "opened": len(opened), "closed": len(gone),
		"took":       time.Since(start).Round(time.Millisecond),
		"build":      built.Sub(start).Round(time.Millisecond),
		"sync_add":   synced.Sub(built).Round(time.Millisecond),
		"swap":       swapped.Sub(synced).Round(time.Millisecond),
		"sync_prune": time.Since(swapped).Round(time.Millisecond),
	}).Info("reload applied")
	return nil
}

// union merges two states: every service of either, and for a service in
// both, b's settings with the backends of both (b's address wins).
func union(a, b dataplane.State) dataplane.State {
	out := dataplane.State{}
	idx := map[string]int{}
	for _, s := range b.Services {
		idx[s.Name] = len(out.Services)
		s.Backends = append([]dataplane.Backend(nil), s.Backends...)
		out.Services = append(out.Services, s)
	}
	for _, s := range a.Services {
		i, ok := idx[s.Name]
		if !ok {
			out.Services = append(out.Services, s)
			continue
		}
		if out.Services[i].Listen.Addr().Is4() != s.Listen.Addr().Is4() {
			continue // family changed: the old sets are of the other family; they go in the second sync
		}
		have := map[string]bool{}
		for _, be := range out.Services[i].Backends {
			have[be.Name] = true
		}
		for _, be := range s.Backends {
			if !have[be.Name] {
				out.Services[i].Backends = append(out.Services[i].Backends, be)
			}
		}
	}
	return out
}
