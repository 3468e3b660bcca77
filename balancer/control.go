package balancer

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/handoff-lb/handoff/config"
	"github.com/handoff-lb/handoff/dataplane"
	"github.com/handoff-lb/handoff/healthcheck"
)

// Errors of the control methods (Status, Clients, PinClient, …). The admin
// API maps them to HTTP statuses: ErrNotFound → 404, ErrInvalid → 400,
// ErrConflict → 409; anything else is a 500.
var (
	ErrNotFound = errors.New("not found")
	ErrInvalid  = errors.New("invalid request")
	ErrConflict = errors.New("conflict")
)

// Status is a point-in-time view of the engine: what `handoff status` and
// GET /api/v1/status show, and what the metrics are read from.
type Status struct {
	Mode     string            `json:"mode"`  // kernel | userspace
	State    State             `json:"state"` // starting | serving | stopping
	Version  string            `json:"version"`
	Started  time.Time         `json:"started"`
	Uptime   float64           `json:"uptime_seconds"`
	Reloads  map[string]uint64 `json:"reloads"` // by result: ok | invalid | failed
	Services []ServiceStatus   `json:"services"`
}

// ServiceStatus is one service in a Status.
type ServiceStatus struct {
	Name       string `json:"name"`
	Listen     string `json:"listen"`
	Open       bool   `json:"open"` // its listener accepts
	Classify   string `json:"classify"`
	MaxClients int    `json:"max_clients"` // per backend
	Pinned     int64  `json:"pinned"`      // sum over backends
	Active     int64  `json:"active"`      // live proxied connections
	// Refused counts connections reset at once because max_connections
	// were live (userspace proxying; in kernel mode, first connections).
	Refused uint64 `json:"refused"`
	// Classified counts new clients by result: "pinned", "no-backend",
	// "pin-failed", and "unclassified/<reason>" (no-match, timeout,
	// too-long, malformed, closed), "rejected/<reason>" when
	// on_unclassified is reject.
	Classified       map[string]uint64 `json:"classified"`
	Migrations       uint64            `json:"migrations"`        // backend-down evacuations, failbacks and drain migrations
	MigratedClients  uint64            `json:"migrated_clients"`  // clients those moved
	MigrationSeconds float64           `json:"migration_seconds"` // their total duration
	Backends         []BackendStatus   `json:"backends"`
}

// BackendStatus is one backend in a ServiceStatus.
type BackendStatus struct {
	Name       string    `json:"name"`
	Address    string    `json:"address"`
	Pool       string    `json:"pool"`
	Weight     int       `json:"weight"`
	Health     string    `json:"health"`           // up | down
	Reason     string    `json:"reason,omitempty"` // of the last health transition
	Since      time.Time `json:"since,omitzero"`   // the last health transition
	Draining   bool      `json:"draining"`
	Registered bool      `json:"registered"` // added through the API rather than the config file
	// ExpiresIn is the seconds left of a registration's TTL; 0 when the
	// backend has none.
	ExpiresIn   float64 `json:"expires_in,omitempty"`
	Pinned      int64   `json:"pinned"`      // live pins (set members in kernel mode)
	Active      int64   `json:"active"`      // live proxied connections
	Connections uint64  `json:"connections"` // proxied connections served
	BytesIn     uint64  `json:"bytes_in"`    // client → backend, proxied
	BytesOut    uint64  `json:"bytes_out"`   // backend → client, proxied
	// Kernel-forwarded traffic, from the DNAT rule's counters (kernel mode).
	Packets      uint64 `json:"forwarded_packets"`
	ForwardBytes uint64 `json:"forwarded_bytes"`
}

// ClientPin is one pin as the API lists it.
type ClientPin struct {
	Client    string  `json:"client"`
	Backend   string  `json:"backend"`
	Key       string  `json:"key"`
	ExpiresIn float64 `json:"expires_in"` // seconds; 0 = never
}

