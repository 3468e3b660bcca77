package balancer

import (
	"cmp"
	"context"
	"fmt"
	"slices"

	"github.com/sirupsen/logrus"

	"github.com/handoff-lb/handoff/config"
	"github.com/handoff-lb/handoff/dataplane"
)

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
	if e.kernel {
		if err := sc.CheckForward(config.Backend{Name: r.Name, Address: r.Address}); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalid, err)
		}
	}
	e.mu.Lock()
	cur := e.cfg
	e.mu.Unlock()
	if o, ok := setOwners(cur)[dataplane.SetName(service, r.Name, sc.Listen.Addr().Is6())]; ok && o.Service != service {
		return fmt.Errorf("%w: backend %q of service %q would use the ipset name of service %q backend %q; choose another name",
			ErrConflict, r.Name, service, o.Service, o.Backend)
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
			e.runtimeChanged()
		}
		if m := e.health.Load(); m != nil {
			if err := m.Renew(service, r.Name, r.TTL); err != nil {
				return err
			}
		}
		if e.repl != nil && r.TTL > 0 {
			e.repl.Renewed(service, r.Name, r.TTL)
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
	e.runtimeChanged()
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
	e.runtimeChanged()
	e.log.WithFields(logrus.Fields{"service": service, "backend": name}).Info("backend deregistered")
	return nil
}
