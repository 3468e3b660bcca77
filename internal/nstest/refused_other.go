//go:build !linux

package nstest

import (
	"net"
	"net/netip"
	"testing"
)

// RefusedAddr returns a loopback IPv4 address where nothing listens: a port
// the kernel handed out and that was closed again at once. (On Linux the
// port stays bound, unlistened, until the test ends.)
func RefusedAddr(t testing.TB) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()
	return a
}
