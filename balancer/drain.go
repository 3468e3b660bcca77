package balancer

import (
	"context"
	"time"

	"github.com/sirupsen/logrus"
)

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
	e.runtimeChanged()
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
