package balancer_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/config"
)

// TestEngineState: the state and the status say "starting" until every
// listener is open and the data plane synced, "serving" then, and
// "stopping" once Run's context ends.
func TestEngineState(t *testing.T) {
	be1 := startEcho(t, "be1")
	cfg := webConfig(be1)
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	dp := &gatedSync{Dataplane: newFDP(t), gate: newGate()}
	eng, err := balancer.New(balancer.Options{Config: cfg, Dataplane: dp, Logger: logrus.NewEntry(log)})
	if err != nil {
		t.Fatal(err)
	}
	status := func() balancer.Status {
		t.Helper()
		st, err := eng.Status(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	if s := eng.State(); s != balancer.StateStarting {
		t.Fatalf("before Run: state %s", s)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- eng.Run(ctx) }()

	<-dp.entered // the listener is open, the data plane not synced yet
	if st := status(); st.State != balancer.StateStarting || len(st.Services) != 0 {
		t.Errorf("during the first sync: state %s with %d services, want starting with none", st.State, len(st.Services))
	}
	close(dp.release)
	deadline := time.Now().Add(5 * time.Second)
	for eng.State() != balancer.StateServing {
		if time.Now().After(deadline) {
			t.Fatalf("never served: state %s", eng.State())
		}
		time.Sleep(2 * time.Millisecond)
	}
	if st := status(); st.State != balancer.StateServing || len(st.Services) != 1 || !st.Services[0].Open {
		t.Errorf("serving: state %s, services %+v", st.State, st.Services)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if s := eng.State(); s != balancer.StateStopping {
		t.Errorf("after Run: state %s, want stopping", s)
	}
}

func TestUserspaceClientsStick(t *testing.T) {
	be1, be2 := startEcho(t, "be1"), startEcho(t, "be2")
	cfg := webConfig(be1, be2)
	r := startEngine(t, cfg)
	addr := r.eng.Addr("web")

	used := map[string]int{}
	for i := 2; i < 22; i++ {
		src := fmt.Sprintf("127.0.0.%d", i)
		first := ask(t, addr, src) // userspace: the backend sees the proxy's address
		name, _, _ := strings.Cut(first, " ")
		for j := 0; j < 3; j++ {
			if got := ask(t, addr, src); got != first {
				t.Fatalf("client %s moved: %q then %q", src, first, got)
			}
		}
		used[name]++
	}
	if len(used) != 2 {
		t.Errorf("20 clients used backends %v, want both", used)
	}
}

func TestUserspaceHalfCloseEcho(t *testing.T) {
	be1 := startEcho(t, "be1")
	r := startEngine(t, webConfig(be1))
	c, err := net.Dial("tcp", r.eng.Addr("web").String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	msg := strings.Repeat("half-close ", 1000)
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	want := "be1 127.0.0.1\n" + msg
	if string(got) != want {
		t.Fatalf("echo after half-close: got %d bytes, want %d", len(got), len(want))
	}
}

func TestUserspaceBackendDownMovesClients(t *testing.T) {
	be1, be2 := startEcho(t, "be1"), startEcho(t, "be2")
	r := startEngine(t, &config.Config{Services: []config.Service{testService("web", config.CheckTCP, be1, be2)}})
	addr := r.eng.Addr("web")
	home := map[string]string{}
	for i := 2; i < 12; i++ {
		src := fmt.Sprintf("127.0.0.%d", i)
		name, _, _ := strings.Cut(ask(t, addr, src), " ")
		home[src] = name
	}
	be1.stop()
	// fall 1 at a 50 ms interval: down within a few intervals
	deadline := time.Now().Add(3 * time.Second)
	for src, name := range home {
		for {
			got, _, _ := strings.Cut(ask(t, addr, src), " ")
			if got == "be2" {
				break
			}
			if name == "be2" || time.Now().After(deadline) {
				t.Fatalf("client %s (was on %s) answered by %s", src, name, got)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func TestReloadKeepsListenerAndAddsBackend(t *testing.T) {
	be1, be2 := startEcho(t, "be1"), startEcho(t, "be2")
	sc := testService("web", config.CheckNone, be1)
	r := startEngine(t, &config.Config{Services: []config.Service{sc}})
	addr := r.eng.Addr("web")
	if got := ask(t, addr, "127.0.0.2"); !strings.HasPrefix(got, "be1 ") {
		t.Fatalf("before reload: %q", got)
	}

	sc2 := sc // same configured listen address (127.0.0.1:0): the listener is kept
	sc2.Pools = []config.Pool{{Name: "default", Balance: config.BalanceMaglev, Backends: []config.Backend{
		{Name: "be1", Address: be1.addr(), Weight: 1}, {Name: "be2", Address: be2.addr(), Weight: 1}}}}
	if err := r.eng.Reload(context.Background(), &config.Config{Services: []config.Service{sc2}}); err != nil {
		t.Fatal(err)
	}
	if r.eng.Addr("web").String() != addr.String() {
		t.Fatalf("listener changed: %v -> %v", addr, r.eng.Addr("web"))
	}
	if got := ask(t, addr, "127.0.0.2"); !strings.HasPrefix(got, "be1 ") {
		t.Errorf("pinned client moved on reload: %q", got)
	}
	used := map[string]bool{}
	for i := 3; i < 23; i++ {
		name, _, _ := strings.Cut(ask(t, addr, fmt.Sprintf("127.0.0.%d", i)), " ")
		used[name] = true
	}
	if !used["be2"] {
		t.Errorf("new clients after reload never reached the added backend: %v", used)
	}
}
