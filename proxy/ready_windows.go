package proxy

import (
	"net"
	"syscall"
)

// readiness waits for a socket to become readable without a buffer: the
// runtime's RawConn.Read issues a zero-byte receive between two calls of
// check, so a waiting direction holds no buffer.
type readiness struct {
	rc     syscall.RawConn
	called bool
	check  func(fd uintptr) bool // allocated once
}

func newReadiness(c *net.TCPConn) (*readiness, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	r := &readiness{rc: rc}
	r.check = func(uintptr) bool {
		if !r.called {
			r.called = true
			return false // wait once
		}
		return true
	}
	return r, nil
}

// poll never knows without waiting.
func (r *readiness) poll() (avail int, ready bool, err error) { return 0, false, nil }

// wait blocks until the socket is readable (bytes or EOF), honouring its read
// deadline; the count of bytes is unknown (-1).
func (r *readiness) wait() (int, error) {
	r.called = false
	if err := r.rc.Read(r.check); err != nil {
		return 0, err
	}
	return -1, nil
}
