package balancer_test

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/config"
)

// TestRegisterSetNameClash: set names are "ho-<service>-<backend>" and names
// may hold '-', so service "a" backend "b-c" and service "a-b" backend "c"
// would share one ipset. Register refuses that (409); a registration that
// a changed config file now clashes with is left out at the next start.
func TestRegisterSetNameClash(t *testing.T) {
	be1, be2 := startEcho(t, "be1"), startEcho(t, "be2")
	a, ab := testService("a", config.CheckNone), testService("a-b", config.CheckNone)
	a.Pools[0].Backends = []config.Backend{{Name: "b-c", Address: be1.addr(), Weight: 1}}
	ab.Pools[0].Backends = []config.Backend{{Name: "x", Address: be2.addr(), Weight: 1}}
	dir := t.TempDir()
	r := startStateful(t, &config.Config{Services: []config.Service{a, ab}}, dir)
	ctx := context.Background()

	err := r.eng.Register(ctx, "a-b", balancer.Registration{Name: "c", Address: be2.addr()})
	if !errors.Is(err, balancer.ErrConflict) || !strings.Contains(err.Error(), `service "a" backend "b-c"`) {
		t.Fatalf("registering a-b/c beside a/b-c: %v, want a conflict naming a/b-c", err)
	}
	if err := r.eng.Register(ctx, "a-b", balancer.Registration{Name: "d", Address: be2.addr()}); err != nil {
		t.Fatal(err)
	}
	// A registration clashing with another registration is refused too.
	if err := r.eng.Register(ctx, "a", balancer.Registration{Name: "b-d", Address: be1.addr()}); !errors.Is(err, balancer.ErrConflict) {
		t.Fatalf("registering a/b-d beside the registered a-b/d: %v, want a conflict", err)
	}
	st := status(t, r.eng)
	if got := backendNames(st, "a"); got != "b-c" {
		t.Errorf("service a has backends %s, want b-c", got)
	}
	if got := backendNames(st, "a-b"); got != "d x" {
		t.Errorf("service a-b has backends %s, want d x", got)
	}
	r.stop()

	// The file now gives service a backend b-d: the registered a-b/d would
	// share its set, so it is left out and a/b-d serves.
	a.Pools[0].Backends = append(a.Pools[0].Backends, config.Backend{Name: "b-d", Address: be1.addr(), Weight: 1})
	r = startStateful(t, &config.Config{Services: []config.Service{a, ab}}, dir)
	st = status(t, r.eng)
	if got := backendNames(st, "a"); got != "b-c b-d" {
		t.Errorf("after the restart service a has backends %s, want b-c b-d", got)
	}
	if got := backendNames(st, "a-b"); got != "x" {
		t.Errorf("after the restart service a-b has backends %s, want x", got)
	}
}

// backendNames lists a service's backends in a status, sorted.
func backendNames(st balancer.Status, service string) string {
	var names []string
	for _, s := range st.Services {
		if s.Name == service {
			for _, b := range s.Backends {
				names = append(names, b.Name)
			}
		}
	}
	slices.Sort(names)
	return strings.Join(names, " ")
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
	r := startEngine(t, webConfig(be1))
	if err := r.eng.Register(ctx, "web", balancer.Registration{Name: "x", Address: netip.MustParseAddrPort("127.0.0.5:80")}); err != nil {
		t.Errorf("userspace mode, register a loopback backend: %v", err)
	}
}
