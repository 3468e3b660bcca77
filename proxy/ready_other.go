//go:build !unix && !windows

package proxy

import "net"

// readiness cannot wait without reading on this platform: every poll says
// "ready", so transfer blocks in Read with a pooled buffer and idle
// connections are detected by the write deadline only.
type readiness struct{}

func newReadiness(*net.TCPConn) (*readiness, error) { return &readiness{}, nil }

func (*readiness) poll() (avail int, ready bool, err error) { return -1, true, nil }

func (*readiness) wait() (int, error) { return -1, nil }
