package balancer_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/config"
	"github.com/handoff-lb/handoff/dataplane"
	"github.com/handoff-lb/handoff/healthcheck"
	"github.com/handoff-lb/handoff/internal/nstest"
)

// TestMaxConnectionsSurvivesReload: the connections open when a reload
// happens still count against max_connections afterwards.
func TestMaxConnectionsSurvivesReload(t *testing.T) {
	be1 := startEcho(t, "be1")
	sc := testService("web", config.CheckNone, be1)
	sc.MaxConnections = 1
	eng := startWith(t, &config.Config{Services: []config.Service{sc}}, newFDP(t), false)
	addr := eng.Addr("web").String()
	open := func() (net.Conn, error) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return nil, err
		}
		c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
	c1, err := open()
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	if c, err := open(); err == nil {
		c.Close()
		t.Fatal("a second connection was proxied with max_connections 1")
	}
	if err := eng.Reload(context.Background(), &config.Config{Services: []config.Service{sc}}); err != nil {
		t.Fatal(err)
	}
	if c, err := open(); err == nil {
		c.Close()
		t.Fatal("after a reload a second connection was proxied with max_connections 1 and one open")
	}
	// A raised limit applies to the same count.
	sc.MaxConnections = 2
	if err := eng.Reload(context.Background(), &config.Config{Services: []config.Service{sc}}); err != nil {
		t.Fatal(err)
	}
	c2, err := open()
	if err != nil {
		t.Fatalf("max_connections raised to 2: %v", err)
	}
	defer c2.Close()
	if c, err := open(); err == nil {
		c.Close()
		t.Fatal("a third connection was proxied with max_connections 2")
	}
	if n := status(t, eng).Services[0].Refused; n != 3 {
		t.Errorf("status counts %d refused connections, want 3", n)
	}
}

