package kernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// errListInterrupted says that a listing was cut short because the set had
// to be swapped or destroyed: the kernel refuses both while a listing of
// the set is in progress.
var errListInterrupted = errors.New("listing interrupted: the set was rebuilt or destroyed")

const (
	// dumpBufSize is a dump socket's receive buffer: the kernel puts at
	// most about 32 KiB of a dump in one datagram.
	dumpBufSize = 64 << 10
	// dumpTimeout bounds each wait for the kernel's next datagram.
	dumpTimeout = 30 * time.Second
	// maxIdleDumps is how many idle dump sockets are kept open.
	maxIdleDumps = 2
)

// dumpSocket runs netfilter dumps (ipset listings, conntrack tables) over
// a NETLINK_NETFILTER socket of its own. Replies are read one datagram at a
// time into one reused buffer and parsed in place, so a listing of any
// size costs the buffer and no more: the kernel produces the next part of
// the dump only as the last is read. A dumpSocket serves one listing at a
// time; closing it from another goroutine ends the listing, in the kernel
// too.
type dumpSocket struct {
	f   *os.File // non-blocking, in the runtime's poller: Close is safe during a read
	rc  syscall.RawConn
	pid uint32 // the socket's netlink port id
	seq uint32
	req []byte
	buf []byte

	set         string      // the set being listed; "" for all
	interrupted atomic.Bool // closed by interrupt
}

func newDumpSocket(ns netns.NsHandle) (*dumpSocket, error) {
	var fd int
	err := inNetNS(ns, func() (err error) {
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_NETFILTER)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	nsa, ok := sa.(*unix.SockaddrNetlink)
	if !ok {
		unix.Close(fd)
		return nil, errors.New("netlink socket: not a netlink address")
	}
	f := os.NewFile(uintptr(fd), "netlink-dump")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	return &dumpSocket{f: f, rc: rc, pid: nsa.Pid, req: make([]byte, 0, 128), buf: make([]byte, dumpBufSize)}, nil
}

// dump lists set name (every set when name is "") with IPSET_CMD_LIST
// and the command flags given, and calls fn with the attributes of each
// reply message, in the kernel's order. attrs aliases the receive buffer:
// fn must copy what it keeps. The listing stops at fn's first error,
// which dump returns. reusable says whether the socket is fit for another
// listing: not when the kernel's dump was left unfinished.
func (s *dumpSocket) dump(name string, flags uint32, fn func(attrs []byte) error) (reusable bool, err error) {
	s.seq++
	s.req = appendList(s.req[:0], s.seq, name, flags)
	return s.exchange(unix.NFNL_SUBSYS_IPSET<<8|nl.IPSET_CMD_LIST, fn)
}

// exchange sends the dump request in s.req (sequence number s.seq) and
// calls fn with the attributes, past the nfgenmsg header, of each reply
// message of type typ, as dump does.
func (s *dumpSocket) exchange(typ uint16, fn func(attrs []byte) error) (reusable bool, err error) {
	if err := s.f.SetWriteDeadline(time.Now().Add(dumpTimeout)); err != nil {
		return false, fmt.Errorf("netlink socket: %w", err)
	}
	var serr error
	err = s.rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), s.req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		return !errors.Is(serr, unix.EAGAIN)
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return false, fmt.Errorf("netlink send: %w", err)
	}
	ne := binary.NativeEndian
	for {
		n, err := s.recv()
		if err != nil {
			return false, err
		}
		m := s.buf[:n]
		for len(m) >= unix.SizeofNlMsghdr {
			l := int(ne.Uint32(m[0:4]))
			if l < unix.SizeofNlMsghdr || l > len(m) {
				return false, errors.New("netlink receive: malformed reply")
			}
			mtyp, seq, pid := ne.Uint16(m[4:6]), ne.Uint32(m[8:12]), ne.Uint32(m[12:16])
			payload := m[unix.SizeofNlMsghdr:l]
			m = m[min(nlAlign(l), len(m)):]
			if seq != s.seq || pid != s.pid {
				continue // a reply to an earlier request
			}
			switch mtyp {
			case unix.NLMSG_DONE, unix.NLMSG_ERROR:
				// DONE may carry the dump's error; ERROR carries one, or
				// 0 for an ack.
				if len(payload) < 4 {
					return true, nil
				}
				return true, rawAckErr(payload)
			case typ:
				if len(payload) < nl.SizeofNfgenmsg {
					continue
				}
				if err := fn(payload[nl.SizeofNfgenmsg:]); err != nil {
					return false, err
				}
			}
		}
	}
}

