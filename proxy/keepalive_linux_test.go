package proxy_test

import (
	"encoding/binary"
	"encoding/hex"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/proxy"
)

// keepAliveTimer reports whether the local TCP socket from local to remote
// has its keepalive timer running (/proc/net/tcp's timer column says 2, a
// pending sk_timer: keepalive, for an established socket).
func keepAliveTimer(t *testing.T, local, remote netip.AddrPort) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 6 || procAddr(t, f[1]) != local || procAddr(t, f[2]) != remote {
			continue
		}
		return strings.HasPrefix(f[5], "02:")
	}
	t.Fatalf("no socket %v -> %v in /proc/net/tcp", local, remote)
	return false
}

// procAddr parses /proc/net/tcp's "0100007F:1F90" (IPv4 in host order).
func procAddr(t *testing.T, s string) netip.AddrPort {
	ip, port, _ := strings.Cut(s, ":")
	a, err1 := hex.DecodeString(ip)
	p, err2 := hex.DecodeString(port)
	if err1 != nil || err2 != nil || len(a) != 4 || len(p) != 2 {
		t.Fatalf("/proc/net/tcp address %q", s)
	}
	var v4 [4]byte
	binary.BigEndian.PutUint32(v4[:], binary.NativeEndian.Uint32(a))
	return netip.AddrPortFrom(netip.AddrFrom4(v4), binary.BigEndian.Uint16(p))
}

// TestKeepAlive: accepted and dialed connections get no keepalive of their
// own (Go's would cost four system calls per connection); a proxied
// connection turns it on for both sockets where no idle timeout watches
// it, and only there.
func TestKeepAlive(t *testing.T) {
	for _, idle := range []time.Duration{0, time.Minute} {
		t.Run(idle.String(), func(t *testing.T) {
			backendSide := make(chan netip.AddrPort, 1)
			backend := startBackend(t, "", func(c *net.TCPConn) {
				backendSide <- c.RemoteAddr().(*net.TCPAddr).AddrPort()
				echo(c)
			})
			p := startProxy(t, backend, proxyConfig{route: proxy.Route{Idle: idle}})
			c := dial(t, p.addr)
			c.Write([]byte("x")) // once echoed back, both connections are set up
			if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
				t.Fatal(err)
			}
			want := idle == 0
			if got := keepAliveTimer(t, p.addr, c.LocalAddr().(*net.TCPAddr).AddrPort()); got != want {
				t.Errorf("idle %v: keepalive on the client's connection %v, want %v", idle, got, want)
			}
			if got := keepAliveTimer(t, <-backendSide, backend); got != want {
				t.Errorf("idle %v: keepalive on the backend connection %v, want %v", idle, got, want)
			}
			c.Close()
			if r := p.result(t); r.err != nil {
				t.Error(r.err)
			}
		})
	}
}
