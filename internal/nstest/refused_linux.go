package nstest

import (
	"net/netip"
	"syscall"
	"testing"
)

// RefusedAddr returns a loopback IPv4 address where nothing listens, for as
// long as the test runs: a socket is bound to the port, without
// SO_REUSEADDR and never listening, and closed by t.Cleanup. A connect gets
// a reset (connection refused), and no other test can bind the port in the
// meantime: a port that is only closed again at once is handed to the next
// listener that asks, which then answers instead (a CI run saw that).
func RefusedAddr(t testing.TB) netip.AddrPort {
	t.Helper()
	_, addr := boundSocket(t)
	return addr
}

// boundSocket returns a TCP socket bound to a port of 127.0.0.1 the kernel
// picks, and that address; t.Cleanup closes it.
func boundSocket(t testing.TB) (int, netip.AddrPort) {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	in4 := sa.(*syscall.SockaddrInet4)
	return fd, netip.AddrPortFrom(netip.AddrFrom4(in4.Addr), uint16(in4.Port))
}
