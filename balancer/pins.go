package balancer

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/sirupsen/logrus"

	"github.com/handoff-lb/handoff/dataplane"
)

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
// service. A backend that is down or draining takes no hand-made pin (an
// ErrConflict error): the pin would black-hole the client, or undo the
// drain.
func (e *Engine) PinClient(ctx context.Context, service string, client netip.Addr, backend string) error {
	s, err := e.svc(service)
	if err != nil {
		return err
	}
	b, err := s.mustBackend(backend)
	if err != nil {
		return err
	}
	switch {
	case b.down.Load():
		return fmt.Errorf("%w: backend %q of service %q is down; pin its clients elsewhere", ErrConflict, backend, service)
	case b.draining.Load():
		return fmt.Errorf("%w: backend %q of service %q is draining; undo the drain first", ErrConflict, backend, service)
	}
	client, err = s.checkClient(client)
	if err != nil {
		return err
	}
	e.reloadMu.Lock()
	defer e.reloadMu.Unlock()
	// A migration lists a backend's pins after marking it down or
	// draining: under migrateMu this pin lands before that listing (and
	// moves with the others) or sees the mark, and is refused. Checked
	// again here: the check above ran unlocked.
	s.migrateMu.Lock()
	defer s.migrateMu.Unlock()
	if b.down.Load() || b.draining.Load() {
		return fmt.Errorf("%w: backend %q of service %q went down or started draining; pin its clients elsewhere", ErrConflict, backend, service)
	}
	st := e.rt.clone()
	if !st.setHandPin(service, client, backend) {
		return fmt.Errorf("%w: %d pins made by hand already; unpin some first", ErrConflict, maxHandPins)
	}
	if err := e.dp.Pin(ctx, dataplane.Pin{Service: service, Backend: backend, Client: client, Key: ManualKey}); err != nil {
		if errors.Is(err, dataplane.ErrFull) {
			return fmt.Errorf("%w: %w", ErrConflict, err)
		}
		return err
	}
	b.pins.Add(1)
	s.counts.added.Add(1)
	s.accessPin("pinned-by-hand", client, backend, "", ManualKey)
	if err := s.unpinExcept(ctx, client, backend); err != nil {
		return fmt.Errorf("removing the previous pin: %w", err)
	}
	if err := e.saveRuntimeLocked(st); err != nil {
		return err
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
	e.reloadMu.Lock()
	defer e.reloadMu.Unlock()
	old, had, _ := e.dp.Lookup(ctx, service, client)
	if err := s.unpinExcept(ctx, client, ""); err != nil {
		return err
	}
	if had {
		s.counts.unpinned.Add(1)
		s.accessPin("unpinned", client, "", old.Backend, "")
	}
	if st := e.rt.clone(); st.dropHandPin(service, client) {
		if err := e.saveRuntimeLocked(st); err != nil {
			return err
		}
	}
	s.log.WithField("client", client).Info("unpinned by hand")
	return nil
}

// checkClient returns what the service pins for client: the address
// unmapped, or its network's under ipv6_pin_prefix; an ErrInvalid error
// when it is not an address of the service's family.
func (s *service) checkClient(client netip.Addr) (netip.Addr, error) {
	client = client.Unmap()
	cfg := s.snap.Load().cfg
	v6 := cfg.Listen.Addr().Is6()
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
	return dataplane.PinKey(client, cfg.IPv6PinPrefix), nil
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