// Registration registers or renews a backend through the API. Pool defaults
// to "default", Weight to 1. With TTL > 0 the backend goes down unless it is
// registered again within TTL (a heartbeat).
type Registration struct {
	Name    string
	Address netip.AddrPort
	Weight  int
	Pool    string
	TTL     time.Duration
}

// DrainOp selects what Drain does.
type DrainOp int

const (
	DrainStart   DrainOp = iota // no new clients; pins stay until they expire
	DrainMigrate                // as DrainStart, and move its pins the rehash way now
	DrainUndo                   // take new clients again
)

// applyRuntime applies the saved runtime state once the health monitor
// runs: drains, and a fresh TTL for every registration that has one (a
// restart must not count the downtime against a heartbeat).
func (e *Engine) applyRuntime() {
	e.reloadMu.Lock()
	defer e.reloadMu.Unlock()
	for _, r := range e.rt.Registrations {
		if r.TTL > 0 {
			if err := e.health.Load().Renew(r.Service, r.Name, time.Duration(r.TTL)); err != nil {
				e.log.WithError(err).Debug("registration TTL")
			}
		}
	}
	e.applyDrains()
}

// applyDrains sets every backend's draining flag from the runtime state;
// reloadMu is held.
func (e *Engine) applyDrains() {
	e.mu.Lock()
	svcs := maps.Clone(e.services)
	e.mu.Unlock()
	changed := false
	for name, s := range svcs {
		s.mu.Lock()
		for _, b := range s.backends {
			want := e.rt.draining(name, b.name)
			if b.draining.Swap(want) != want {
				changed = true
			}
		}
		s.mu.Unlock()
	}
	if changed {
		e.view.bump()
	}
}

// saveRuntimeLocked persists st and, when that works, makes it current; reloadMu
// is held. A change that cannot be saved is refused, so what the API
// acknowledged survives a restart.
func (e *Engine) saveRuntimeLocked(st runtimeState) error {
	if err := saveRuntime(e.stateDir, st); err != nil {
		return fmt.Errorf("saving the change under state_dir: %w", err)
	}
	e.rt = st
	return nil
}

// saveOrUndoLocked saves st, whose effective config was just applied; when
// that fails it applies the current state's config again, so that a change
// refused for want of saving does not run either. reloadMu is held.
func (e *Engine) saveOrUndoLocked(ctx context.Context, st runtimeState) error {
	err := e.saveRuntimeLocked(st)
	if err == nil {
		return nil
	}
	prev, _ := effective(e.fileCfg, &e.rt)
	if uerr := e.apply(ctx, prev); uerr != nil {
		return fmt.Errorf("%w; undoing the change failed too, so it runs until the next change or reload: %v", err, uerr)
	}
	return err
}

// svc returns the running service name, or an error wrapping ErrNotFound.
func (e *Engine) svc(name string) (*service, error) {
	e.mu.Lock()
	s := e.services[name]
	e.mu.Unlock()
	if s == nil {
		return nil, fmt.Errorf("service %q: %w", name, ErrNotFound)
	}
	return s, nil
}

func (s *service) mustBackend(name string) (*backend, error) {
	if b := s.backend(name); b != nil {
		return b, nil
	}
	return nil, fmt.Errorf("service %q has no backend %q: %w", s.name, name, ErrNotFound)
}

// Status returns the engine's current state. Pin counts come from the data
// plane (the sets' element counts in kernel mode).
func (e *Engine) Status(ctx context.Context) (Status, error) {
	e.mu.Lock()
	started := e.start
	e.mu.Unlock()
	st := Status{Mode: "userspace", State: e.State(), Version: e.version, Started: started, Reloads: e.stats.reloadCounts()}
	if e.kernel {
		st.Mode = "kernel"
	}
	if !started.IsZero() {
		st.Uptime = time.Since(started).Seconds()
	}
	var fwd map[[2]string]Forwarded
	if e.forwarded != nil {
		var err error
		if fwd, err = e.forwarded(ctx); err != nil {
			e.log.WithError(err).Debug("reading the DNAT rules' counters")
		}
	}
	health := map[[2]string]healthcheck.Status{}
	if m := e.health.Load(); m != nil {
		for _, h := range m.Snapshot() {
			health[[2]string{h.Service, h.Backend}] = h
		}
	}
	e.reloadMu.Lock()
	regs := map[[2]string]bool{}
	for _, r := range e.rt.Registrations {
		regs[[2]string{r.Service, r.Name}] = true
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
			Refused:    s.snap.Load().limit.Refused(),
		}
		if a := s.addr(); a != nil {
			ss.Open, ss.Listen = true, a.String()
		}
		e.stats.fill(&ss)
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
				k := [2]string{sc.Name, cb.Name}
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
					BytesIn:      b.bytesIn.Load(),
					BytesOut:     b.bytesOut.Load(),
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
		st.Services = append(st.Services, ss)
	}
	return st, nil
}

