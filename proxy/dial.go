package proxy

import (
	"context"
	"net"
)

// Listen opens a listener for Server.Serve: its accepted connections have
// no keepalive of their own, which Go would otherwise set up with four
// system calls per connection; a proxied connection is watched by its
// idle timeout, and keepalive is turned on (with the kernel's timers)
// where there is none (Route.Idle).
func Listen(ctx context.Context, network, address string) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: -1}
	return lc.Listen(ctx, network, address)
}
