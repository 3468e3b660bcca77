package balancer

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/handoff-lb/handoff/config"
	"github.com/handoff-lb/handoff/dataplane"
)

// Replicator learns of every change the engine makes to the state a
// cluster shares (DESIGN.md §8): pins made, moved and removed, and the
// runtime state changed through the control methods. Package cluster
// implements it; the engine never learns how the state travels.
//
// Each method is called after the change is in force, from the goroutine
// that made it. Implementations must be fast, safe for concurrent use, and
// must not call back into the engine. Changes the engine applies for the
// cluster (ApplyPins, ApplyUnpins, ApplyRuntime, Renew) are not reported,
// except the re-pins ApplyPins makes away from a backend that is down here.
type Replicator interface {
	// Pinned reports pins made or moved. TTL is the pin's lifetime from
	// now; 0 means it never expires.
	Pinned(pins []dataplane.Pin)
	// Unpinned reports client's pin in backend removed (absent is possible).
	Unpinned(service, backend string, client netip.Addr)
	// Flushed reports every pin of backend removed.
	Flushed(service, backend string)
	// RuntimeChanged reports the runtime state after a change through the
	// API: registrations, drains, closed listeners.
	RuntimeChanged(rt Runtime)
	// Renewed reports a heartbeat of a registered backend with a TTL.
	Renewed(service, backend string, ttl time.Duration)
}

// Runtime is the state changed through the control methods that a cluster
// shares: what RuntimeFile holds. Every slice is sorted.
type Runtime struct {
	Registrations []RegisteredBackend    `json:"registrations"`
	Drains        []dataplane.BackendRef `json:"drains"`
	Closed        []string               `json:"closed"` // services whose listener is closed
}

// RegisteredBackend is a backend added through the API, in Runtime.
type RegisteredBackend struct {
	Service string `json:"service"`
	Registration
}

// Runtime returns the current runtime state.
func (e *Engine) Runtime() Runtime {
	e.reloadMu.Lock()
	defer e.reloadMu.Unlock()
	return e.rt.export()
}

func (st *runtimeState) export() Runtime {
	rt := Runtime{Drains: slices.Clone(st.Drains), Closed: slices.Clone(st.Closed)}
	for _, r := range st.Registrations {
		rt.Registrations = append(rt.Registrations, RegisteredBackend{Service: r.Service, Registration: Registration{
			Name: r.Name, Address: r.Address, Weight: r.Weight, Pool: r.Pool, TTL: time.Duration(r.TTL),
		}})
	}
	return rt
}

func importRuntime(rt Runtime) runtimeState {
	st := runtimeState{Version: runtimeVersion, Drains: slices.Clone(rt.Drains), Closed: slices.Clone(rt.Closed)}
	for _, r := range rt.Registrations {
		st.Registrations = append(st.Registrations, registration{
			Service: r.Service, Name: r.Name, Address: r.Address, Weight: r.Weight, Pool: r.Pool, TTL: jsonDuration(r.TTL),
		})
	}
	slices.SortFunc(st.Registrations, func(a, b registration) int {
		return cmp.Or(cmp.Compare(a.Service, b.Service), cmp.Compare(a.Name, b.Name))
	})
	slices.SortFunc(st.Drains, func(a, b dataplane.BackendRef) int {
		return cmp.Or(cmp.Compare(a.Service, b.Service), cmp.Compare(a.Backend, b.Backend))
	})
	slices.Sort(st.Closed)
	st.Closed = slices.Compact(st.Closed)
	return st
}

// runtimeChanged reports the runtime state to the replicator; reloadMu is
// held.
func (e *Engine) runtimeChanged() {
	if e.repl != nil {
		e.repl.RuntimeChanged(e.rt.export())
	}
}

