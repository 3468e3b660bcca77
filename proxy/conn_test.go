package proxy_test

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/proxy"
)

// TestConnRead: a goroutine that owns an accepted Conn reads the client's
// first bytes with a deadline (as classification does), then proxies the
// connection, replaying them; a client that sends nothing meets the
// deadline; a deadline moved into the past unblocks a waiting Read at once
// (the classifier's cancellation).
func TestConnRead(t *testing.T) {
	backend := startBackend(t, "", echo)
	type outcome struct {
		n   int
		err error
		d   time.Duration
	}
	serve := func(t *testing.T, handle func(p *testProxy, c *proxy.Conn)) *testProxy {
		ln := listen(t, "")
		p := &testProxy{ln: ln, addr: ln.Addr().(*net.TCPAddr).AddrPort(), results: make(chan result, 10)}
		a, err := newServer(t).Serve(ln, proxy.ServeOptions{Accept: func(c *proxy.Conn) *proxy.Route {
			go handle(p, c)
			return nil
		}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Stop(); ln.Close() })
		return p
	}

	t.Run("read then proxy", func(t *testing.T) {
		p := serve(t, func(p *testProxy, c *proxy.Conn) {
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 64)
			n, err := io.ReadAtLeast(c, buf, 6)
			if err != nil {
				t.Error(err)
				c.Close()
				return
			}
			c.SetReadDeadline(time.Time{})
			c.Proxy(&proxy.Route{Backend: backend, Replay: buf[:n], Result: &testResult{p: p}})
		})
		c := dial(t, p.addr)
		time.Sleep(50 * time.Millisecond) // the goroutine waits for the bytes
		c.Write([]byte("HELLO\n"))
		c.Write([]byte("more"))
		c.CloseWrite()
		got, err := io.ReadAll(c)
		if err != nil || string(got) != "HELLO\nmore" {
			t.Fatalf("echo = %q, %v", got, err)
		}
		if r := p.result(t); r.err != nil || r.st.ClientToBackend != 10 || r.st.BackendToClient != 10 {
			t.Fatalf("proxied %+v, %v", r.st, r.err)
		}
	})

	t.Run("deadline", func(t *testing.T) {
		got := make(chan outcome, 1)
		p := serve(t, func(_ *testProxy, c *proxy.Conn) {
			start := time.Now()
			c.SetReadDeadline(start.Add(200 * time.Millisecond))
			n, err := c.Read(make([]byte, 8))
			got <- outcome{n, err, time.Since(start)}
			c.Reset()
		})
		c := dial(t, p.addr)
		o := <-got
		if !errors.Is(o.err, os.ErrDeadlineExceeded) || o.d < 200*time.Millisecond || o.d > 2*time.Second {
			t.Fatalf("Read = %d, %v after %v; want a deadline error after 200ms", o.n, o.err, o.d)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("client read after Reset: %v, want a reset", err)
		}
	})

	t.Run("unblocked", func(t *testing.T) {
		got := make(chan outcome, 1)
		p := serve(t, func(_ *testProxy, c *proxy.Conn) {
			defer c.Close()
			start := time.Now()
			time.AfterFunc(100*time.Millisecond, func() { c.SetReadDeadline(time.Unix(1, 0)) })
			n, err := c.Read(make([]byte, 8))
			got <- outcome{n, err, time.Since(start)}
		})
		dial(t, p.addr)
		o := <-got
		if !errors.Is(o.err, os.ErrDeadlineExceeded) || o.d > 2*time.Second {
			t.Fatalf("Read = %d, %v after %v; want a deadline error after 100ms", o.n, o.err, o.d)
		}
	})

	t.Run("closed while reading", func(t *testing.T) {
		got := make(chan outcome, 1)
		p := serve(t, func(_ *testProxy, c *proxy.Conn) {
			time.AfterFunc(100*time.Millisecond, func() { c.Close() })
			n, err := c.Read(make([]byte, 8))
			got <- outcome{n, err, 0}
		})
		c := dial(t, p.addr)
		if o := <-got; !errors.Is(o.err, net.ErrClosed) {
			t.Fatalf("Read = %d, %v; want net.ErrClosed", o.n, o.err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
			t.Fatalf("client read after Close: %d, %v; want EOF", n, err)
		}
	})
}
