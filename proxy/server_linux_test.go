package proxy_test

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/proxy"
)

// chanResult reports each connection's end on a channel; a failed dial
// ends it too.
type chanResult struct{ done chan result }

func (r *chanResult) Connected() {}

func (r *chanResult) Done(st proxy.Stats, err error) { r.done <- result{st, err} }

func (r *chanResult) DialFailed(c *proxy.Conn, err error) {
	c.Close()
	r.done <- result{err: err}
}

// serveTo serves ln on srv, routing every connection to backend with res.
func serveTo(t *testing.T, srv *proxy.Server, ln *net.TCPListener, backend netip.AddrPort, g *proxy.Group, res proxy.Result) *proxy.Acceptor {
	t.Helper()
	a, err := srv.Serve(ln, proxy.ServeOptions{Accept: func(c *proxy.Conn) *proxy.Route {
		return &proxy.Route{Backend: backend, ConnectTimeout: 10 * time.Second, Group: g, Result: res}
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Stop(); ln.Close() })
	return a
}

// TestGroupAbortWhileDialing: aborting a group ends its connections still
// waiting for their backend, with the group's error, and only those.
func TestGroupAbortWhileDialing(t *testing.T) {
	srv := newServer(t)
	g, other := srv.NewGroup(), srv.NewGroup()
	res := &chanResult{done: make(chan result, 2)}
	lnA, lnB := listen(t, ""), listen(t, "")
	serveTo(t, srv, lnA, silentBackend(t), g, res)
	serveTo(t, srv, lnB, startBackend(t, "", echo), other, res)
	a := dial(t, lnA.Addr().(*net.TCPAddr).AddrPort())
	b := dial(t, lnB.Addr().(*net.TCPAddr).AddrPort())
	b.Write([]byte("x"))
	if _, err := io.ReadFull(b, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // a's connect is in progress
	errStop := errors.New("service closed")
	g.Abort(errStop)
	if r := <-res.done; !errors.Is(r.err, errStop) {
		t.Fatalf("connection ended with %v, want the group's error", r.err)
	}
	a.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := a.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the aborted client's connection was not closed: %v", err)
	}
	b.Write([]byte("y")) // the other group's connection goes on
	if _, err := io.ReadFull(b, make([]byte, 1)); err != nil {
		t.Fatalf("the other group's connection: %v", err)
	}
	select {
	case r := <-res.done:
		t.Fatalf("the other group's connection ended: %v", r.err)
	default:
	}
}

// TestServerClose: closing the server ends the connections it proxies
// (ErrServerClosed).
func TestServerClose(t *testing.T) {
	srv, err := proxy.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	res := &chanResult{done: make(chan result, 1)}
	backend := startBackend(t, "", echo)
	ln := listen(t, "")
	if _, err := srv.Serve(ln, proxy.ServeOptions{Accept: func(c *proxy.Conn) *proxy.Route {
		return &proxy.Route{Backend: backend, Result: res}
	}}); err != nil {
		t.Fatal(err)
	}
	c := dial(t, ln.Addr().(*net.TCPAddr).AddrPort())
	c.Write([]byte("x"))
	if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	srv.Close()
	ln.Close()
	if r := <-res.done; !errors.Is(r.err, proxy.ErrServerClosed) {
		t.Fatalf("connection ended with %v, want ErrServerClosed", r.err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("the client's connection is still open")
	}
}

// TestAcceptorStop: once Stop returns, no connection of the listener is
// accepted any more; connections proxied already go on.
func TestAcceptorStop(t *testing.T) {
	srv := newServer(t)
	var accepted atomic.Int64
	res := &chanResult{done: make(chan result, 2)}
	backend := startBackend(t, "", echo)
	ln := listen(t, "")
	a, err := srv.Serve(ln, proxy.ServeOptions{Accept: func(c *proxy.Conn) *proxy.Route {
		accepted.Add(1)
		return &proxy.Route{Backend: backend, Result: res}
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	first := dial(t, ln.Addr().(*net.TCPAddr).AddrPort())
	first.Write([]byte("x"))
	if _, err := io.ReadFull(first, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	a.Stop()
	dial(t, ln.Addr().(*net.TCPAddr).AddrPort()) // queued by the kernel, never accepted
	time.Sleep(100 * time.Millisecond)
	if n := accepted.Load(); n != 1 {
		t.Fatalf("%d connections accepted, want 1", n)
	}
	first.Write([]byte("y"))
	if _, err := io.ReadFull(first, make([]byte, 1)); err != nil {
		t.Fatalf("the proxied connection after Stop: %v", err)
	}
}