// errStop ends a Pins walk early.
var errStop = errors.New("stop")

// Clients calls fn for each pin of service (of backend when not ""), at
// most limit when limit > 0, as the data plane walks them: nothing is
// collected, so a million pins stream in constant memory.
func (e *Engine) Clients(ctx context.Context, service, backend string, limit int, fn func(ClientPin) error) error {
	s, err := e.svc(service)
	if err != nil {
		return err
	}
	if backend != "" {
		if _, err := s.mustBackend(backend); err != nil {
			return err
		}
	}
	if limit < 0 {
		return fmt.Errorf("%w: limit %d is negative", ErrInvalid, limit)
	}
	n := 0
	err = e.dp.Pins(ctx, service, backend, func(p dataplane.Pin) error {
		if limit > 0 && n >= limit {
			return errStop
		}
		n++
		return fn(ClientPin{Client: p.Client.String(), Backend: p.Backend, Key: p.Key, ExpiresIn: p.TTL.Seconds()})
	})
	if errors.Is(err, errStop) {
		return nil
	}
	return err
}

// ManualKey is the pin comment of a client pinned by hand.
const ManualKey = "manual"

// PinClient pins client to backend by hand, replacing any pin it has in the
// service. The backend may be down or draining: the operator decides.
func (e *Engine) PinClient(ctx context.Context, service string, client netip.Addr, backend string) error {
	s, err := e.svc(service)
	if err != nil {
		return err
	}
	b, err := s.mustBackend(backend)
	if err != nil {
		return err
	}
	client, err = s.checkClient(client)
	if err != nil {
		return err
	}
	if err := e.dp.Pin(ctx, dataplane.Pin{Service: service, Backend: backend, Client: client, Key: ManualKey}); err != nil {
		if errors.Is(err, dataplane.ErrFull) {
			return fmt.Errorf("%w: %w", ErrConflict, err)
		}
		return err
	}
	b.pins.Add(1)
	if err := s.unpinExcept(ctx, client, backend); err != nil {
		return fmt.Errorf("removing the previous pin: %w", err)
	}
	s.log.WithFields(logrus.Fields{"client": client, "backend": backend}).Info("pinned by hand")
	return nil
}

// UnpinClient removes client's pin in service; its next connection is
// classified afresh. Flows already established are left alone. Unpinning a
// client that has no pin is not an error.
func (e *Engine) UnpinClient(ctx context.Context, service string, client netip.Addr) error {
	s, err := e.svc(service)
	if err != nil {
		return err
	}
	if client, err = s.checkClient(client); err != nil {
		return err
	}
	if err := s.unpinExcept(ctx, client, ""); err != nil {
		return err
	}
	s.log.WithField("client", client).Info("unpinned by hand")
	return nil
}

// checkClient returns client unmapped, or an ErrInvalid error when it is
// not an address of the service's family.
func (s *service) checkClient(client netip.Addr) (netip.Addr, error) {
	client = client.Unmap()
	v6 := s.snap.Load().cfg.Listen.Addr().Is6()
	switch {
	case !client.IsValid():
		return client, fmt.Errorf("%w: no client address", ErrInvalid)
	case client.Is6() != v6:
		fam := "IPv4"
		if v6 {
			fam = "IPv6"
		}
		return client, fmt.Errorf("%w: client %s: service %q has %s clients", ErrInvalid, client, s.name, fam)
	}
	return client, nil
}

