package balancer_test

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/config"
	"github.com/handoff-lb/handoff/healthcheck"
)

// TestHandPinToUnusableBackendConflicts: a hand-made pin to a backend
// that is down or draining is refused with ErrConflict (409), and none
// is made.
func TestHandPinToUnusableBackendConflicts(t *testing.T) {
	be1, be2 := startEcho(t, "be1"), startEcho(t, "be2")
	r := startEngine(t, &config.Config{Services: []config.Service{testService("web", config.CheckNone, be1, be2)}})
	ctx := context.Background()
	client := netip.MustParseAddr("127.0.0.9")
	r.eng.OnHealth(healthcheck.Event{Service: "web", Backend: "be1", Up: false, Reason: "test", At: time.Now()})
	if err := r.eng.PinClient(ctx, "web", client, "be1"); !errors.Is(err, balancer.ErrConflict) {
		t.Fatalf("pin to a down backend: %v, want a conflict", err)
	}
	if _, err := r.eng.Drain(ctx, "web", "be2", balancer.DrainStart); err != nil {
		t.Fatal(err)
	}
	if err := r.eng.PinClient(ctx, "web", client, "be2"); !errors.Is(err, balancer.ErrConflict) {
		t.Fatalf("pin to a draining backend: %v, want a conflict", err)
	}
	n := 0
	r.eng.Clients(ctx, "web", "", 0, func(balancer.ClientPin) error { n++; return nil })
	if n != 0 {
		t.Fatalf("%d pins after refused hand pins", n)
	}
}

// TestKernelModeRefusesUnforwardableRegistrations: in kernel mode the API
// refuses a backend on a loopback, link-local, multicast or the VIP's
// address; in userspace mode a loopback backend is fine.
func TestKernelModeRefusesUnforwardableRegistrations(t *testing.T) {
	be1 := startEcho(t, "be1")
	sc := testService("web", config.CheckNone, be1)
	sc.Listen = netip.MustParseAddrPort("127.0.0.1:0")
	eng := startWith(t, &config.Config{Services: []config.Service{sc}}, newFDP(t), true)
	ctx := context.Background()
	for _, a := range []string{"127.0.0.5:80", "169.254.0.1:80", "224.0.0.9:80", "255.255.255.255:80"} {
		err := eng.Register(ctx, "web", balancer.Registration{Name: "x", Address: netip.MustParseAddrPort(a)})
		if !errors.Is(err, balancer.ErrInvalid) {
			t.Errorf("kernel mode, register %s: %v, want invalid", a, err)
		}
	}
	if err := eng.Register(ctx, "web", balancer.Registration{Name: "x", Address: netip.MustParseAddrPort("198.19.0.5:80")}); err != nil {
		t.Errorf("kernel mode, register a routable backend: %v", err)
	}
	r := startEngine(t, &config.Config{Services: []config.Service{testService("web", config.CheckNone, be1)}})
	if err := r.eng.Register(ctx, "web", balancer.Registration{Name: "x", Address: netip.MustParseAddrPort("127.0.0.5:80")}); err != nil {
		t.Errorf("userspace mode, register a loopback backend: %v", err)
	}
}
