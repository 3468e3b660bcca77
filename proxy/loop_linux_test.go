package proxy_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoff-lb/handoff/internal/testenv"
	"github.com/handoff-lb/handoff/proxy"
)

// TestSlowReceiver: a receiver that does not read for a while fills its
// socket; the direction waits for room (the loop registers for writable
// only then) and delivers every byte once the receiver reads, both ways.
func TestSlowReceiver(t *testing.T) { modes(t, testSlowReceiver) }

func testSlowReceiver(t *testing.T, handoff bool) {
	const size = 8 << 20
	const pause = 300 * time.Millisecond
	t.Run("client reads late", func(t *testing.T) {
		backend := startBackend(t, "", func(c *net.TCPConn) {
			stream(c, 3, size)
			c.CloseWrite()
			io.Copy(io.Discard, c)
		})
		p := startProxy(t, backend, proxyConfig{handoff: handoff})
		c := dial(t, p.addr)
		time.Sleep(pause)
		n, sum, err := drain(c)
		want, _ := stream(io.Discard, 3, size)
		if err != nil || n != size || sum != want {
			t.Fatalf("client got %d bytes (%v), digest match %v; want %d", n, err, sum == want, size)
		}
		c.CloseWrite()
		if r := p.result(t); r.err != nil || r.st.BackendToClient != size {
			t.Fatalf("proxied %+v, %v", r.st, r.err)
		}
	})
	t.Run("backend reads late", func(t *testing.T) {
		got := make(chan digest, 1)
		backend := startBackend(t, "", func(c *net.TCPConn) {
			time.Sleep(pause)
			n, sum, err := drain(c)
			got <- digest{n, sum, err}
		})
		p := startProxy(t, backend, proxyConfig{handoff: handoff})
		c := dial(t, p.addr)
		sum, err := stream(c, 4, size)
		if err != nil {
			t.Fatal(err)
		}
		c.CloseWrite()
		if g := <-got; g.err != nil || g.n != size || g.sum != sum {
			t.Fatalf("backend got %d bytes (%v), digest match %v; want %d", g.n, g.err, g.sum == sum, size)
		}
		if r := p.result(t); r.err != nil || r.st.ClientToBackend != size {
			t.Fatalf("proxied %+v, %v", r.st, r.err)
		}
	})
}

