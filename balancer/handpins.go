package balancer

import (
	"cmp"
	"context"
	"net/netip"
	"slices"

	"github.com/sirupsen/logrus"

	"github.com/handoff-lb/handoff/dataplane"
)

// handPin is a pin made by hand (PinClient), as the runtime state keeps
// it. It lasts until it is unpinned by hand: whenever its client has no
// pin in the service (the sets were flushed or made afresh after a
// reboot, the pin expired, the affinity table lost it), the engine makes
// it again (reapplyHandPins), unless its backend is down, draining or
// gone, in which case the client is classified as usual meanwhile.
type handPin struct {
	Service string     `json:"service"`
	Client  netip.Addr `json:"client"`
	Backend string     `json:"backend"`
}

// maxHandPins bounds the pins made by hand that the runtime state keeps;
// each is looked up at every check.
const maxHandPins = 10000

// setHandPin records client's hand pin in service, replacing any it had;
// false when the state holds maxHandPins already.
func (st *runtimeState) setHandPin(service string, client netip.Addr, backend string) bool {
	p := handPin{Service: service, Client: client, Backend: backend}
	i, found := slices.BinarySearchFunc(st.Pins, p, compareHandPins)
	if found {
		st.Pins[i] = p
		return true
	}
	if len(st.Pins) >= maxHandPins {
		return false
	}
	st.Pins = slices.Insert(st.Pins, i, p)
	return true
}

// dropHandPin forgets client's hand pin in service; false when it had
// none.
func (st *runtimeState) dropHandPin(service string, client netip.Addr) bool {
	i, found := slices.BinarySearchFunc(st.Pins, handPin{Service: service, Client: client}, compareHandPins)
	if found {
		st.Pins = slices.Delete(st.Pins, i, i+1)
	}
	return found
}

func compareHandPins(a, b handPin) int {
	return cmp.Or(cmp.Compare(a.Service, b.Service), a.Client.Compare(b.Client))
}

// HandPinsEvery is how often the pins made by hand are checked and made
// again where missing.
const HandPinsEvery = pinRecountEvery

// reapplyHandPins makes again every pin made by hand whose client has no
// pin in its service, and returns how many it made. A pin whose service
// or backend is gone, or whose backend is down or draining, waits.
func (e *Engine) reapplyHandPins(ctx context.Context) int {
	e.reloadMu.Lock()
	pins := slices.Clone(e.rt.Pins)
	e.reloadMu.Unlock()
	made, failed := 0, 0
	var firstErr error
	defer func() {
		if failed > 0 && ctx.Err() == nil {
			e.log.WithError(firstErr).WithField("failed", failed).Warn("making pins made by hand again failed; retried at the next check")
		}
	}()
	for _, hp := range pins {
		if ctx.Err() != nil {
			return made
		}
		s, err := e.svc(hp.Service)
		if err != nil {
			continue
		}
		b := s.backend(hp.Backend)
		if b == nil {
			continue
		}
		client, err := s.checkClient(hp.Client)
		if err != nil {
			continue // the service changed family
		}
		pinned, err := e.reapplyHandPin(ctx, s, b, client)
		if err != nil {
			if failed++; firstErr == nil {
				firstErr = err
			}
			continue
		}
		if !pinned {
			continue
		}
		b.pins.Add(1)
		made++
		s.log.WithFields(logrus.Fields{"client": hp.Client, "backend": hp.Backend}).Info("made a pin made by hand again: its client had no pin (sets flushed or recreated, or the pin expired)")
	}
	return made
}

// reapplyHandPin makes the hand pin of client to b again when the client
// has no pin and b is neither down nor draining. It holds migrateMu, as
// PinClient does, so that a migration of b moves the pin or it waits.
func (e *Engine) reapplyHandPin(ctx context.Context, s *service, b *backend, client netip.Addr) (pinned bool, err error) {
	s.migrateMu.Lock()
	defer s.migrateMu.Unlock()
	if b.down.Load() || b.draining.Load() {
		return false, nil
	}
	if _, ok, err := e.dp.Lookup(ctx, s.name, client); err != nil || ok {
		return false, nil
	}
	if err := e.dp.Pin(ctx, dataplane.Pin{Service: s.name, Backend: b.name, Client: client, Key: ManualKey}); err != nil {
		return false, err
	}
	return true, nil
}
