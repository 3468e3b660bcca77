//go:build !linux

package healthcheck

import (
	"context"
	"net"
	"net/netip"
)

// connectProbe opens a TCP connection to addr and closes it with a reset,
// so that no TIME_WAIT socket is left behind.
func connectProbe(ctx context.Context, addr netip.AddrPort) error {
	c, err := checkDialer.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		return err
	}
	_ = c.(*net.TCPConn).SetLinger(0)
	return c.Close()
}