// ApplyRuntime makes the cluster's runtime state this host's: registrations
// are added, changed and removed, drains set and cleared, listeners closed
// and opened, and the result saved under state_dir. It is not reported to
// the Replicator. state is called under the lock that the control methods
// hold while they change the runtime state and report it, so no local
// change can slip between reading the cluster's state and applying it;
// it returns false when there is nothing to apply now. A registration this
// host cannot apply (its pool is not in this host's config file) is
// skipped and logged, as at start.
func (e *Engine) ApplyRuntime(ctx context.Context, state func() (Runtime, bool)) error {
	e.reloadMu.Lock()
	defer e.reloadMu.Unlock()
	rt, ok := state()
	if !ok {
		return nil
	}
	st := importRuntime(rt)
	if slices.Equal(st.Registrations, e.rt.Registrations) && slices.Equal(st.Drains, e.rt.Drains) && slices.Equal(st.Closed, e.rt.Closed) {
		return nil
	}
	var errs []error
	if !slices.Equal(st.Registrations, e.rt.Registrations) {
		eff, skipped := effective(e.fileCfg, &st)
		for _, s := range skipped {
			e.log.WithField("registration", s).Warn("registered backend from the cluster not applied")
		}
		if err := e.apply(ctx, eff); err != nil {
			return fmt.Errorf("applying the cluster's registrations: %w", err)
		}
		if m := e.health.Load(); m != nil {
			for _, r := range st.Registrations {
				if old := e.rt.registration(r.Service, r.Name); r.TTL > 0 && (old == nil || *old != r) {
					if err := m.Renew(r.Service, r.Name, time.Duration(r.TTL)); err != nil {
						e.log.WithError(err).Debug("registration TTL")
					}
				}
			}
		}
	}
	prevClosed := e.rt.Closed
	if err := saveRuntime(e.stateDir, st); err != nil {
		errs = append(errs, fmt.Errorf("saving the cluster's runtime state under state_dir: %w", err))
	}
	e.rt = st
	e.applyDrains()
	e.mu.Lock()
	svcs := make(map[string]*service, len(e.services))
	for n, s := range e.services {
		svcs[n] = s
	}
	e.mu.Unlock()
	for name, s := range svcs {
		was, now := slices.Contains(prevClosed, name), st.closed(name)
		switch {
		case now && !was:
			s.pause()
			s.log.Info("listener closed by the cluster")
		case !now && was:
			if err := s.resume(ctx); err != nil {
				errs = append(errs, fmt.Errorf("service %s: opening its listener: %w", name, err))
				continue
			}
			s.log.WithField("listen", s.addr()).Info("listener opened by the cluster")
		}
	}
	e.log.WithFields(logrus.Fields{"registrations": len(st.Registrations), "drains": len(st.Drains), "closed": len(st.Closed)}).Info("runtime state from the cluster applied")
	return errors.Join(errs...)
}

// Renew extends the TTL of a registered backend: a heartbeat another host
// received. It is not reported to the Replicator.
func (e *Engine) Renew(service, backend string, ttl time.Duration) error {
	m := e.health.Load()
	if m == nil {
		return errors.New("engine is not running")
	}
	return m.Renew(service, backend, ttl)
}

// RemotePin is a pin another host made. Prev, when not "", is the backend
// this host's data plane is known to hold the client in; it is unpinned
// there once the new pin is in force.
type RemotePin struct {
	dataplane.Pin
	Prev string
}

// Applied counts what ApplyPins did.
type Applied struct {
	Pinned  int // pinned as the other host did
	Moved   int // re-pinned away from a backend down here, and reported
	Dropped int // not pinned: its backend is down here and on_backend_down is reclassify
	Unknown int // its service or backend is not in this host's config
}

