package balancer

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/handoff-lb/handoff/classifier"
	"github.com/handoff-lb/handoff/config"
)

// decision is where a new client goes.
type decision struct {
	backend *backend
	key     string // the classification key
	label   string // the pin's comment
	peeked  []byte // client bytes already read, replayed when proxying
}

// classify reads the client's key and decides its backend. A key that cannot
// be read follows on_unclassified: the default pool, or an error (reject).
func (s *service) classify(ctx context.Context, snap *snapshot, c net.Conn, client netip.Addr) (decision, error) {
	key, peeked, err := snap.router.Classify(ctx, c)
	var d classifier.Decision
	if err != nil {
		reject := snap.cfg.OnUnclassified == config.UnclassifiedReject
		s.counts.unclassified(classifier.Reason(err), reject)
		if reject {
			return decision{}, fmt.Errorf("unclassified (%s): %w", classifier.Reason(err), err)
		}
		d, err = snap.router.Unclassified(client, s.e.view)
	} else {
		d, err = snap.router.Decide(client, key, s.e.view)
	}
	return s.decided(d, peeked, err)
}

// decideSource decides the backend of a client of a service that
// classifies by source address, from its address alone: a held SYN
// carries no bytes.
func (s *service) decideSource(snap *snapshot, client netip.Addr) (decision, error) {
	d, err := snap.router.Decide(client, classifier.SourceKey(client), s.e.view)
	return s.decided(d, nil, err)
}

// decided turns the router's decision into the service's.
func (s *service) decided(d classifier.Decision, peeked []byte, err error) (decision, error) {
	if err != nil {
		return decision{}, err
	}
	b := s.backend(d.Backend)
	if b == nil {
		return decision{}, fmt.Errorf("backend %q vanished during a reload", d.Backend)
	}
	return decision{backend: b, key: d.Key, label: d.Label, peeked: peeked}, nil
}
