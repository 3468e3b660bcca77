package balancer

import (
	"context"
	"fmt"
)

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
	e.runtimeChanged()
	if !open {
		s.pause()
		s.log.Info("listener closed")
		return nil
	}
	s.log.WithField("listen", s.addr()).Info("listener opened")
	return nil
}
