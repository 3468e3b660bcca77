package proxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrTransparentUnsupported is returned by DialTransparent where the
// platform has no transparent sockets.
var ErrTransparentUnsupported = errors.New("transparent dials need Linux")

// DialTransparent connects to a backend from a foreign address, the
// client's own (IP_TRANSPARENT / IPV6_TRANSPARENT, which needs
// CAP_NET_ADMIN), so that the backend sees the client, as on the kernel
// path. The backend's replies reach the socket only through the policy
// routing the kernel data plane installs (dataplane.State.Transparent).
// When from's port is taken on this host (a connection of the same client
// port to the same backend still in TIME_WAIT), the dial is retried from
// another port of the client's address. It blocks until connected (or
// timeout, 0 for none, or ctx ends); the Server's Route.Source dials the
// same way on its event loop.
func DialTransparent(ctx context.Context, from, to netip.AddrPort, timeout time.Duration) (*net.TCPConn, error) {
	c, err := dialFrom(ctx, from, to, timeout)
	if errors.Is(err, unix.EADDRINUSE) || errors.Is(err, unix.EADDRNOTAVAIL) {
		c, err = dialFrom(ctx, netip.AddrPortFrom(from.Addr(), 0), to, timeout)
	}
	return c, err
}

func dialFrom(ctx context.Context, from, to netip.AddrPort, timeout time.Duration) (*net.TCPConn, error) {
	d := net.Dialer{
		Timeout:   timeout,
		KeepAlive: -1,
		LocalAddr: net.TCPAddrFromAddrPort(from),
		Control: func(network, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				if from.Addr().Is4() {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
				} else {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
				}
			})
			if err != nil {
				return err
			}
			return serr
		},
	}
	c, err := d.DialContext(ctx, "tcp", to.String())
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// CanDialTransparent reports whether this process may open transparent
// sockets (CAP_NET_ADMIN or CAP_NET_RAW), with the kernel's answer when it
// may not.
func CanDialTransparent() error {
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		fd, err := unix.Socket(fam, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			if fam == unix.AF_INET6 {
				continue // no IPv6 on this host
			}
			return err
		}
		if fam == unix.AF_INET {
			err = unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_TRANSPARENT, 1)
		} else {
			err = unix.SetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
		}
		unix.Close(fd)
		if err != nil {
			return err
		}
	}
	return nil
}