// TestConnWriteWaitsForRoom: a goroutine that owns a Conn writes more than
// the socket holds; Write waits for the client to read, then completes.
func TestConnWriteWaitsForRoom(t *testing.T) {
	const size = 32 << 20 // more than the sockets' buffers hold
	done := make(chan error, 1)
	ln := listen(t, "")
	a, err := newServer(t).Serve(ln, proxy.ServeOptions{Accept: func(c *proxy.Conn) *proxy.Route {
		go func() {
			defer c.Close()
			c.SetWriteDeadline(time.Now().Add(20 * time.Second))
			_, err := stream(writerFunc(c.Write), 5, size)
			done <- err
		}()
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Stop(); ln.Close() })
	c := dial(t, ln.Addr().(*net.TCPAddr).AddrPort())
	time.Sleep(300 * time.Millisecond) // the writer fills the socket and waits
	select {
	case err := <-done:
		t.Fatalf("Write of %d bytes returned before the client read: %v", size, err)
	default:
	}
	n, sum, err := drain(c)
	want, _ := stream(io.Discard, 5, size)
	if err != nil || n != size || sum != want {
		t.Fatalf("client got %d bytes (%v), digest match %v; want %d", n, err, sum == want, size)
	}
	if err := <-done; err != nil {
		t.Fatalf("Write: %v", err)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

// TestBackendReset: a backend that resets mid-connection ends the proxied
// connection with the reset, and the client's connection is closed.
func TestBackendReset(t *testing.T) { modes(t, testBackendReset) }

func testBackendReset(t *testing.T, handoff bool) {
	backend := startBackend(t, "", func(c *net.TCPConn) {
		io.ReadFull(c, make([]byte, 1))
		c.SetLinger(0)
		c.Close()
	})
	p := startProxy(t, backend, proxyConfig{handoff: handoff})
	c := dial(t, p.addr)
	c.Write([]byte("x"))
	if r := p.result(t); !errors.Is(r.err, syscall.ECONNRESET) && !errors.Is(r.err, syscall.EPIPE) {
		t.Fatalf("proxied connection ended with %v, want the backend's reset", r.err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil || os.IsTimeout(err) {
		t.Fatalf("client read %d, %v; want its connection closed", n, err)
	}
}

// TestAcceptBackoff: out of file descriptors, accepting backs off (and says
// so through AcceptError) instead of spinning, and resumes once
// descriptors are free: the waiting client is then served.
func TestAcceptBackoff(t *testing.T) {
	backend := startBackend(t, "", echo)
	ln := listen(t, "")
	res := &chanResult{done: make(chan result, 1)}
	failed := make(chan error, 16)
	a, err := newServer(t).Serve(ln, proxy.ServeOptions{
		Accept: func(c *proxy.Conn) *proxy.Route {
			return &proxy.Route{Backend: backend, Result: res}
		},
		AcceptError: func(err error, retryIn time.Duration) {
			if retryIn <= 0 {
				t.Errorf("AcceptError(%v, %v): no back-off", err, retryIn)
			}
			select {
			case failed <- err:
			default:
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Stop(); ln.Close() })

	// The client's socket is made first (it needs a descriptor of this
	// process too), every descriptor left is taken, then it connects.
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	fillers := exhaustFDs(t)
	addr := ln.Addr().(*net.TCPAddr).AddrPort()
	connectErr := unix.Connect(fd, &unix.SockaddrInet4{Port: int(addr.Port()), Addr: addr.Addr().As4()})
	var acceptErr error
	if connectErr == nil {
		select {
		case acceptErr = <-failed:
		case <-time.After(5 * time.Second):
		}
	}
	for _, fd := range fillers {
		unix.Close(fd)
	}
	f := os.NewFile(uintptr(fd), "client")
	nc, err := net.FileConn(f)
	f.Close()
	if connectErr != nil || err != nil {
		t.Fatal(connectErr, err)
	}
	c := nc.(*net.TCPConn)
	defer c.Close()
	if !errors.Is(acceptErr, syscall.EMFILE) {
		t.Fatalf("AcceptError got %v, want EMFILE", acceptErr)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write([]byte("ping"))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo once descriptors are free = %q, %v", buf, err)
	}
}

// exhaustFDs lowers RLIMIT_NOFILE to a little above the descriptors open
// now (restored when the test ends) and opens descriptors until none is
// left; the caller closes them.
func exhaustFDs(t *testing.T) []int {
	t.Helper()
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	highest := 0
	for _, e := range ents {
		if n, err := strconv.Atoi(e.Name()); err == nil {
			highest = max(highest, n)
		}
	}
	lim := old
	lim.Cur = uint64(highest + 64)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old) })
	var fds []int
	for {
		fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			if !errors.Is(err, unix.EMFILE) {
				t.Fatal(err)
			}
			return fds
		}
		fds = append(fds, fd)
	}
}

// TestRouteSource: a Route with a Source dials the backend from that
// address and port (IP_TRANSPARENT, which needs CAP_NET_ADMIN); when the
// port is taken on this host, from another port of the same address.
func TestRouteSource(t *testing.T) {
	if err := proxy.CanDialTransparent(); err != nil {
		testenv.Skipf(t, "no transparent sockets: %v", err)
	}
	peers := make(chan netip.AddrPort, 4)
	backend := startBackend(t, "", func(c *net.TCPConn) {
		peers <- c.RemoteAddr().(*net.TCPAddr).AddrPort()
		echo(c)
	})
	tests := []struct {
		name     string
		source   func(client netip.AddrPort) netip.AddrPort
		samePort bool
	}{
		// 127.0.0.2 is this host's (all of 127/8 is), and the client's
		// port is free on it.
		{"client port", func(c netip.AddrPort) netip.AddrPort {
			return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), c.Port())
		}, true},
		// The client's own address and port are taken by its socket.
		{"port taken", func(c netip.AddrPort) netip.AddrPort { return c }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ln := listen(t, "")
			res := &chanResult{done: make(chan result, 1)}
			a, err := newServer(t).Serve(ln, proxy.ServeOptions{Accept: func(c *proxy.Conn) *proxy.Route {
				return &proxy.Route{Backend: backend, Source: tt.source(c.RemoteAddrPort()), Result: res}
			}})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { a.Stop(); ln.Close() })
			c := dial(t, ln.Addr().(*net.TCPAddr).AddrPort())
			c.SetDeadline(time.Now().Add(10 * time.Second))
			c.Write([]byte("ping"))
			buf := make([]byte, 4)
			if _, err := io.ReadFull(c, buf); err != nil || !bytes.Equal(buf, []byte("ping")) {
				t.Fatalf("echo = %q, %v", buf, err)
			}
			client := c.LocalAddr().(*net.TCPAddr).AddrPort()
			want := tt.source(client)
			got := <-peers
			if got.Addr() != want.Addr() || (got.Port() == want.Port()) != tt.samePort {
				t.Fatalf("the backend sees %v; want %v (same port: %v)", got, want, tt.samePort)
			}
		})
	}
}