// TestDownSurvivesAddressChange: a backend that is down stays down when a
// reload moves it to another dead address (the health monitor keeps its
// state across the change and sends no new event), so no new client is
// pinned to it.
func TestDownSurvivesAddressChange(t *testing.T) {
	be1 := startEcho(t, "be1")
	sc := testService("web", config.CheckTCP, be1)
	sc.Pools[0].Backends = append(sc.Pools[0].Backends, config.Backend{Name: "dead", Address: nstest.RefusedAddr(t), Weight: 1})
	dp := newFDP(t)
	eng := startWith(t, &config.Config{Services: []config.Service{sc}}, dp, false)
	waitHealth := func(want string) {
		t.Helper()
		deadline := time.Now().Add(3 * time.Second)
		for backendOf(t, status(t, eng), "web", "dead").Health != want {
			if time.Now().After(deadline) {
				t.Fatalf("backend dead never became %s", want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitHealth("down")

	sc2 := sc
	sc2.Pools = []config.Pool{{Name: "default", Balance: config.BalanceMaglev, Backends: []config.Backend{
		sc.Pools[0].Backends[0], {Name: "dead", Address: nstest.RefusedAddr(t), Weight: 1}}}}
	if err := eng.Reload(context.Background(), &config.Config{Services: []config.Service{sc2}}); err != nil {
		t.Fatal(err)
	}
	if b := backendOf(t, status(t, eng), "web", "dead"); b.Health != "down" || b.Address != sc2.Pools[0].Backends[1].Address.String() {
		t.Fatalf("after moving to another dead address: %+v, want down at the new address", b)
	}
	addr := eng.Addr("web")
	for i := 2; i < 30; i++ {
		if got := backendName(t, addr, fmt.Sprintf("127.0.0.%d", i)); got != "be1" {
			t.Fatalf("client 127.0.0.%d reached %s", i, got)
		}
	}
	n := 0
	dp.Pins(context.Background(), "web", "dead", func(dataplane.Pin) error { n++; return nil })
	if n > 0 {
		t.Fatalf("%d new clients pinned to the down backend", n)
	}

	// Moved to a live address, it comes up through its checks.
	be3 := startEcho(t, "dead")
	sc3 := sc
	sc3.Pools = []config.Pool{{Name: "default", Balance: config.BalanceMaglev, Backends: []config.Backend{
		sc.Pools[0].Backends[0], {Name: "dead", Address: be3.addr(), Weight: 1}}}}
	if err := eng.Reload(context.Background(), &config.Config{Services: []config.Service{sc3}}); err != nil {
		t.Fatal(err)
	}
	waitHealth("up")
}

// failNthSync fails the Sync calls numbered in fail (1 is Run's) and
// records every state it is given.
type failNthSync struct {
	balancer.Dataplane
	mu     sync.Mutex
	n      int
	fail   map[int]bool
	states []dataplane.State
}

func (f *failNthSync) Sync(ctx context.Context, st dataplane.State) error {
	f.mu.Lock()
	f.n++
	f.states = append(f.states, st)
	failing := f.fail[f.n]
	f.mu.Unlock()
	if failing {
		return errors.New("injected sync failure")
	}
	return f.Dataplane.Sync(ctx, st)
}

// TestFailedSyncRestoresRunningState: when a change's data plane sync
// fails, the change is refused and the data plane is given the running
// config's state again, so that it does not retry the refused one later.
func TestFailedSyncRestoresRunningState(t *testing.T) {
	be1, be2 := startEcho(t, "be1"), startEcho(t, "be2")
	dp := &failNthSync{Dataplane: newFDP(t), fail: map[int]bool{2: true}} // 1: Run, 2: the registration's union
	eng := startWith(t, webConfig(be1), dp, false)
	if err := eng.Register(context.Background(), "web", balancer.Registration{Name: "be2", Address: be2.addr()}); err == nil {
		t.Fatal("Register succeeded although the data plane sync failed")
	}
	dp.mu.Lock()
	last := dp.states[len(dp.states)-1]
	dp.mu.Unlock()
	var names []string
	for _, s := range last.Services {
		for _, b := range s.Backends {
			names = append(names, s.Name+"/"+b.Name)
		}
	}
	if fmt.Sprint(names) != "[web/be1]" {
		t.Fatalf("after the failed change the data plane was last given %v, want the running [web/be1]", names)
	}
}

// TestReloadWhosePruneFails: a reload whose second sync (removing the old
// state) fails still runs the new config and records it, so a later
// registration does not bring the old config back.
func TestReloadWhosePruneFails(t *testing.T) {
	be1, be2 := startEcho(t, "be1"), startEcho(t, "be2")
	sc := testService("web", config.CheckNone, be1)
	dp := &failNthSync{Dataplane: newFDP(t), fail: map[int]bool{3: true}} // 1: Run, 2: the reload's union, 3: its prune
	eng := startWith(t, &config.Config{Services: []config.Service{sc}}, dp, false)
	sc2 := testService("web", config.CheckNone, be1, be2)
	if err := eng.Reload(context.Background(), &config.Config{Services: []config.Service{sc2}}); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if got := backendNames(status(t, eng), "web"); got != "be1 be2" {
		t.Fatalf("after the reload: backends %s", got)
	}
	if err := eng.Register(context.Background(), "web", balancer.Registration{Name: "reg", Address: be2.addr()}); err != nil {
		t.Fatal(err)
	}
	if got := backendNames(status(t, eng), "web"); got != "be1 be2 reg" {
		t.Fatalf("a registration after the reload left backends %s, want be1 be2 reg", got)
	}
}

// TestRegisterUnsavedIsUndone: a registration that cannot be saved under
// state_dir is refused and does not run either, so the API and the
// running engine agree (and a Deregister does not answer 404 for a
// backend that serves).
func TestRegisterUnsavedIsUndone(t *testing.T) {
	be1, be2 := startEcho(t, "be1"), startEcho(t, "be2")
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := webConfig(be1)
	r := startStateful(t, cfg, dir)
	ctx := context.Background()
	// state_dir becomes unusable: a file where the directory was.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := r.eng.Register(ctx, "web", balancer.Registration{Name: "be2", Address: be2.addr()}); err == nil {
		t.Fatal("Register succeeded although state_dir is unusable")
	}
	if got := backendNames(status(t, r.eng), "web"); got != "be1" {
		t.Fatalf("after the refused registration the service runs backends %s, want be1", got)
	}
	for i := 2; i < 12; i++ {
		if got := backendName(t, r.eng.Addr("web"), fmt.Sprintf("127.0.0.%d", i)); got != "be1" {
			t.Fatalf("a client reached %s after the refused registration", got)
		}
	}
}

// TestLeastConnCountsAdoptedPins: in kernel mode least-conn balances on
// pins, and a restarted daemon counts the pins it adopts from the data
// plane: new clients go to the backend with fewer pins, not to the one
// whose 100 pins an earlier run made.
func TestLeastConnCountsAdoptedPins(t *testing.T) {
	be1, be2 := startEcho(t, "be1"), startEcho(t, "be2")
	sc := testService("web", config.CheckNone, be1, be2)
	sc.Pools[0].Balance = config.BalanceLeastConn
	fdp := newFDP(t)
	ctx := context.Background()
	if err := fdp.Sync(ctx, dataplane.State{Services: []dataplane.Service{{Name: "web", Listen: sc.Listen, ClientTTL: time.Hour, MaxClients: 1000,
		Backends: []dataplane.Backend{{Name: "be1", Address: be1.addr()}, {Name: "be2", Address: be2.addr()}}}}}); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 100; i++ {
		c := netip.AddrFrom4([4]byte{198, 18, 1, byte(i)})
		if err := fdp.Pin(ctx, dataplane.Pin{Service: "web", Backend: "be1", Client: c, Key: "src=" + c.String()}); err != nil {
			t.Fatal(err)
		}
	}
	eng := startWith(t, &config.Config{Services: []config.Service{sc}}, fdp, true)
	addr := eng.Addr("web").String()
	for i := 2; i < 12; i++ {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(fmt.Sprintf("127.0.0.%d", i))}, Timeout: time.Second}
		if c, err := d.Dial("tcp", addr); err == nil {
			c.SetDeadline(time.Now().Add(time.Second))
			c.Read(make([]byte, 1)) // kernel mode, first_connection reset: the pin is made, the connection reset
			c.Close()
		}
	}
	st := status(t, eng)
	if b1, b2 := backendOf(t, st, "web", "be1").Pinned, backendOf(t, st, "web", "be2").Pinned; b1 != 100 || b2 != 10 {
		t.Fatalf("pins: be1 %d, be2 %d; want 100 and the 10 new clients on be2", b1, b2)
	}
}

// gate holds the first call that passes it until release is closed;
// entered is closed when that call arrives.
type gate struct {
	entered, release chan struct{}
	once             sync.Once
}

func newGate() *gate { return &gate{entered: make(chan struct{}), release: make(chan struct{})} }

func (g *gate) pass() {
	g.once.Do(func() {
		close(g.entered)
		<-g.release
	})
}

// gatedSync, gatedBatch and gatedPin hold the data plane's first Sync,
// PinBatch or Pin at their gate.
type gatedSync struct {
	balancer.Dataplane
	*gate
}

func (g *gatedSync) Sync(ctx context.Context, st dataplane.State) error {
	g.pass()
	return g.Dataplane.Sync(ctx, st)
}

type gatedBatch struct {
	balancer.Dataplane
	*gate
}

func (g *gatedBatch) PinBatch(ctx context.Context, pins []dataplane.Pin) error {
	g.pass()
	return g.Dataplane.PinBatch(ctx, pins)
}

// TestDrainRacesDown: a backend that goes down while a drain is moving
// clients onto it ends with none of them: its own migration waits for the
// drain's and then moves them on.
func TestDrainRacesDown(t *testing.T) {
	be1, be2, be3 := startEcho(t, "a"), startEcho(t, "b"), startEcho(t, "c")
	sc := testService("web", config.CheckNone, be1, be2, be3)
	fdp := newFDP(t)
	g := &gatedBatch{Dataplane: fdp, gate: newGate()}
	eng := startWith(t, &config.Config{Services: []config.Service{sc}}, g, true)
	ctx := context.Background()
	for i := 1; i <= 40; i++ {
		c := netip.AddrFrom4([4]byte{198, 18, 0, byte(i)})
		if err := fdp.Pin(ctx, dataplane.Pin{Service: "web", Backend: "b", Client: c, Key: "src=" + c.String()}); err != nil {
			t.Fatal(err)
		}
	}
	drained := make(chan error, 1)
	go func() { _, err := eng.Drain(ctx, "web", "b", balancer.DrainMigrate); drained <- err }()
	<-g.entered // the drain has picked where b's clients go, some to a
	downed := make(chan struct{})
	go func() {
		eng.OnHealth(healthcheck.Event{Service: "web", Backend: "a", Up: false, Reason: "test", At: time.Now()})
		close(downed)
	}()
	// OnHealth marks a down at once and then waits for the drain's
	// migration to finish (Status would wait too: the drain holds the
	// engine's change lock), so give it a moment.
	time.Sleep(100 * time.Millisecond)
	close(g.release)
	if err := <-drained; err != nil {
		t.Fatal(err)
	}
	<-downed
	count := func(be string) int {
		n := 0
		fdp.Pins(ctx, "web", be, func(dataplane.Pin) error { n++; return nil })
		return n
	}
	if a, b, c := count("a"), count("b"), count("c"); a != 0 || b != 0 || c != 40 {
		t.Fatalf("pins: a %d (down), b %d (drained), c %d; want all 40 on c", a, b, c)
	}
}

type gatedPin struct {
	balancer.Dataplane
	*gate
}

func (g *gatedPin) Pin(ctx context.Context, p dataplane.Pin) error {
	g.pass()
	return g.Dataplane.Pin(ctx, p)
}

// TestAcceptRacesDown: a new client classified to a backend that goes
// down (and is migrated) before its pin lands is not left pinned there.
func TestAcceptRacesDown(t *testing.T) {
	be1, be2 := startEcho(t, "a"), startEcho(t, "b")
	sc := testService("web", config.CheckNone, be1, be2)
	sc.Pools[0].Balance = config.BalanceHotStandby // every new client picks a
	fdp := newFDP(t)
	g := &gatedPin{Dataplane: fdp, gate: newGate()}
	eng := startWith(t, &config.Config{Services: []config.Service{sc}}, g, true)
	c, err := net.Dial("tcp", eng.Addr("web").String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	<-g.entered // classified to a, pin not made yet
	eng.OnHealth(healthcheck.Event{Service: "web", Backend: "a", Up: false, Reason: "test", At: time.Now()})
	close(g.release)
	c.SetDeadline(time.Now().Add(2 * time.Second))
	c.Read(make([]byte, 1)) // the connection ends (reset)
	deadline := time.Now().Add(2 * time.Second)
	for {
		n := 0
		fdp.Pins(context.Background(), "web", "a", func(dataplane.Pin) error { n++; return nil })
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d client(s) left pinned to a, which is down", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
