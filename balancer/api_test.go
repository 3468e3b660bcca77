package balancer_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/balancer"
)

func backendOf(t *testing.T, st balancer.Status, svc, name string) balancer.BackendStatus {
	t.Helper()
	for _, s := range st.Services {
		if s.Name != svc {
			continue
		}
		for _, b := range s.Backends {
			if b.Name == name {
				return b
			}
		}
	}
	t.Fatalf("status has no backend %s/%s: %+v", svc, name, st)
	return balancer.BackendStatus{}
}

func status(t *testing.T, eng *balancer.Engine) balancer.Status {
	t.Helper()
	st, err := eng.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestControlPinsAndStatus(t *testing.T) {
	be1, be2 := startEcho(t, "be1"), startEcho(t, "be2")
	cfg := webConfig(be1, be2)
	r := startStateful(t, cfg, t.TempDir())
	ctx := context.Background()
	addr := r.eng.Addr("web")

	client := netip.MustParseAddr("127.0.0.9")
	if err := r.eng.PinClient(ctx, "web", client, "be2"); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if got := backendName(t, addr, "127.0.0.9"); got != "be2" {
			t.Fatalf("client pinned by hand to be2 reached %s", got)
		}
	}
	if err := r.eng.PinClient(ctx, "web", client, "be1"); err != nil {
		t.Fatal(err)
	}
	if got := backendName(t, addr, "127.0.0.9"); got != "be1" {
		t.Fatalf("re-pinned client reached %s", got)
	}
	var pins []balancer.ClientPin
	if err := r.eng.Clients(ctx, "web", "", 0, func(p balancer.ClientPin) error { pins = append(pins, p); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(pins) != 1 || pins[0].Client != "127.0.0.9" || pins[0].Backend != "be1" || pins[0].Key != balancer.ManualKey || pins[0].ExpiresIn <= 3500 {
		t.Fatalf("Clients = %+v, want one manual pin on be1 with about an hour left", pins)
	}
	st := status(t, r.eng)
	for deadline := time.Now().Add(3 * time.Second); backendOf(t, st, "web", "be1").Connections == 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond) // the proxied connection is counted when it ends
		st = status(t, r.eng)
	}
	if st.Mode != "userspace" || st.Version != "test" || len(st.Services) != 1 {
		t.Fatalf("status = %+v", st)
	}
	if b := backendOf(t, st, "web", "be1"); b.Pinned != 1 || b.Health != "up" || b.Connections < 1 || b.BytesOut == 0 {
		t.Fatalf("be1 status = %+v, want 1 pin, up, traffic", b)
	}
	if b := backendOf(t, st, "web", "be2"); b.Pinned != 0 {
		t.Fatalf("be2 still counts the moved pin: %+v", b)
	}

	// Clients with a limit stops early.
	for i := 20; i < 30; i++ {
		backendName(t, addr, fmt.Sprintf("127.0.0.%d", i))
	}
	n := 0
	if err := r.eng.Clients(ctx, "web", "", 4, func(balancer.ClientPin) error { n++; return nil }); err != nil || n != 4 {
		t.Fatalf("Clients limit 4: %d pins, %v", n, err)
	}
	if c := status(t, r.eng).Services[0].Classified[balancer.ResultPinned]; c != 10 {
		t.Errorf("classified pinned = %d, want 10", c)
	}

	if err := r.eng.UnpinClient(ctx, "web", client); err != nil {
		t.Fatal(err)
	}
	if err := r.eng.Clients(ctx, "web", "be1", 0, func(p balancer.ClientPin) error {
		if p.Client == "127.0.0.9" {
			return errors.New("still pinned after UnpinClient")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// Errors name the problem and wrap the right kind.
	for _, c := range []struct {
		err  error
		want error
	}{
		{r.eng.PinClient(ctx, "nope", client, "be1"), balancer.ErrNotFound},
		{r.eng.PinClient(ctx, "web", client, "nope"), balancer.ErrNotFound},
		{r.eng.PinClient(ctx, "web", netip.MustParseAddr("2001:2::1"), "be1"), balancer.ErrInvalid},
		{r.eng.UnpinClient(ctx, "web", netip.Addr{}), balancer.ErrInvalid},
		{r.eng.Clients(ctx, "web", "nope", 0, nil), balancer.ErrNotFound},
		{r.eng.Deregister(ctx, "web", "be1"), balancer.ErrConflict},
		{r.eng.Deregister(ctx, "web", "nope"), balancer.ErrNotFound},
		{r.eng.Register(ctx, "web", balancer.Registration{Name: "be1", Address: be1.addr()}), balancer.ErrConflict},
		{r.eng.Register(ctx, "web", balancer.Registration{Name: "x", Address: be1.addr(), Pool: "nope"}), balancer.ErrNotFound},
		{r.eng.Register(ctx, "web", balancer.Registration{Name: "Bad!", Address: be1.addr()}), balancer.ErrInvalid},
		{r.eng.Register(ctx, "web", balancer.Registration{Name: "x", Address: netip.MustParseAddrPort("[2001:2::1]:80")}), balancer.ErrInvalid},
		{r.eng.SetOpen(ctx, "nope", false), balancer.ErrNotFound},
	} {
		if !errors.Is(c.err, c.want) {
			t.Errorf("got error %v, want one wrapping %v", c.err, c.want)
		}
	}
}

func TestControlRegisterDrainCloseSurviveRestart(t *testing.T) {
	be1, be2, be3 := startEcho(t, "be1"), startEcho(t, "be2"), startEcho(t, "be3")
	cfg := webConfig(be1)
	dir := t.TempDir()
	r := startStateful(t, cfg, dir)
	ctx := context.Background()
	addr := r.eng.Addr("web")

	// A registered backend takes new clients at once.
	if err := r.eng.Register(ctx, "web", balancer.Registration{Name: "be2", Address: be2.addr()}); err != nil {
		t.Fatal(err)
	}
	home := map[string]string{}
	for i := 2; i < 22; i++ {
		src := fmt.Sprintf("127.0.0.%d", i)
		home[src] = backendName(t, addr, src)
	}
	if !strings.Contains(fmt.Sprint(home), "be2") {
		t.Fatalf("no new client reached the registered backend: %v", home)
	}
	if !backendOf(t, status(t, r.eng), "web", "be2").Registered {
		t.Fatal("status does not mark be2 as registered")
	}

	// Drain be1: new clients avoid it, its pins stay.
	if _, err := r.eng.Drain(ctx, "web", "be1", balancer.DrainStart); err != nil {
		t.Fatal(err)
	}
	for i := 30; i < 40; i++ {
		if got := backendName(t, addr, fmt.Sprintf("127.0.0.%d", i)); got != "be2" {
			t.Fatalf("new client went to the draining backend %s", got)
		}
	}
	for src, be := range home {
		if got := backendName(t, addr, src); got != be {
			t.Fatalf("drain moved %s from %s to %s", src, be, got)
		}
	}

	// Close the listener; the state survives a restart.
	if err := r.eng.SetOpen(ctx, "web", false); err != nil {
		t.Fatal(err)
	}
	if _, err := net.DialTimeout("tcp", addr.String(), time.Second); err == nil {
		t.Fatal("closed listener still accepts")
	}
	if st := status(t, r.eng); st.Services[0].Open {
		t.Fatal("status says open after close")
	}
	r.stop()
	if b, err := os.ReadFile(filepath.Join(dir, balancer.RuntimeFile)); err != nil || !strings.Contains(string(b), `"be2"`) {
		t.Fatalf("runtime state: %s, %v", b, err)
	}

	r = startStateful(t, cfg, dir)
	st := status(t, r.eng)
	if st.Services[0].Open {
		t.Fatal("listener reopened by a restart")
	}
	if b := backendOf(t, st, "web", "be2"); !b.Registered {
		t.Fatalf("registration lost on restart: %+v", b)
	}
	if b := backendOf(t, st, "web", "be1"); !b.Draining {
		t.Fatalf("drain lost on restart: %+v", b)
	}
	if err := r.eng.SetOpen(ctx, "web", true); err != nil {
		t.Fatal(err)
	}
	addr = r.eng.Addr("web")
	for src, be := range home {
		if got := backendName(t, addr, src); got != be {
			t.Fatalf("restart moved %s from %s to %s", src, be, got)
		}
	}

	// Drain with migrate moves be1's clients now; undo takes new ones again.
	moved, err := r.eng.Drain(ctx, "web", "be1", balancer.DrainMigrate)
	if err != nil {
		t.Fatal(err)
	}
	want := 0
	for _, be := range home {
		if be == "be1" {
			want++
		}
	}
	if moved != want {
		t.Fatalf("drain --migrate moved %d clients, want %d", moved, want)
	}
	for src := range home {
		if got := backendName(t, addr, src); got != "be2" {
			t.Fatalf("after drain --migrate %s is on %s", src, got)
		}
	}
	if _, err := r.eng.Drain(ctx, "web", "be1", balancer.DrainUndo); err != nil {
		t.Fatal(err)
	}
	used := map[string]bool{}
	for i := 40; i < 60; i++ {
		used[backendName(t, addr, fmt.Sprintf("127.0.0.%d", i))] = true
	}
	if !used["be1"] {
		t.Fatalf("undrained backend takes no new clients: %v", used)
	}

	// A heartbeat with a TTL that is not renewed takes the backend down and
	// its clients move.
	if err := r.eng.Register(ctx, "web", balancer.Registration{Name: "be3", Address: be3.addr(), TTL: 300 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	if err := r.eng.PinClient(ctx, "web", netip.MustParseAddr("127.0.0.99"), "be3"); err != nil {
		t.Fatal(err)
	}
	for range 3 { // heartbeats keep it up
		time.Sleep(150 * time.Millisecond)
		if err := r.eng.Register(ctx, "web", balancer.Registration{Name: "be3", Address: be3.addr(), TTL: 300 * time.Millisecond}); err != nil {
			t.Fatal(err)
		}
	}
	if b := backendOf(t, status(t, r.eng), "web", "be3"); b.Health != "up" || b.ExpiresIn <= 0 {
		t.Fatalf("renewed backend: %+v", b)
	}
	deadline := time.Now().Add(3 * time.Second)
	for backendOf(t, status(t, r.eng), "web", "be3").Health != "down" {
		if time.Now().After(deadline) {
			t.Fatal("backend without heartbeats never went down")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := backendName(t, addr, "127.0.0.99"); got == "be3" {
		t.Fatal("client of an expired backend still reaches it")
	}

	if err := r.eng.Deregister(ctx, "web", "be2"); err != nil {
		t.Fatal(err)
	}
	for _, b := range status(t, r.eng).Services[0].Backends {
		if b.Name == "be2" {
			t.Fatal("deregistered backend still listed")
		}
	}
}