// ApplyPins makes other hosts' pins this host's, in batches, keeping their
// backend, key and remaining lifetime. They are not reported to the
// Replicator, with one exception: a pin to a backend this host sees down
// is never applied there; with on_backend_down: rehash it goes where this
// host's migration would move it (the pool's policy, deterministic across
// hosts with the same config), and that move is reported, so the hosts
// agree; with reclassify the client is unpinned here.
func (e *Engine) ApplyPins(ctx context.Context, pins []RemotePin) (Applied, error) {
	var res Applied
	bySvc := map[string][]RemotePin{}
	for _, p := range pins {
		bySvc[p.Service] = append(bySvc[p.Service], p)
	}
	var errs []error
	for name, ps := range bySvc {
		s, err := e.svc(name)
		if err != nil {
			res.Unknown += len(ps)
			continue
		}
		if err := s.applyPins(ctx, ps, &res); err != nil {
			errs = append(errs, fmt.Errorf("service %s: %w", name, err))
		}
	}
	return res, errors.Join(errs...)
}

func (s *service) applyPins(ctx context.Context, pins []RemotePin, res *Applied) error {
	// A migration lists a backend's pins after marking it down: holding
	// migrateMu, a pin lands either before that listing (and moves with
	// the others) or after the mark (and sees the backend down).
	s.migrateMu.Lock()
	defer s.migrateMu.Unlock()
	snap := s.snap.Load()
	s.mu.Lock()
	backends := s.backends // replaced, never changed in place, by install
	s.mu.Unlock()
	batch := make([]dataplane.Pin, 0, len(pins))
	var moves []dataplane.Pin
	var unpins []RemotePin
	var errs []error
	for _, p := range pins {
		b := backends[p.Backend]
		if b == nil {
			res.Unknown++
			continue
		}
		if p.Client, _ = s.checkClient(p.Client); !p.Client.IsValid() {
			res.Unknown++
			continue
		}
		if !b.down.Load() {
			batch = append(batch, p.Pin)
			if p.Prev != "" && p.Prev != p.Backend {
				unpins = append(unpins, p)
			}
			continue
		}
		pool := snap.router.Pool(b.pool)
		if snap.cfg.OnBackendDown == config.BackendDownReclassify || pool == nil {
			res.Dropped++
			if p.Prev != "" {
				unpins = append(unpins, RemotePin{Pin: dataplane.Pin{Service: s.name, Client: p.Client}, Prev: p.Prev})
			}
			continue
		}
		nb, err := pool.PickExcept(keyOf(p.Pin), s.e.view, b.name)
		if err != nil {
			res.Dropped++ // no usable backend: as a migration, the client keeps its pin where it was
			continue
		}
		moves = append(moves, movedPin(p.Pin, nb.Name, snap.cfg.ClientTTL))
		if p.Prev != "" && p.Prev != nb.Name {
			unpins = append(unpins, RemotePin{Pin: dataplane.Pin{Service: s.name, Backend: nb.Name, Client: p.Client}, Prev: p.Prev})
		}
	}
	if len(batch) > 0 {
		if err := s.e.raw.PinBatch(ctx, batch); err != nil {
			errs = append(errs, err) // it says how many failed
		}
		res.Pinned += len(batch)
		for _, p := range batch {
			backends[p.Backend].pins.Add(1)
		}
	}
	if len(moves) > 0 {
		if err := s.e.dp.PinBatch(ctx, moves); err != nil { // reported: the hosts agree on the move
			errs = append(errs, err)
		}
		res.Moved += len(moves)
	}
	for _, u := range unpins {
		if err := s.e.raw.Unpin(ctx, s.name, u.Prev, u.Client); err != nil && !errors.Is(err, dataplane.ErrUnknown) {
			errs = append(errs, err)
		} else if b := backends[u.Prev]; b != nil {
			b.pins.Add(-1)
		}
	}
	return errors.Join(errs...)
}

