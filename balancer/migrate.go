package balancer

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/handoff-lb/handoff/classifier"
	"github.com/handoff-lb/handoff/config"
	"github.com/handoff-lb/handoff/dataplane"
)

// keyOf recovers a pin's classification key from its label ("sni=a.example"
// → "a.example", "payload=station\x207" → "station 7"; see
// classifier.LabelKey). A source label, and a label that names no key (a pin
// made by hand is "manual"), give the client address, so that such
// clients are spread like source-classified ones rather than all sharing
// one key.
func keyOf(p dataplane.Pin) string {
	k, ok := classifier.LabelKey(p.Key)
	if !ok || strings.HasPrefix(p.Key, "src=") {
		return classifier.SourceKey(p.Client)
	}
	return k
}

// migration is what one migration did.
type migration struct {
	moved, kept, flows int
	took               time.Duration
}

// migrate moves the clients of backend b, which is down or draining. With
// on_backend_down: rehash (and always for a drain) each is pinned to the
// backend its pool's policy now picks, keeping its remaining TTL and label,
// or kept when the pool has no usable backend; all new pins go in one batch
// before any old one is removed, so no client is ever without a pin. With
// reclassify (down only) the clients are unpinned, so their next connection
// is classified afresh. When forget is set (the backend is down) its
// conntrack entries are then dropped, so broken flows end now and new ones
// take the new path.
func (s *service) migrate(ctx context.Context, b *backend, forget bool) (res migration, err error) {
	s.migrateMu.Lock()
	defer s.migrateMu.Unlock()
	start := time.Now()
	defer func() { res.took = time.Since(start) }()
	snap := s.snap.Load()
	var pins []dataplane.Pin
	if err := s.e.dp.Pins(ctx, s.name, b.name, func(p dataplane.Pin) error {
		pins = append(pins, p)
		return nil
	}); err != nil {
		return res, err
	}
	pool := snap.router.Pool(b.pool)
	var errs []error
	if forget && snap.cfg.OnBackendDown == config.BackendDownReclassify || pool == nil {
		if err := s.e.dp.Flush(ctx, s.name, b.name); err != nil {
			errs = append(errs, err)
		} else {
			res.moved = len(pins)
		}
	} else {
		moves := make([]dataplane.Pin, 0, len(pins))
		for _, p := range pins {
			nb, err := pool.PickExcept(keyOf(p), s.e.view, b.name)
			if err != nil {
				res.kept++ // no usable backend: the pin stays
				continue
			}
			moves = append(moves, movedPin(p, nb.Name, snap.cfg.ClientTTL))
		}
		n, err := s.relocate(ctx, b, moves, res.kept == 0)
		res.moved = n
		if err != nil {
			errs = append(errs, err)
		}
	}
	if res.kept > 0 {
		s.log.WithFields(logrus.Fields{"backend": b.name, "pool": b.pool, "clients": res.kept}).Warn("pool has no usable backend: its pins stay; new clients are reset")
	}
	if forget {
		n, err := s.e.dp.Forget(ctx, s.name, b.name)
		if err != nil {
			errs = append(errs, err)
		}
		res.flows = n
	}
	b.pins.Store(int64(len(pins) - res.moved))
	return res, errors.Join(errs...)
}

// movedPin is p re-pinned to backend to, keeping its remaining TTL and
// label. A pin listed without a timeout in a set with one is about to
// expire: it gets a second.
func movedPin(p dataplane.Pin, to string, clientTTL time.Duration) dataplane.Pin {
	p.Backend = to
	if p.TTL == 0 && clientTTL > 0 {
		p.TTL = time.Second
	}
	return p
}

// relocate pins each of moves (pins of from, re-pinned elsewhere by
// movedPin) in one batch, and only then removes them from from, so no
// client is ever without a pin: with one Flush when all is set (moves are
// every pin of from), else one by one. When the batch fails in part, each
// pin is redone alone and its old pin removed only once the new one is in
// force. It returns how many moved.
func (s *service) relocate(ctx context.Context, from *backend, moves []dataplane.Pin, all bool) (moved int, err error) {
	var errs []error
	if err := s.e.dp.PinBatch(ctx, moves); err != nil {
		errs = append(errs, err)
		for _, np := range moves {
			if s.e.dp.Pin(ctx, np) == nil && s.e.dp.Unpin(ctx, s.name, from.name, np.Client) == nil {
				s.countMove(from, np)
				moved++
			}
		}
		return moved, errors.Join(errs...)
	}
	if all {
		if err := s.e.dp.Flush(ctx, s.name, from.name); err != nil {
			errs = append(errs, err)
		}
	}
	for _, np := range moves {
		if !all {
			if err := s.e.dp.Unpin(ctx, s.name, from.name, np.Client); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		s.countMove(from, np)
		moved++
	}
	return moved, errors.Join(errs...)
}

// countMove updates the pin counts of a client that moved from from to
// p.Backend, and logs the move.
func (s *service) countMove(from *backend, p dataplane.Pin) {
	from.pins.Add(-1)
	if nb := s.backend(p.Backend); nb != nil {
		nb.pins.Add(1)
	}
	s.accessPin("migrated", p.Client, p.Backend, from.name, p.Key)
}

// failback moves clients to a backend that came back, in pools with
// failback (rehash): each pin of another backend of the pool whose policy
// now picks b moves to b, except pins made by hand. Under maglev and
// source-hash those are the clients that moved off b when it went down,
// and the new clients its keys brought meanwhile. Their conntrack entries stay, so live flows finish where they
// are.
func (s *service) failback(ctx context.Context, b *backend) (moved int, took time.Duration, err error) {
	s.migrateMu.Lock()
	defer s.migrateMu.Unlock()
	start := time.Now()
	snap := s.snap.Load()
	pool := snap.router.Pool(b.pool)
	pc := snap.cfg.Pool(b.pool)
	if pool == nil || pc == nil || !pc.Failback {
		return 0, 0, nil
	}
	var errs []error
	for _, other := range pc.Backends {
		if other.Name == b.name {
			continue
		}
		from := s.backend(other.Name)
		if from == nil {
			continue
		}
		var pins []dataplane.Pin
		if err := s.e.dp.Pins(ctx, s.name, other.Name, func(p dataplane.Pin) error {
			pins = append(pins, p)
			return nil
		}); err != nil {
			errs = append(errs, err)
			continue
		}
		var moves []dataplane.Pin
		for _, p := range pins {
			if p.Key == ManualKey {
				continue // the operator put it there
			}
			if nb, err := pool.Pick(keyOf(p), s.e.view); err == nil && nb.Name == b.name {
				moves = append(moves, movedPin(p, b.name, snap.cfg.ClientTTL))
			}
		}
		n, err := s.relocate(ctx, from, moves, false)
		moved += n
		if err != nil {
			errs = append(errs, err)
		}
	}
	return moved, time.Since(start), errors.Join(errs...)
}
