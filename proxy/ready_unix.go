//go:build unix && !linux

package proxy

import (
	"io"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// readiness tells whether a socket has bytes (or EOF, or an error) to read
// without reading them, so a waiting direction holds no buffer.
type readiness struct {
	rc      syscall.RawConn
	err     error
	ready   bool
	check   func(fd uintptr) bool // probe, allocated once
	control func(fd uintptr)
	peek    [1]byte
}

func newReadiness(c *net.TCPConn) (*readiness, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	r := &readiness{rc: rc}
	r.check = r.probe
	r.control = func(fd uintptr) { r.ready = r.probe(fd) }
	return r, nil
}

// poll reports without blocking whether the socket is readable; avail is -1
// (some bytes, count unknown) unless err is io.EOF or the socket's error.
func (r *readiness) poll() (avail int, ready bool, err error) {
	if err := r.rc.Control(r.control); err != nil {
		return 0, false, err
	}
	return -1, r.ready, r.err
}

// wait blocks in the runtime's poller until the socket is readable, honouring
// its read deadline.
func (r *readiness) wait() (int, error) {
	if err := r.rc.Read(r.check); err != nil {
		return 0, err
	}
	return -1, r.err
}

// probe peeks one byte to tell data, EOF and errors from "not yet".
func (r *readiness) probe(fd uintptr) bool {
	r.err = nil
	n, _, err := unix.Recvfrom(int(fd), r.peek[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
	switch {
	case err == unix.EAGAIN || err == unix.EINTR:
		return false
	case err != nil:
		r.err = os.NewSyscallError("recvfrom", err)
	case n == 0:
		r.err = io.EOF
	}
	return true
}