// ApplyUnpins removes pins other hosts removed (by hand, or expired in
// etcd while this host did not see the client either). Only Service,
// Backend and Client of each pin are read. It is not reported.
func (e *Engine) ApplyUnpins(ctx context.Context, pins []dataplane.Pin) error {
	var errs []error
	for _, p := range pins {
		if err := e.raw.Unpin(ctx, p.Service, p.Backend, p.Client); err != nil {
			if !errors.Is(err, dataplane.ErrUnknown) {
				errs = append(errs, err)
			}
			continue
		}
		if s, err := e.svc(p.Service); err == nil {
			if b := s.backend(p.Backend); b != nil {
				b.pins.Add(-1)
			}
		}
	}
	return errors.Join(errs...)
}

// RemoveLeftovers removes the data-plane entries among pins that are left
// over by a move (only Service, Backend and Client are read), as
// ApplyUnpins does: those for which stale, called for each, still says so.
// It calls stale while no reported change is between its data-plane write
// and its report to the Replicator, so an entry a move or a new pin has
// just written, and not yet reported, is never taken for a leftover of the
// client's previous backend. stale must not call the engine.
func (e *Engine) RemoveLeftovers(ctx context.Context, pins []dataplane.Pin, stale func(dataplane.Pin) bool) error {
	e.reportMu.Lock()
	defer e.reportMu.Unlock()
	var gone []dataplane.Pin
	for _, p := range pins {
		if stale(p) {
			gone = append(gone, p)
		}
	}
	return e.ApplyUnpins(ctx, gone)
}

// PinReader returns the engine's data plane as a PinReader: a cluster
// reads the pins the kernel refreshed through it.
func (e *Engine) PinReader() PinReader { return e.raw }

// Services returns the names of the running services with their client
// TTLs.
func (e *Engine) Services() map[string]time.Duration {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make(map[string]time.Duration, len(e.services))
	for n, s := range e.services {
		out[n] = s.snap.Load().cfg.ClientTTL
	}
	return out
}

// replicated is the engine's data plane when a Replicator is set: every
// pin change that works is reported to it. mu (Engine.reportMu) is held
// shared from each change to its report.
type replicated struct {
	Dataplane
	r   Replicator
	ttl func(service string) (time.Duration, bool)
	mu  *sync.RWMutex
}

// lifetime is a pin's TTL as Replicator.Pinned reports it.
func (d replicated) lifetime(p dataplane.Pin) dataplane.Pin {
	ttl, ok := d.ttl(p.Service)
	switch {
	case ok && ttl == 0:
		p.TTL = 0
	case p.TTL == 0:
		p.TTL = ttl
	}
	return p
}

func (d replicated) Pin(ctx context.Context, p dataplane.Pin) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if err := d.Dataplane.Pin(ctx, p); err != nil {
		return err
	}
	d.r.Pinned([]dataplane.Pin{d.lifetime(p)})
	return nil
}

// PinBatch reports the batch only when all of it worked: a caller whose
// batch failed in part redoes each pin with Pin (see relocate), which
// reports it.
func (d replicated) PinBatch(ctx context.Context, pins []dataplane.Pin) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if err := d.Dataplane.PinBatch(ctx, pins); err != nil {
		return err
	}
	out := make([]dataplane.Pin, len(pins))
	for i, p := range pins {
		out[i] = d.lifetime(p)
	}
	d.r.Pinned(out)
	return nil
}

func (d replicated) Unpin(ctx context.Context, service, backend string, client netip.Addr) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if err := d.Dataplane.Unpin(ctx, service, backend, client); err != nil {
		return err
	}
	d.r.Unpinned(service, backend, client)
	return nil
}

func (d replicated) Flush(ctx context.Context, service, backend string) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if err := d.Dataplane.Flush(ctx, service, backend); err != nil {
		return err
	}
	d.r.Flushed(service, backend)
	return nil
}

// clientTTL returns a running service's client_ttl.
func (e *Engine) clientTTL(service string) (time.Duration, bool) {
	e.mu.Lock()
	s := e.services[service]
	e.mu.Unlock()
	if s == nil {
		return 0, false
	}
	return s.snap.Load().cfg.ClientTTL, true
}
