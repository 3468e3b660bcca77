//go:build !linux

package proxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"time"
)

// ErrTransparentUnsupported is returned by DialTransparent where the
// platform has no transparent sockets.
var ErrTransparentUnsupported = errors.New("transparent dials need Linux")

// DialTransparent returns ErrTransparentUnsupported: only Linux has
// transparent sockets.
func DialTransparent(ctx context.Context, from, to netip.AddrPort, timeout time.Duration) (*net.TCPConn, error) {
	return nil, ErrTransparentUnsupported
}

// CanDialTransparent returns ErrTransparentUnsupported.
func CanDialTransparent() error { return ErrTransparentUnsupported }
