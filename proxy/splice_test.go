package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/handoff-lb/handoff/config"
	"github.com/handoff-lb/handoff/internal/testenv"
	"github.com/handoff-lb/handoff/proxy"
)

// result is how one proxied connection of a test proxy ended.
type result struct {
	st  proxy.Stats
	err error
}

// proxyConfig tunes a test proxy.
type proxyConfig struct {
	ctx           context.Context // cancelling it aborts the proxy's group; nil = background
	route         proxy.Route     // Idle and Replay of every connection
	proxyProtocol config.ProxyProtocol
	limiter       *proxy.Limiter
	network       string // "tcp4" (default) or "tcp6"
	// handoff hands each connection to a goroutine, which proxies it with
	// Conn.Proxy (the way a connection that is classified first goes);
	// otherwise the Route is returned at once.
	handoff bool
}

// testProxy is a minimal balancer: a Server whose AcceptFunc routes every
// connection to one backend, with a PROXY header when configured — the
// way balancer uses the package.
type testProxy struct {
	ln      *net.TCPListener
	addr    netip.AddrPort
	results chan result
}

func startProxy(t testing.TB, backend netip.AddrPort, cfg proxyConfig) *testProxy {
	t.Helper()
	ln := listen(t, cfg.network)
	p := &testProxy{ln: ln, addr: ln.Addr().(*net.TCPAddr).AddrPort(), results: make(chan result, 20000)}
	srv := newServer(t)
	g := srv.NewGroup()
	parent := cfg.ctx
	if parent == nil {
		parent = context.Background()
	}
	stop := context.AfterFunc(parent, func() { g.Abort(context.Cause(parent)) })
	a, err := srv.Serve(ln, proxy.ServeOptions{Accept: func(c *proxy.Conn) *proxy.Route {
		if cfg.limiter != nil && !cfg.limiter.TryAcquire() {
			c.Close()
			return nil
		}
		r := cfg.route
		r.Backend, r.ConnectTimeout, r.Group = backend, 10*time.Second, g
		r.Result = &testResult{p: p, limiter: cfg.limiter}
		h, err := proxy.Header(cfg.proxyProtocol, c.RemoteAddr(), c.LocalAddr())
		if err != nil {
			c.Close()
			r.Result.Done(proxy.Stats{}, err)
			return nil
		}
		r.Header = h
		if cfg.handoff {
			go c.Proxy(&r)
			return nil
		}
		return &r
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.Stop()
		ln.Close()
		stop()
	})
	return p
}

// newServer starts a Server that ends with the test.
func newServer(t testing.TB) *proxy.Server {
	t.Helper()
	srv, err := proxy.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	return srv
}

// testResult reports each connection's end on the proxy's results.
type testResult struct {
	p       *testProxy
	limiter *proxy.Limiter
}

func (r *testResult) Connected() {}

func (r *testResult) Done(st proxy.Stats, err error) {
	if r.limiter != nil {
		r.limiter.Release()
	}
	r.p.results <- result{st, err}
}

func (r *testResult) DialFailed(c *proxy.Conn, err error) {
	c.Close()
	r.Done(proxy.Stats{}, err)
}

// result waits for the next connection to end.
func (p *testProxy) result(t testing.TB) result {
	t.Helper()
	select {
	case r := <-p.results:
		return r
	case <-time.After(20 * time.Second):
		t.Fatal("no proxied connection ended")
		return result{}
	}
}

func listen(t testing.TB, network string) *net.TCPListener {
	t.Helper()
	addr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}
	if network == "tcp6" {
		addr = &net.TCPAddr{IP: net.IPv6loopback}
	} else {
		network = "tcp4"
	}
	ln, err := net.ListenTCP(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// startBackend serves each connection with handle (which need not close it)
// until the test ends.
func startBackend(t testing.TB, network string, handle func(c *net.TCPConn)) netip.AddrPort {
	t.Helper()
	ln := listen(t, network)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []*net.TCPConn
	wg.Go(func() {
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				handle(c)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// echo copies everything back, then half-closes.
func echo(c *net.TCPConn) {
	io.Copy(c, c)
	c.CloseWrite()
}

func dial(t testing.TB, addr netip.AddrPort) *net.TCPConn {
	t.Helper()
	c, err := net.DialTCP("tcp", nil, net.TCPAddrFromAddrPort(addr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// modes runs f for a connection proxied at once and for one a goroutine
// proxies with Conn.Proxy.
func modes(t *testing.T, f func(t *testing.T, handoff bool)) {
	for _, handoff := range []bool{false, true} {
		name := "at once"
		if handoff {
			name = "handoff"
		}
		t.Run(name, func(t *testing.T) { f(t, handoff) })
	}
}

func TestSpliceEcho(t *testing.T) { modes(t, testSpliceEcho) }

func testSpliceEcho(t *testing.T, handoff bool) {
	p := startProxy(t, startBackend(t, "", echo), proxyConfig{handoff: handoff})
	c := dial(t, p.addr)
	for _, msg := range []string{"hello", "world, again"} {
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
			t.Fatalf("echo = %q, %v; want %q", buf, err, msg)
		}
	}
	c.CloseWrite()
	if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("after CloseWrite: %d, %v; want EOF", n, err)
	}
	r := p.result(t)
	if r.err != nil || r.st.ClientToBackend != 17 || r.st.BackendToClient != 17 {
		t.Fatalf("Splice = %+v, %v; want 17 bytes each way, nil", r.st, r.err)
	}
}

func TestSpliceReplay(t *testing.T) {
	got := make(chan string, 1)
	backend := startBackend(t, "", func(c *net.TCPConn) {
		b, _ := io.ReadAll(c)
		got <- string(b)
	})
	p := startProxy(t, backend, proxyConfig{route: proxy.Route{Replay: []byte("GET / HTTP/1.1\r\n")}})
	c := dial(t, p.addr)
	c.Write([]byte("Host: x\r\n\r\n"))
	c.CloseWrite()
	if s := <-got; s != "GET / HTTP/1.1\r\nHost: x\r\n\r\n" {
		t.Fatalf("backend got %q", s)
	}
	if r := p.result(t); r.st.ClientToBackend != 27 {
		t.Fatalf("ClientToBackend = %d, want 27 (replay included)", r.st.ClientToBackend)
	}
}

// TestSpliceHalfClose: the side that finishes sending first still receives
// everything the other side sends afterwards, in both directions.
func TestSpliceHalfClose(t *testing.T) { modes(t, testSpliceHalfClose) }

func testSpliceHalfClose(t *testing.T, handoff bool) {
	reply := bytes.Repeat([]byte("r"), 3<<20)
	t.Run("client finishes first", func(t *testing.T) {
		backend := startBackend(t, "", func(c *net.TCPConn) {
			n, _ := io.Copy(io.Discard, c) // until the client's EOF arrives
			fmt.Fprintf(c, "got %d\n", n)
			c.Write(reply)
		})
		p := startProxy(t, backend, proxyConfig{handoff: handoff})
		c := dial(t, p.addr)
		c.Write(bytes.Repeat([]byte("q"), 1<<20))
		c.CloseWrite()
		b, err := io.ReadAll(c)
		want := append([]byte("got 1048576\n"), reply...)
		if err != nil || !bytes.Equal(b, want) {
			t.Fatalf("client read %d bytes (%v), want %d", len(b), err, len(want))
		}
		if r := p.result(t); r.err != nil {
			t.Fatal(r.err)
		}
	})
	t.Run("backend finishes first", func(t *testing.T) {
		got := make(chan int64, 1)
		backend := startBackend(t, "", func(c *net.TCPConn) {
			c.Write(reply)
			c.CloseWrite()
			n, _ := io.Copy(io.Discard, c)
			got <- n
		})
		p := startProxy(t, backend, proxyConfig{handoff: handoff})
		c := dial(t, p.addr)
		b, err := io.ReadAll(c) // the backend's EOF reaches the client
		if err != nil || len(b) != len(reply) {
			t.Fatalf("client read %d bytes (%v), want %d", len(b), err, len(reply))
		}
		c.Write(bytes.Repeat([]byte("q"), 1<<20)) // and the client can still send
		c.CloseWrite()
		if n := <-got; n != 1<<20 {
			t.Fatalf("backend got %d bytes, want %d", n, 1<<20)
		}
		if r := p.result(t); r.err != nil || r.st.ClientToBackend != 1<<20 || r.st.BackendToClient != int64(len(reply)) {
			t.Fatalf("Splice = %+v, %v", r.st, r.err)
		}
	})
}

// stream writes n pseudo-random bytes from seed to w and returns their sha256.
func stream(w io.Writer, seed uint64, n int64) ([32]byte, error) {
	h := sha256.New()
	r := rand.NewChaCha8([32]byte{byte(seed)})
	buf := make([]byte, 256<<10)
	for n > 0 {
		b := buf[:min(int64(len(buf)), n)]
		r.Read(b)
		h.Write(b)
		if _, err := w.Write(b); err != nil {
			return [32]byte{}, err
		}
		n -= int64(len(b))
	}
	return [32]byte(h.Sum(nil)), nil
}

// drain reads r to EOF and returns the count and sha256.
func drain(r io.Reader) (int64, [32]byte, error) {
	h := sha256.New()
	n, err := io.CopyBuffer(h, r, make([]byte, 256<<10))
	return n, [32]byte(h.Sum(nil)), err
}

type digest struct {
	n   int64
	sum [32]byte
	err error
}

// both streams n bytes from seed to c, then half-closes it, while it
// drains what c sends, and returns what it sent and what it got.
func both(c *net.TCPConn, seed uint64, n int64) (sent, got digest) {
	done := make(chan digest, 1)
	go func() {
		sum, err := stream(c, seed, n)
		c.CloseWrite()
		done <- digest{n, sum, err}
	}()
	m, sum, err := drain(c)
	return <-done, digest{m, sum, err}
}

func TestSplice100MB(t *testing.T) { modes(t, testSplice100MB) }

func testSplice100MB(t *testing.T, handoff bool) {
	const size = 100 << 20
	backendGot := make(chan digest, 1)
	backendSent := make(chan digest, 1)
	backend := startBackend(t, "", func(c *net.TCPConn) {
		sent, got := both(c, 2, size) // before the handler closes c
		backendGot <- got
		backendSent <- sent
	})
	p := startProxy(t, backend, proxyConfig{route: proxy.Route{Idle: 10 * time.Second}, handoff: handoff})
	up, clientGot := both(dial(t, p.addr), 1, size)
	down := <-backendSent
	if got := <-backendGot; got != up || up.err != nil {
		t.Errorf("client → backend: sent %d %x (%v), got %d %x (%v)", up.n, up.sum, up.err, got.n, got.sum, got.err)
	}
	if clientGot != down || down.err != nil {
		t.Errorf("backend → client: sent %d %x (%v), got %d %x (%v)", down.n, down.sum, down.err, clientGot.n, clientGot.sum, clientGot.err)
	}
	if r := p.result(t); r.err != nil || r.st.ClientToBackend != size || r.st.BackendToClient != size {
		t.Errorf("Splice = %+v, %v", r.st, r.err)
	}
}

func TestSpliceIdle(t *testing.T) {
	const idle = 300 * time.Millisecond
	opts := proxy.Route{Idle: idle}

	t.Run("idle pair is closed", func(t *testing.T) {
		p := startProxy(t, startBackend(t, "", echo), proxyConfig{route: opts})
		c := dial(t, p.addr)
		c.Write([]byte("x"))
		io.ReadFull(c, make([]byte, 1))
		start := time.Now()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
			t.Fatalf("read = %d, %v; want EOF", n, err)
		}
		if d := time.Since(start); d < idle-50*time.Millisecond || d > 3*idle+500*time.Millisecond {
			t.Errorf("closed after %v, want about %v", d, idle)
		}
		if r := p.result(t); !errors.Is(r.err, proxy.ErrIdle) {
			t.Fatalf("Splice error %v, want ErrIdle", r.err)
		}
	})

	// A stream flowing one way keeps the pair open though the other way is
	// silent; it is idle once it stops.
	for _, dir := range []string{"backend to client", "client to backend"} {
		t.Run("busy one way: "+dir, func(t *testing.T) {
			const busy = 5 * idle
			trickle := func(w io.Writer) error {
				for end := time.Now().Add(busy); time.Now().Before(end); {
					if _, err := w.Write([]byte("tick")); err != nil {
						return err
					}
					time.Sleep(idle / 6)
				}
				return nil
			}
			backend := startBackend(t, "", func(c *net.TCPConn) {
				if dir == "backend to client" {
					if err := trickle(c); err != nil {
						t.Errorf("closed while busy: %v", err)
					}
				}
				io.Copy(io.Discard, c)
			})
			p := startProxy(t, backend, proxyConfig{route: opts})
			c := dial(t, p.addr)
			start := time.Now()
			if dir == "client to backend" {
				if err := trickle(c); err != nil {
					t.Fatalf("closed while busy: %v", err)
				}
			}
			io.Copy(io.Discard, c)
			if d := time.Since(start); d < busy {
				t.Fatalf("closed after %v, while still busy", d)
			}
			if r := p.result(t); !errors.Is(r.err, proxy.ErrIdle) {
				t.Fatalf("Splice error %v, want ErrIdle", r.err)
			}
		})
	}

	t.Run("stalled receiver", func(t *testing.T) {
		backend := startBackend(t, "", func(c *net.TCPConn) {
			c.Write(make([]byte, 64<<20)) // the client never reads
		})
		p := startProxy(t, backend, proxyConfig{route: opts})
		dial(t, p.addr)
		if r := p.result(t); !errors.Is(r.err, proxy.ErrIdle) {
			t.Fatalf("Splice error %v, want ErrIdle", r.err)
		}
	})
}

func TestSpliceCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p := startProxy(t, startBackend(t, "", echo), proxyConfig{ctx: ctx})
	c := dial(t, p.addr)
	c.Write([]byte("x"))
	io.ReadFull(c, make([]byte, 1))
	cancel()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || os.IsTimeout(err) {
		t.Fatalf("read after cancel: %v, want the proxy's close", err)
	}
	if r := p.result(t); !errors.Is(r.err, context.Canceled) {
		t.Fatalf("Splice error %v, want context.Canceled", r.err)
	}
}

func TestSpliceCancelledBeforeStart(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	p := startProxy(t, startBackend(t, "", echo), proxyConfig{ctx: ctx})
	c := dial(t, p.addr)
	if r := p.result(t); !errors.Is(r.err, context.Canceled) {
		t.Fatalf("proxied connection ended with %v, want context.Canceled", r.err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || os.IsTimeout(err) {
		t.Fatalf("the client's connection was not closed: %v", err)
	}
}

func TestSpliceProxyProtocol(t *testing.T) {
	for _, network := range []string{"tcp4", "tcp6"} {
		for _, version := range []config.ProxyProtocol{config.ProxyProtocolV1, config.ProxyProtocolV2} {
			t.Run(network+"/"+string(version), func(t *testing.T) {
				if network == "tcp6" {
					if ln, err := net.Listen("tcp6", "[::1]:0"); err != nil {
						testenv.Skipf(t, "no IPv6 loopback: %v", err)
					} else {
						ln.Close()
					}
				}
				headers := make(chan *proxyproto.Header, 1)
				backend := startBackend(t, network, func(c *net.TCPConn) {
					br := bufio.NewReader(c)
					h, err := proxyproto.Read(br)
					if err != nil {
						t.Error(err)
						return
					}
					headers <- h
					io.Copy(c, br) // then echo what follows
				})
				p := startProxy(t, backend, proxyConfig{proxyProtocol: version, network: network, handoff: version == config.ProxyProtocolV2})
				c := dial(t, p.addr)
				c.Write([]byte("ping"))
				buf := make([]byte, 4)
				if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
					t.Fatalf("echo after the header = %q, %v", buf, err)
				}
				h := <-headers
				src, dst, ok := h.TCPAddrs()
				if !ok || h.Version != version[1]-'0' || h.Command != proxyproto.PROXY {
					t.Fatalf("header %+v", h)
				}
				if src.AddrPort() != c.LocalAddr().(*net.TCPAddr).AddrPort() || dst.AddrPort() != p.addr {
					t.Fatalf("header says %v → %v, want %v → %v", src, dst, c.LocalAddr(), p.addr)
				}
			})
		}
	}
}

func TestSpliceManyConcurrent(t *testing.T) { modes(t, testSpliceManyConcurrent) }

func testSpliceManyConcurrent(t *testing.T, handoff bool) {
	const n = 1000
	p := startProxy(t, startBackend(t, "", echo), proxyConfig{route: proxy.Route{Idle: 30 * time.Second}, handoff: handoff})
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			c, err := net.DialTCP("tcp", nil, net.TCPAddrFromAddrPort(p.addr))
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			msg := bytes.Repeat([]byte{byte(i)}, 4096+i)
			go func() {
				c.Write(msg)
				c.CloseWrite()
			}()
			got, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(got, msg) {
				errs <- fmt.Errorf("conn %d: got %d bytes, %v", i, len(got), err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for range n {
		if r := p.result(t); r.err != nil {
			t.Error(r.err)
		}
	}
}

// TestFlowCountsAsItMoves: a Route's Flow counts the bytes of a connection
// that is still open, both ways, the replay included; at its end they
// equal the connection's Stats.
func TestFlowCountsAsItMoves(t *testing.T) { modes(t, testFlowCountsAsItMoves) }

func testFlowCountsAsItMoves(t *testing.T, handoff bool) {
	const up, down = 1 << 20, 2 << 20
	release := make(chan struct{})
	backend := startBackend(t, "", func(c *net.TCPConn) {
		if _, err := io.CopyN(io.Discard, c, up+5); err != nil {
			return
		}
		c.Write(make([]byte, down))
		<-release
	})
	var flow proxy.Flow
	p := startProxy(t, backend, proxyConfig{route: proxy.Route{Replay: []byte("hello"), Flow: &flow}, handoff: handoff})
	c := dial(t, p.addr)
	defer c.Close()
	if _, err := c.Write(make([]byte, up)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(io.Discard, c, down); err != nil {
		t.Fatal(err)
	}
	// The peer may read the last bytes an instant before the proxy adds
	// them up.
	for deadline := time.Now().Add(2 * time.Second); flow.ClientToBackend.Load() != up+5 || flow.BackendToClient.Load() != down; {
		if time.Now().After(deadline) {
			t.Fatalf("while open: client to backend %d, want %d; backend to client %d, want %d",
				flow.ClientToBackend.Load(), up+5, flow.BackendToClient.Load(), down)
		}
		time.Sleep(5 * time.Millisecond)
	}
	select {
	case r := <-p.results:
		t.Fatalf("the connection ended early: %+v", r)
	default:
	}
	close(release)
	c.Close()
	r := p.result(t)
	if r.st.ClientToBackend != flow.ClientToBackend.Load() || r.st.BackendToClient != flow.BackendToClient.Load() {
		t.Errorf("Stats %+v at the end, flow %d/%d", r.st, flow.ClientToBackend.Load(), flow.BackendToClient.Load())
	}
}
