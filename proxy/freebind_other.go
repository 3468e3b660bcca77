//go:build !linux

package proxy

import (
	"context"
	"net"
)

// ListenFreebind is Listen: binding an address the host does not hold
// (IP_FREEBIND) is Linux's.
func ListenFreebind(ctx context.Context, network, address string) (net.Listener, error) {
	return Listen(ctx, network, address)
}
