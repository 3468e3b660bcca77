package balancer_test

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/config"
	"github.com/handoff-lb/handoff/dataplane"
)

// slowListing holds every listing of one service's pins, the first step of
// its migrations, until release is closed or the listing's context ends.
type slowListing struct {
	balancer.Dataplane
	service string
	entered chan struct{} // closed when the first listing is held
	once    sync.Once
	release chan struct{}
}

func (s *slowListing) Pins(ctx context.Context, service, backend string, fn func(dataplane.Pin) error) error {
	if service == s.service {
		s.once.Do(func() { close(s.entered) })
		select {
		case <-s.release:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return s.Dataplane.Pins(ctx, service, backend, fn)
}

// TestSlowMigrationDelaysNoOtherService: while a migration of service a is
// held (a 100k-pin listing, say), a backend of service b goes down, and b's
// clients move to its other backend at once: each service's health events
// are applied apart from the others'.
func TestSlowMigrationDelaysNoOtherService(t *testing.T) {
	a1, a2, b1, b2 := startEcho(t, "a1"), startEcho(t, "a2"), startEcho(t, "b1"), startEcho(t, "b2")
	cfg := &config.Config{Services: []config.Service{
		testService("a", config.CheckTCP, a1, a2), // fall 1 at a 50 ms interval
		testService("b", config.CheckTCP, b1, b2),
	}}
	fdp := newFDP(t)
	dp := &slowListing{Dataplane: fdp, service: "a", entered: make(chan struct{}), release: make(chan struct{})}
	eng := startWith(t, cfg, dp, false)
	defer close(dp.release) // before the engine stops (t.Cleanup)
	ctx := context.Background()
	for i := 1; i <= 20; i++ {
		c := netip.AddrFrom4([4]byte{198, 18, 0, byte(i)})
		if err := eng.PinClient(ctx, "a", c, "a1"); err != nil {
			t.Fatal(err)
		}
		if err := eng.PinClient(ctx, "b", c, "b1"); err != nil {
			t.Fatal(err)
		}
	}

	a1.stop()
	select {
	case <-dp.entered: // a1 is down; its migration is held
	case <-time.After(5 * time.Second):
		t.Fatal("a1 never went down")
	}
	b1.stop()
	count := func(service, backend string) int {
		n := 0
		fdp.Pins(ctx, service, backend, func(dataplane.Pin) error { n++; return nil })
		return n
	}
	deadline := time.Now().Add(3 * time.Second)
	for count("b", "b1") > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d clients of b stayed on b1, which is down, while a's migration was held: b's failover waited for a's", count("b", "b1"))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := count("b", "b2"); n != 20 {
		t.Errorf("b2 has %d clients, want all 20", n)
	}
	if n := count("a", "a1"); n != 20 {
		t.Errorf("a1 has %d clients while its migration is held, want all 20 still", n)
	}
}
