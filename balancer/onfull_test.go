package balancer_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/config"
)

// classified returns the count of result in service web's status.
func classified(t *testing.T, eng *balancer.Engine, result string) uint64 {
	t.Helper()
	st, err := eng.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st.Services {
		if s.Name == "web" {
			return s.Classified[result]
		}
	}
	t.Fatal("no service web")
	return 0
}

// reachable reports whether a connection from src gets the backend's
// greeting (false: reset or closed).
func reachable(addr net.Addr, src string) bool {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 2 * time.Second}
	c, err := d.Dial("tcp", addr.String())
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	b := make([]byte, 64)
	n, _ := c.Read(b)
	return strings.HasPrefix(string(b[:n]), "be1 ")
}

// TestOnFull: once the backend's table is full, a new client is proxied
// without a pin (on_full: proxy) on every connection, or reset (reject),
// and the status counts it as "full".
func TestOnFull(t *testing.T) {
	for _, on := range []config.OnFull{config.OnFullProxy, config.OnFullReject} {
		t.Run(string(on), func(t *testing.T) {
			be1 := startEcho(t, "be1")
			sc := testService("web", config.CheckNone, be1)
			sc.FirstConnection = config.FirstProxy
			sc.MaxClients = 1
			sc.OnFull = on
			r := startEngine(t, &config.Config{Services: []config.Service{sc}})
			addr := r.eng.Addr("web")
			if got := ask(t, addr, "127.0.0.2"); !strings.HasPrefix(got, "be1") {
				t.Fatalf("first client: %q", got)
			}
			for i := range 3 {
				if got, want := reachable(addr, "127.0.0.3"), on == config.OnFullProxy; got != want {
					t.Fatalf("connection %d of a client over max_clients: served %v, want %v", i, got, want)
				}
			}
			if n := classified(t, r.eng, balancer.ResultFull); n != 3 {
				t.Errorf("classified full = %d, want 3", n)
			}
			var pins int
			r.eng.Clients(context.Background(), "web", "", 0, func(p balancer.ClientPin) error { pins++; return nil })
			if pins != 1 {
				t.Errorf("%d pins, want 1", pins)
			}
		})
	}
}

// TestPinBudget: one network spends its budget and its further new
// clients are served without a pin, while another network's clients are
// pinned as usual.
func TestPinBudget(t *testing.T) {
	be1 := startEcho(t, "be1")
	sc := testService("web", config.CheckNone, be1)
	sc.FirstConnection = config.FirstProxy
	sc.OnFull = config.OnFullProxy
	sc.PinBudget = config.PinBudget{PerPrefix: 3, IPv4Prefix: 24, IPv6Prefix: 64}
	r := startEngine(t, &config.Config{Services: []config.Service{sc}})
	addr := r.eng.Addr("web")
	for i := 2; i < 10; i++ {
		if !reachable(addr, fmt.Sprintf("127.0.0.%d", i)) {
			t.Fatalf("client 127.0.0.%d not served", i)
		}
	}
	for i := 2; i < 5; i++ {
		if !reachable(addr, fmt.Sprintf("127.0.1.%d", i)) {
			t.Fatalf("client 127.0.1.%d of another network not served", i)
		}
	}
	pinned := map[string]bool{}
	r.eng.Clients(context.Background(), "web", "", 0, func(p balancer.ClientPin) error { pinned[p.Client] = true; return nil })
	if len(pinned) != 6 {
		t.Errorf("pinned %v, want 3 clients of each /24", pinned)
	}
	for i := 2; i < 5; i++ {
		if !pinned[fmt.Sprintf("127.0.1.%d", i)] {
			t.Errorf("127.0.1.%d of the second network is not pinned: one network's budget locked out another", i)
		}
	}
	if n := classified(t, r.eng, balancer.ResultOverBudget); n != 5 {
		t.Errorf("classified over-budget = %d, want 5", n)
	}
}