// unpinExcept removes client's pin from every backend but keep.
func (s *service) unpinExcept(ctx context.Context, client netip.Addr, keep string) error {
	for _, name := range s.backendNames() {
		if name == keep {
			continue
		}
		if err := s.e.dp.Unpin(ctx, s.name, name, client); err != nil {
			return fmt.Errorf("backend %s: %w", name, err)
		}
	}
	return nil
}

func (s *service) backendNames() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Sorted(maps.Keys(s.backends))
}

// Register adds a backend to a pool of a service, or renews it: a
// heartbeat. Its set and rules exist when Register returns, so new clients
// can be pinned to it. With r.TTL > 0 it goes down (and its clients
// migrate) unless registered again within r.TTL. A backend of the config
// file cannot be registered (ErrConflict).
func (e *Engine) Register(ctx context.Context, service string, r Registration) error {
	e.reloadMu.Lock()
	defer e.reloadMu.Unlock()
	if r.Pool == "" {
		r.Pool = "default"
	}
	if r.Weight == 0 {
		r.Weight = config.DefaultWeight
	}
	if r.TTL < 0 {
		return fmt.Errorf("%w: ttl %v is negative", ErrInvalid, r.TTL)
	}
	sc := e.fileCfg.Service(service)
	if sc == nil {
		return fmt.Errorf("service %q: %w", service, ErrNotFound)
	}
	if sc.Pool(r.Pool) == nil {
		return fmt.Errorf("service %q has no pool %q: %w", service, r.Pool, ErrNotFound)
	}
	if sc.Backend(r.Name) != nil {
		return fmt.Errorf("%w: backend %q of service %q is in the config file; change it there", ErrConflict, r.Name, service)
	}
	if err := sc.CheckBackend(config.Backend{Name: r.Name, Address: r.Address, Weight: r.Weight}); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	e.mu.Lock()
	cur := e.cfg
	e.mu.Unlock()
	if o, ok := setOwners(cur)[dataplane.SetName(service, r.Name, sc.Listen.Addr().Is6())]; ok && o[0] != service {
		return fmt.Errorf("%w: backend %q of service %q would use the ipset name of service %q backend %q; choose another name",
			ErrConflict, r.Name, service, o[0], o[1])
	}
	log := e.log.WithFields(logrus.Fields{"service": service, "backend": r.Name})
	rec := registration{Service: service, Name: r.Name, Address: r.Address, Weight: r.Weight, Pool: r.Pool, TTL: jsonDuration(r.TTL)}
	if old := e.rt.registration(service, r.Name); old != nil && old.Address == rec.Address && old.Weight == rec.Weight && old.Pool == rec.Pool {
		if old.TTL != rec.TTL {
			st := e.rt.clone()
			*st.registration(service, r.Name) = rec
			if err := e.saveRuntimeLocked(st); err != nil {
				return err
			}
		}
		if m := e.health.Load(); m != nil {
			if err := m.Renew(service, r.Name, r.TTL); err != nil {
				return err
			}
		}
		log.Debug("backend heartbeat")
		return nil
	}

	st := e.rt.clone()
	if old := st.registration(service, r.Name); old != nil {
		*old = rec
	} else {
		st.Registrations = append(st.Registrations, rec)
		slices.SortFunc(st.Registrations, func(a, b registration) int {
			return cmp.Or(cmp.Compare(a.Service, b.Service), cmp.Compare(a.Name, b.Name))
		})
	}
	eff, _ := effective(e.fileCfg, &st)
	if eff.Service(service).Backend(r.Name) == nil {
		return fmt.Errorf("%w: backend %q could not be added to service %q", ErrInvalid, r.Name, service)
	}
	if err := e.apply(ctx, eff); err != nil {
		return err
	}
	if err := e.saveOrUndoLocked(ctx, st); err != nil {
		return err
	}
	if m := e.health.Load(); m != nil && r.TTL > 0 {
		if err := m.Renew(service, r.Name, r.TTL); err != nil {
			return err
		}
	}
	log.WithFields(logrus.Fields{"address": r.Address, "pool": r.Pool, "weight": r.Weight, "ttl": r.TTL}).Info("backend registered")
	return nil
}

