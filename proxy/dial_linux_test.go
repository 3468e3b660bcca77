package proxy_test

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/internal/nstest"
	"github.com/handoff-lb/handoff/proxy"
)

// TestDialFailed: a backend that refuses, or does not answer within
// ConnectTimeout, hands the untouched client back to a goroutine
// (DialFailed), which proxies it to another backend: the client sees one
// working connection.
func TestDialFailed(t *testing.T) {
	good := startBackend(t, "", echo)
	closed := listen(t, "")
	refusing := closed.Addr().(*net.TCPAddr).AddrPort()
	closed.Close()
	tests := []struct {
		name    string
		backend netip.AddrPort
		want    error
	}{
		{"refused", refusing, syscall.ECONNREFUSED},
		{"timeout", silentBackend(t), os.ErrDeadlineExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ln := listen(t, "")
			srv := newServer(t)
			res := &failover{good: good, failed: make(chan error, 1), done: make(chan result, 1)}
			a, err := srv.Serve(ln, proxy.ServeOptions{Accept: func(c *proxy.Conn) *proxy.Route {
				return &proxy.Route{Backend: tt.backend, ConnectTimeout: 300 * time.Millisecond, Result: res}
			}})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { a.Stop(); ln.Close() })
			start := time.Now()
			c := dial(t, ln.Addr().(*net.TCPAddr).AddrPort())
			c.SetDeadline(time.Now().Add(10 * time.Second))
			c.Write([]byte("ping"))
			buf := make([]byte, 4)
			if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
				t.Fatalf("echo through the second backend = %q, %v", buf, err)
			}
			if err := <-res.failed; !errors.Is(err, tt.want) {
				t.Fatalf("DialFailed with %v, want %v", err, tt.want)
			}
			if tt.want == os.ErrDeadlineExceeded && time.Since(start) < 300*time.Millisecond {
				t.Fatalf("timed out after %v, before ConnectTimeout", time.Since(start))
			}
			c.CloseWrite()
			if r := <-res.done; r.err != nil || r.st.ClientToBackend != 4 || r.st.BackendToClient != 4 {
				t.Fatalf("second route ended %+v, %v", r.st, r.err)
			}
		})
	}
}

// failover proxies a client whose first backend failed to good.
type failover struct {
	good   netip.AddrPort
	failed chan error
	done   chan result
}

func (f *failover) Connected() {}

func (f *failover) Done(st proxy.Stats, err error) { f.done <- result{st, err} }

func (f *failover) DialFailed(c *proxy.Conn, err error) {
	f.failed <- err
	c.Proxy(&proxy.Route{Backend: f.good, Result: f})
}

// silentBackend returns the address of a listener that never answers a
// SYN: its accept queue (backlog 0) is full.
func silentBackend(t *testing.T) netip.AddrPort {
	addr, _ := nstest.FullBacklog(t)
	return addr
}
