package proxy_test

import (
	"context"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoff-lb/handoff/proxy"
)

// keepAlive reads SO_KEEPALIVE of c.
func keepAlive(t *testing.T, c *net.TCPConn) bool {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var serr error
	if err := rc.Control(func(fd uintptr) { v, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE) }); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatal(serr)
	}
	return v != 0
}

// TestKeepAlive: Dial and Listen leave keepalive off (it costs four system
// calls per connection as Go sets it up); Splice turns it on where no idle
// timeout watches the connection, and only there.
func TestKeepAlive(t *testing.T) {
	ln, err := proxy.Listen(context.Background(), "tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	backend := startBackend(t, "", echo)
	for _, idle := range []time.Duration{0, time.Minute} {
		t.Run(idle.String(), func(t *testing.T) {
			c := dial(t, ln.Addr().(*net.TCPAddr).AddrPort())
			a, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			client := a.(*net.TCPConn)
			b, err := proxy.Dial(context.Background(), backend, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if keepAlive(t, client) || keepAlive(t, b) {
				t.Fatalf("keepalive on before Splice: accepted %v, dialed %v", keepAlive(t, client), keepAlive(t, b))
			}
			done := make(chan error, 1)
			go func() {
				_, err := proxy.Splice(context.Background(), client, b, proxy.SpliceOptions{Idle: idle})
				done <- err
			}()
			c.Write([]byte("x")) // once echoed back, Splice has set up both connections
			if _, err := c.Read(make([]byte, 1)); err != nil {
				t.Fatal(err)
			}
			if want := idle == 0; keepAlive(t, client) != want || keepAlive(t, b) != want {
				t.Errorf("idle %v: keepalive client %v, backend %v; want %v", idle, keepAlive(t, client), keepAlive(t, b), want)
			}
			c.Close()
			if err := <-done; err != nil {
				t.Error(err)
			}
		})
	}
}
