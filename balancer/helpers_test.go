package balancer_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/config"
	"github.com/handoff-lb/handoff/fallback"
	"github.com/handoff-lb/handoff/internal/nstest"
)

// namedEcho is a loopback backend that greets each connection with its name
// and the client address it sees, then echoes until the client half-closes.
type namedEcho struct {
	name string
	ln   net.Listener
}

func startEcho(t *testing.T, name string) *namedEcho {
	t.Helper()
	ln := nstest.ServeLoopback(t, func(c net.Conn) {
		fmt.Fprintf(c, "%s %s\n", name, c.RemoteAddr().(*net.TCPAddr).IP)
		io.Copy(c, c)
		c.(*net.TCPConn).CloseWrite()
	})
	return &namedEcho{name: name, ln: ln}
}

// stop closes the listener: new connections are refused, as by a backend
// that went down. Connections already open go on until the test ends.
func (e *namedEcho) stop() { e.ln.Close() }

func (e *namedEcho) addr() netip.AddrPort {
	return e.ln.Addr().(*net.TCPAddr).AddrPort()
}

func testService(name string, health config.Check, backends ...*namedEcho) config.Service {
	sc := config.Service{
		Name:            name,
		Listen:          netip.MustParseAddrPort("127.0.0.1:0"),
		FirstConnection: config.FirstReset,
		ClientTTL:       time.Hour,
		MaxClients:      1000,
		Classify:        config.ClassifySource,
		Payload:         config.Payload{MaxBytes: 512, Timeout: time.Second},
		OnUnclassified:  "default",
		OnBackendDown:   "rehash",
		Timeouts:        config.Timeouts{Connect: time.Second, Idle: time.Minute},
		MaxConnections:  1000,
		ProxyProtocol:   "off",
		Health:          config.Health{Check: health, Interval: 50 * time.Millisecond, Timeout: 200 * time.Millisecond, Rise: 1, Fall: 1},
		Pools:           []config.Pool{{Name: "default", Balance: config.BalanceMaglev}},
	}
	for _, b := range backends {
		sc.Pools[0].Backends = append(sc.Pools[0].Backends, config.Backend{Name: b.name, Address: b.addr(), Weight: 1})
	}
	return sc
}

// webConfig is a config of one service, "web", over backends.
func webConfig(backends ...*namedEcho) *config.Config {
	return &config.Config{Services: []config.Service{testService("web", config.CheckNone, backends...)}}
}

// ask connects from source address src and returns the backend's greeting.
func ask(t *testing.T, addr net.Addr, src string) string {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 2 * time.Second}
	c, err := d.Dial("tcp", addr.String())
	if err != nil {
		t.Fatalf("dial from %s: %v", src, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("read from %s: %v", src, err)
	}
	return strings.TrimSpace(line)
}

// backendName is the name of the backend that answers a client from src.
func backendName(t *testing.T, addr net.Addr, src string) string {
	t.Helper()
	name, _, _ := strings.Cut(ask(t, addr, src), " ")
	return name
}

// running is an engine that serves until the test ends or stop is called.
type running struct {
	eng *balancer.Engine
	dp  *fallback.Dataplane // the data plane runEngine made, if it made one
	// stop stops the engine now and returns the error of closing the
	// data plane runEngine made; it does nothing the second time.
	stop func() error
}

// runEngine runs an engine with opts until it serves. A nil Logger logs warnings; a nil Dataplane is a
// userspace one whose affinity table lives in opts.StateDir (a temporary
// directory when that is empty), closed once the engine stopped. The
// engine is stopped, and its Run must return no error, at r.stop or when
// the test ends.
func runEngine(t testing.TB, opts balancer.Options) *running {
	t.Helper()
	if opts.Logger == nil {
		log := logrus.New()
		log.SetLevel(logrus.WarnLevel)
		opts.Logger = logrus.NewEntry(log)
	}
	r := &running{}
	if opts.Dataplane == nil {
		dir := opts.StateDir
		if dir == "" {
			dir = t.TempDir()
		}
		dp, err := fallback.New(fallback.Options{StateDir: dir, Logger: opts.Logger})
		if err != nil {
			t.Fatal(err)
		}
		r.dp, opts.Dataplane = dp, dp
	}
	eng, err := balancer.New(opts)
	if err != nil {
		if r.dp != nil {
			r.dp.Close()
		}
		t.Fatal(err)
	}
	r.eng = eng
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- eng.Run(ctx) }()
	stopped := false
	r.stop = func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if r.dp == nil {
			return nil
		}
		return r.dp.Close()
	}
	t.Cleanup(func() { r.stop() })
	deadline := time.Now().Add(5 * time.Second)
	for eng.State() != balancer.StateServing {
		if time.Now().After(deadline) {
			t.Fatalf("the engine never served (state %s)", eng.State())
		}
		time.Sleep(5 * time.Millisecond)
	}
	return r
}

// startEngine runs a userspace-mode engine over the real affinity table
// until every service listens.
func startEngine(t *testing.T, cfg *config.Config) *running {
	t.Helper()
	r := runEngine(t, balancer.Options{Config: cfg})
	for _, s := range cfg.Services {
		if r.eng.Addr(s.Name) == nil {
			t.Fatalf("serving, but service %s does not listen", s.Name)
		}
	}
	return r
}

// startWith runs an engine over dp (kernel mode when kernel is set) until
// it serves.
func startWith(t *testing.T, cfg *config.Config, dp balancer.Dataplane, kernel bool) *balancer.Engine {
	t.Helper()
	return runEngine(t, balancer.Options{Config: cfg, Dataplane: dp, Kernel: kernel}).eng
}

// startStateful runs a userspace engine whose affinity table and runtime
// state live in dir, so a second call with the same dir is a restart.
func startStateful(t *testing.T, cfg *config.Config, dir string) *running {
	t.Helper()
	r := runEngine(t, balancer.Options{Config: cfg, StateDir: dir, Version: "test"})
	waitStatus(t, r.eng)
	return r
}

// waitStatus waits until Run has started (Status reports an uptime).
func waitStatus(t *testing.T, eng *balancer.Engine) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := eng.Status(context.Background())
		if err == nil && !st.Started.IsZero() && len(st.Services) > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("engine never started: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// newFDP is a userspace data plane in a temporary state directory.
func newFDP(t *testing.T) *fallback.Dataplane {
	t.Helper()
	log := logrus.New()
	log.SetLevel(logrus.ErrorLevel)
	dp, err := fallback.New(fallback.Options{StateDir: t.TempDir(), Logger: logrus.NewEntry(log)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	return dp
}

// jsonLines decodes the JSON objects of a log, one a line; lines that are
// not JSON are left out.
func jsonLines(log string) []map[string]any {
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(log), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}
