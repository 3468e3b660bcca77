package fallback

import (
	"io"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// readiness tells whether a socket has bytes (or EOF, or an error) to read,
// and how many bytes, without reading them and without a buffer, so a
// waiting direction holds no pipe or buffer.
type readiness struct {
	rc      syscall.RawConn
	avail   int
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

// poll reports without blocking whether the socket is readable: avail bytes
// are queued (avail > 0), or err is io.EOF or the socket's error.
func (r *readiness) poll() (avail int, ready bool, err error) {
	if err := r.rc.Control(r.control); err != nil {
		return 0, false, err
	}
	return r.avail, r.ready, r.err
}

// wait blocks in the runtime's poller until the socket is readable, honouring
// its read deadline, and returns what poll would.
func (r *readiness) wait() (int, error) {
	if err := r.rc.Read(r.check); err != nil {
		return 0, err
	}
	return r.avail, r.err
}

// probe asks the kernel how many bytes are queued (SIOCINQ); with none it
// peeks one byte to tell EOF and errors from "not yet".
func (r *readiness) probe(fd uintptr) bool {
	r.avail, r.err = 0, nil
	if n, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ); err == nil && n > 0 {
		r.avail = n
		return true
	}
	n, _, err := unix.Recvfrom(int(fd), r.peek[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
	switch {
	case err == unix.EAGAIN || err == unix.EINTR:
		return false
	case err != nil:
		r.err = os.NewSyscallError("recvfrom", err)
	case n == 0:
		r.err = io.EOF
	default:
		r.avail = n // arrived between the two calls
	}
	return true
}