// recv reads one datagram into s.buf and returns its length.
func (s *dumpSocket) recv() (int, error) {
	var (
		n    int
		from unix.Sockaddr
		rerr error
	)
	err := s.f.SetReadDeadline(time.Now().Add(dumpTimeout))
	if err == nil {
		err = s.rc.Read(func(fd uintptr) bool {
			// MSG_TRUNC: n is the datagram's length even when the buffer is
			// shorter.
			n, from, rerr = unix.Recvfrom(int(fd), s.buf, unix.MSG_TRUNC)
			return !errors.Is(rerr, unix.EAGAIN)
		})
	}
	if err == nil {
		err = rerr
	}
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return 0, fmt.Errorf("netlink receive: %w", unix.EAGAIN)
	case err != nil:
		return 0, fmt.Errorf("netlink receive: %w", err)
	case n > len(s.buf):
		return 0, fmt.Errorf("netlink receive: message of %d bytes truncated to %d", n, len(s.buf))
	}
	if sa, ok := from.(*unix.SockaddrNetlink); !ok || sa.Pid != 0 {
		return 0, errors.New("netlink receive: reply not from the kernel")
	}
	return n, nil
}

// appendList appends an IPSET_CMD_LIST dump request to b.
func appendList(b []byte, seq uint32, name string, flags uint32) []byte {
	start := len(b)
	b = append(b, make([]byte, unix.SizeofNlMsghdr)...) // filled in below
	b = append(b, unix.AF_NETLINK, nl.NFNETLINK_V0, 0, 0)
	b = appendAttr(b, nl.IPSET_ATTR_PROTOCOL, nl.IPSET_PROTOCOL)
	if name != "" {
		b = appendAttrString(b, nl.IPSET_ATTR_SETNAME, name)
	}
	if flags != 0 {
		b = appendAttr(b, nl.IPSET_ATTR_FLAGS|nl.NLA_F_NET_BYTEORDER, byte(flags>>24), byte(flags>>16), byte(flags>>8), byte(flags))
	}
	ne := binary.NativeEndian
	ne.PutUint32(b[start:], uint32(len(b)-start))
	ne.PutUint16(b[start+4:], unix.NFNL_SUBSYS_IPSET<<8|nl.IPSET_CMD_LIST)
	ne.PutUint16(b[start+6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(b[start+8:], seq)
	ne.PutUint32(b[start+12:], 0)
	return b
}

// dumpSockets hands out dump sockets: an idle one when there is one, else
// a new one, so listings never wait for one another (a Pins walk lasts as
// long as its caller's fn takes) and a listing may start while another is
// in progress on the same goroutine. It can interrupt the listings in
// progress of a set.
type dumpSockets struct {
	ns netns.NsHandle // not owned

	mu     sync.Mutex
	idle   []*dumpSocket
	busy   map[*dumpSocket]bool
	closed bool
}

// get returns a socket for listing set. A new socket is opened under
// p.mu, so that close cannot release the namespace handle meanwhile.
func (p *dumpSockets) get(set string) (*dumpSocket, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, errClosed
	}
	var s *dumpSocket
	if n := len(p.idle); n > 0 {
		s, p.idle = p.idle[n-1], p.idle[:n-1]
	} else {
		var err error
		if s, err = newDumpSocket(p.ns); err != nil {
			return nil, err
		}
	}
	s.set = set
	if p.busy == nil {
		p.busy = map[*dumpSocket]bool{}
	}
	p.busy[s] = true
	return s, nil
}

// put takes back a socket from get; one not reusable is closed.
func (p *dumpSockets) put(s *dumpSocket, reusable bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.busy, s)
	if s.interrupted.Load() {
		return // closed already
	}
	if !reusable || p.closed || len(p.idle) >= maxIdleDumps {
		s.f.Close()
		return
	}
	p.idle = append(p.idle, s)
}

// interrupt ends the listings of set in progress, and returns how many
// it ended. Each returns errListInterrupted.
func (p *dumpSockets) interrupt(set string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for s := range p.busy {
		if s.set == set && !s.interrupted.Swap(true) {
			s.f.Close()
			n++
		}
	}
	return n
}

// requestSocket opens a pinSocket in the namespace for requests that
// run alongside a dump (the caller closes its fd), under p.mu as get
// does.
func (p *dumpSockets) requestSocket() (*pinSocket, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, errClosed
	}
	return newPinSocket(p.ns)
}

// isClosed reports whether close was called.
func (p *dumpSockets) isClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

// close closes the idle sockets and interrupts every listing in progress;
// get fails from then on, and so do the listings, with errClosed.
func (p *dumpSockets) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for _, s := range p.idle {
		s.f.Close()
	}
	p.idle = nil
	for s := range p.busy {
		if !s.interrupted.Swap(true) {
			s.f.Close()
		}
	}
}