// Deregister removes a registered backend. Its set and rules go; its
// clients are classified afresh on their next connection, and flows already
// established are left to finish.
func (e *Engine) Deregister(ctx context.Context, service, name string) error {
	e.reloadMu.Lock()
	defer e.reloadMu.Unlock()
	if e.fileCfg.Service(service) == nil {
		return fmt.Errorf("service %q: %w", service, ErrNotFound)
	}
	if e.rt.registration(service, name) == nil {
		if e.fileCfg.Service(service).Backend(name) != nil {
			return fmt.Errorf("%w: backend %q of service %q is in the config file; remove it there", ErrConflict, name, service)
		}
		return fmt.Errorf("service %q has no registered backend %q: %w", service, name, ErrNotFound)
	}
	st := e.rt.clone()
	st.Registrations = slices.DeleteFunc(st.Registrations, func(r registration) bool { return r.Service == service && r.Name == name })
	st.setDrain(service, name, false)
	eff, _ := effective(e.fileCfg, &st)
	if err := e.apply(ctx, eff); err != nil {
		return err
	}
	if err := e.saveOrUndoLocked(ctx, st); err != nil {
		return err
	}
	e.log.WithFields(logrus.Fields{"service": service, "backend": name}).Info("backend deregistered")
	return nil
}

// Drain stops new clients going to a backend (DrainStart), additionally
// moves its pins now the rehash way (DrainMigrate), or ends the drain
// (DrainUndo). Established flows are never cut. It returns how many clients
// moved.
func (e *Engine) Drain(ctx context.Context, service, backend string, op DrainOp) (int, error) {
	e.reloadMu.Lock()
	defer e.reloadMu.Unlock()
	s, err := e.svc(service)
	if err != nil {
		return 0, err
	}
	b, err := s.mustBackend(backend)
	if err != nil {
		return 0, err
	}
	on := op != DrainUndo
	st := e.rt.clone()
	st.setDrain(service, backend, on)
	if err := e.saveRuntimeLocked(st); err != nil {
		return 0, err
	}
	if b.draining.Swap(on) != on {
		e.view.bump()
	}
	log := s.log.WithField("backend", backend)
	switch op {
	case DrainUndo:
		log.Info("drain ended: the backend takes new clients")
		return 0, nil
	case DrainMigrate:
		res, err := s.migrate(ctx, b, false)
		e.stats.migration(service, res.moved, res.took)
		log = log.WithFields(logrus.Fields{"moved": res.moved, "kept": res.kept, "took": res.took.Round(time.Microsecond)})
		if err != nil {
			log.WithError(err).Error("drain: migration incomplete")
			return res.moved, err
		}
		log.Info("draining: clients moved, no new clients")
		return res.moved, nil
	}
	log.Info("draining: no new clients; pins stay until they expire")
	return 0, nil
}

// SetOpen opens or closes a service's listener. Closing stops accepting new
// clients; connections already accepted, pins and kernel forwarding stay.
// The state survives restarts and reloads.
func (e *Engine) SetOpen(ctx context.Context, service string, open bool) error {
	e.reloadMu.Lock()
	defer e.reloadMu.Unlock()
	s, err := e.svc(service)
	if err != nil {
		return err
	}
	st := e.rt.clone()
	st.setClosed(service, !open)
	if open {
		if err := s.resume(ctx); err != nil {
			return fmt.Errorf("%w: %w", ErrConflict, err)
		}
	}
	if err := e.saveRuntimeLocked(st); err != nil {
		if open {
			s.pause()
		}
		return err
	}
	if !open {
		s.pause()
		s.log.Info("listener closed")
		return nil
	}
	s.log.WithField("listen", s.addr()).Info("listener opened")
	return nil
}
