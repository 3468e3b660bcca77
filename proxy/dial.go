package proxy

import (
	"context"
	"net"
	"net/netip"
	"time"
)

// Dial connects to a backend. timeout bounds the connect (0: only ctx does).
// The caller owns the returned connection.
//
// The connection has TCP_NODELAY, as Go sets by default, and no TCP
// keepalive, which Go would otherwise set up with four system calls per
// connection: a proxied connection is watched by Splice's idle timeout, and
// Splice turns keepalive on (with the kernel's timers) where there is none.
func Dial(ctx context.Context, addr netip.AddrPort, timeout time.Duration) (*net.TCPConn, error) {
	// Not Dialer.DialTCP: with no local address it binds the socket to port
	// 0 before connecting, which reserves an ephemeral port per connection
	// whatever the destination.
	d := net.Dialer{Timeout: timeout, KeepAlive: -1}
	c, err := d.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// Listen opens a listener whose accepted connections, like Dial's, have no
// keepalive of their own (see Dial): a ListenFunc for the services whose
// connections Splice proxies.
func Listen(ctx context.Context, network, address string) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: -1}
	return lc.Listen(ctx, network, address)
}
