package proxy

import (
	"net"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"
)

// dialSocket starts connecting to a backend: a non-blocking socket with
// TCP_NODELAY (as Go sets by default) and no keepalive (see Route.Idle),
// its connect in progress. The loop learns the outcome from the socket's
// first event.
//
// Four system calls: Go's net.Dial makes eight (it also reads SO_ERROR
// after the connect, asks for both addresses, and registers the socket
// with the runtime's poller), and a context per dial.
//
// A valid from makes the dial transparent (Route.Source): two calls more,
// IP_TRANSPARENT and bind. When from's port is taken (a connection of the
// same client port to the same backend still in TIME_WAIT), the dial is
// made again from another port of from's address, as DialTransparent does.
func dialSocket(addr, from netip.AddrPort) (int, error) {
	fd, op, err := connectFrom(addr, from)
	if from.IsValid() && from.Port() != 0 && (err == unix.EADDRINUSE || err == unix.EADDRNOTAVAIL) {
		fd, op, err = connectFrom(addr, netip.AddrPortFrom(from.Addr(), 0))
	}
	if err != nil {
		return -1, dialError(addr, os.NewSyscallError(op, err))
	}
	return fd, nil
}

// connectFrom is one attempt of dialSocket; on failure it returns the
// system call that failed.
func connectFrom(addr, from netip.AddrPort) (int, string, error) {
	family := unix.AF_INET6
	if addr.Addr().Is4() {
		family = unix.AF_INET
	}
	fd, err := rawSocket(family)
	if err != nil {
		return -1, "socket", err
	}
	rawSetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	if from.IsValid() {
		if from.Addr().Is4() {
			err = rawSetsockoptInt(fd, unix.SOL_IP, unix.IP_TRANSPARENT, 1)
		} else {
			err = rawSetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
		}
		if err != nil {
			rawClose(fd)
			return -1, "setsockopt", err
		}
		if err := rawBind(fd, from); err != nil {
			rawClose(fd)
			return -1, "bind", err
		}
	}
	if err := rawConnect(fd, addr); err != nil && err != unix.EINPROGRESS {
		rawClose(fd)
		return -1, "connect", err
	}
	return fd, "", nil
}

func dialError(addr netip.AddrPort, err error) error {
	return &net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(addr), Err: err}
}
