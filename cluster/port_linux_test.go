package cluster_test

import (
	"net/netip"
	"syscall"
	"testing"
)

// holdPort keeps addr's port (IPv4) bound, not listening, until the test
// ends: connections to it are refused, as to a closed port, but no
// listener elsewhere on the machine can be handed the port (bind to port 0
// skips a port in use) and answer for a backend the test took down.
func holdPort(t *testing.T, addr netip.AddrPort) {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	// The port's accepted connections may linger in TIME_WAIT; they
	// share it with a socket that allows reuse.
	if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Port: int(addr.Port()), Addr: addr.Addr().As4()}); err != nil {
		t.Fatalf("holding the port of %s: %v", addr, err)
	}
}
