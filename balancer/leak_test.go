package balancer_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"regexp"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"go.uber.org/goleak"

	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/config"
	"github.com/handoff-lb/handoff/internal/testenv"
)

// TestNoGoroutineLeak runs a userspace engine on loopback through a burst of
// every kind of connection — echoed with a half-close, cut by the client in
// the middle of a transfer, cut by the backend, left idle until the idle
// timeout, still idle when the engine stops, refused past max_connections,
// never classified — then stops the engine and checks that every goroutine
// the engine, its data plane, its health checks and its connections started
// is gone. Goroutines that existed before the test (the test framework's,
// earlier tests') are ignored.
func TestNoGoroutineLeak(t *testing.T) {
	ignore := goleak.IgnoreCurrent()

	var wg sync.WaitGroup // the test's own client goroutines
	echo := leakBackend(t, "echo", func(c *net.TCPConn) {
		io.Copy(c, c)
		c.CloseWrite()
	})
	// stream writes until the client goes away; cutter writes a little and
	// then resets its end.
	stream := leakBackend(t, "stream", func(c *net.TCPConn) {
		buf := make([]byte, 32<<10)
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	})
	cutter := leakBackend(t, "cutter", func(c *net.TCPConn) {
		c.Write(make([]byte, 100<<10))
		c.SetLinger(0)
	})

	const maxConns = 120
	svc := func(name string, be *leakServer, idle time.Duration) config.Service {
		return config.Service{
			Name:            name,
			Listen:          netip.MustParseAddrPort("127.0.0.1:0"),
			FirstConnection: config.FirstProxy,
			ClientTTL:       time.Hour,
			MaxClients:      10000,
			Classify:        config.ClassifySource,
			Payload:         config.Payload{MaxBytes: 512, Timeout: time.Second},
			OnUnclassified:  "default",
			OnBackendDown:   "rehash",
			Timeouts:        config.Timeouts{Connect: 10 * time.Second, Idle: idle}, // a loaded machine under -race stalls dials past 1 s
			MaxConnections:  10000,
			ProxyProtocol:   "off",
			// Checks run often, so their goroutines are there to leak,
			// but never mark a backend down: under -race on a loaded
			// machine three 200 ms timeouts in a row happened, and the
			// clients of a down backend are reset.
			Health: config.Health{Check: config.CheckTCP, Interval: 50 * time.Millisecond, Timeout: 2 * time.Second, Rise: 1, Fall: 1000},
			Pools: []config.Pool{{Name: "default", Balance: config.BalanceMaglev,
				Backends: []config.Backend{{Name: be.name, Address: be.addr(), Weight: 1}}}},
		}
	}
	limited := svc("limited", echo, time.Minute)
	limited.MaxConnections = maxConns
	payload := svc("payload", echo, time.Minute)
	payload.Classify = config.ClassifyPayload
	payload.Payload = config.Payload{Pattern: regexp.MustCompile(`^HELLO (\w+)\n`), MaxBytes: 64, Timeout: 300 * time.Millisecond}
	payload.OnUnclassified = "reject"
	cfg := &config.Config{
		Log: config.Log{Level: "warn", SummaryInterval: 50 * time.Millisecond},
		Services: []config.Service{
			svc("echo", echo, time.Minute),
			svc("stream", stream, time.Minute),
			svc("cutter", cutter, time.Minute),
			svc("idle", echo, 200*time.Millisecond),
			limited,
			payload,
		},
	}

	// The engine's warnings are shown when a client fails: they say why
	// its connection was reset.
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	warnings := &testenv.Buffer{}
	log.SetOutput(warnings)
	r := runEngine(t, balancer.Options{Config: cfg, Logger: logrus.NewEntry(log), StateDir: t.TempDir()})
	eng := r.eng
	addr := map[string]string{}
	for _, s := range cfg.Services {
		a := eng.Addr(s.Name)
		if a == nil {
			t.Fatalf("serving, but service %s does not listen", s.Name)
		}
		addr[s.Name] = a.String()
	}

	// Clients come from 127.0.0.2-127.0.0.41, so the affinity table holds
	// several pins per service.
	var seq atomic.Uint32
	dial := func(svc string) (*net.TCPConn, error) {
		src := netip.AddrFrom4([4]byte{127, 0, 0, byte(2 + seq.Add(1)%40)})
		d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0)), Timeout: 3 * time.Second}
		c, err := d.Dial("tcp", addr[svc])
		if err != nil {
			return nil, fmt.Errorf("service %s: %w", svc, err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		return c.(*net.TCPConn), nil
	}
	errs := make(chan error, 1000)
	run := func(n int, fn func(i int) error) {
		for i := range n {
			wg.Go(func() {
				if err := fn(i); err != nil {
					errs <- err
				}
			})
		}
	}
	// clients runs fn over n connections to svc, each closed after fn.
	clients := func(n int, svc string, fn func(i int, c *net.TCPConn) error) {
		run(n, func(i int) error {
			c, err := dial(svc)
			if err != nil {
				return err
			}
			defer c.Close()
			return fn(i, c)
		})
	}

	// 150 echoes with a half-close.
	clients(150, "echo", func(i int, c *net.TCPConn) error {
		msg := bytes.Repeat([]byte{byte(i)}, 1000+i*37)
		if _, err := c.Write(msg); err != nil {
			return err
		}
		c.CloseWrite()
		got, err := io.ReadAll(c)
		if err != nil || !bytes.Equal(got, msg) {
			return fmt.Errorf("echo %d: %d of %d bytes back, %v", i, len(got), len(msg), err)
		}
		return nil
	})
	// 50 clients reset the connection in the middle of a download, and 50
	// see the backend reset it.
	clients(50, "stream", func(i int, c *net.TCPConn) error {
		if _, err := io.CopyN(io.Discard, c, int64(64<<10+i*1000)); err != nil {
			return fmt.Errorf("stream %d: %v", i, err)
		}
		c.SetLinger(0)
		return c.Close()
	})
	run(50, func(i int) error {
		c, err := dial("cutter")
		if errors.Is(err, syscall.ECONNRESET) {
			// The backend's reset reached the client before its dial
			// returned (Go reads SO_ERROR after the handshake): fine too.
			return nil
		}
		if err != nil {
			return err
		}
		defer c.Close()
		io.Copy(io.Discard, c) // ends with EOF or a reset, either is fine
		return nil
	})
	// 40 idle connections: the idle timeout closes them.
	clients(40, "idle", func(i int, c *net.TCPConn) error {
		start := time.Now()
		if n, _ := c.Read(make([]byte, 1)); n != 0 || time.Since(start) > 5*time.Second {
			return fmt.Errorf("idle %d: read %d bytes, closed after %v", i, n, time.Since(start))
		}
		return nil
	})
	// Clients that never send a greeting, and some that do.
	clients(40, "payload", func(i int, c *net.TCPConn) error {
		if i%2 == 0 {
			fmt.Fprintf(c, "HELLO s%d\n", i%5)
			c.CloseWrite()
		}
		io.Copy(io.Discard, c)
		return nil
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.Logf("the engine's warnings:\n%s", warnings.String())
	}

	// Past max_connections: held connections fill the service, the excess
	// is reset at once. The held ones are still open when the engine stops.
	var held []*net.TCPConn
	for range maxConns {
		c, err := dial("limited")
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	leakWaitFor(t, func() bool {
		st, err := eng.Status(context.Background())
		if err != nil {
			return false
		}
		for _, s := range st.Services {
			if s.Name == "limited" {
				return s.Active == maxConns
			}
		}
		return false
	})
	refused := 0
	for range 30 {
		c, err := dial("limited")
		if err != nil {
			refused++
			continue
		}
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err != nil {
			refused++
		}
		c.Close()
	}
	if refused != 30 {
		t.Errorf("%d of 30 connections past max_connections refused", refused)
	}

	if err := r.stop(); err != nil {
		t.Errorf("data plane Close: %v", err)
	}
	for _, c := range held {
		c.Close()
	}
	echo.stop()
	stream.stop()
	cutter.stop()
	goleak.VerifyNone(t, ignore)
}

// leakWaitFor polls cond for up to 5 s.
func leakWaitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// leakServer is a loopback backend running handle per connection; stop
// closes it and waits for every handler.
type leakServer struct {
	name string
	ln   *net.TCPListener
	wg   sync.WaitGroup
	once sync.Once
}

func leakBackend(t *testing.T, name string, handle func(*net.TCPConn)) *leakServer {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	s := &leakServer{name: name, ln: ln}
	s.wg.Go(func() {
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			s.wg.Go(func() {
				defer c.Close()
				handle(c)
			})
		}
	})
	t.Cleanup(s.stop)
	return s
}

func (s *leakServer) stop() {
	s.once.Do(func() { s.ln.Close() })
	s.wg.Wait()
}

func (s *leakServer) addr() netip.AddrPort { return s.ln.Addr().(*net.TCPAddr).AddrPort() }
