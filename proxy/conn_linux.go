package proxy

import (
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Conn is a client connection a Server accepted. It belongs to whoever the
// AcceptFunc gave it to: the event loop, along a Route, or a goroutine,
// which may read from it (it is a net.Conn; its blocking calls wait for the
// loop's events) and then proxy it with Proxy, or Close or Reset it. Its
// methods are safe for concurrent use while a goroutine owns it.
type Conn struct {
	l      *loop
	fd     int
	slot   int32
	remote netip.AddrPort

	// While proxied (s non-nil), the loop's only. What the events said:
	// readable: bytes, EOF or an error may be waiting; rdhup: the peer's
	// FIN arrived; urgent: urgent data arrived once, so a short read no
	// longer means the socket was drained (reads stop at the urgent mark).
	s        *session
	readable bool
	rdhup    bool
	urgent   bool
	outArmed atomic.Bool // registered for writable events too (connEvents)

	// While a goroutine owns it: the events it has not taken yet, the
	// goroutines waiting for one, deadlines, and the descriptor's life.
	mu             sync.Mutex
	rready, wready bool
	rwait, wwait   chan struct{}
	rdl, wdl       time.Time
	refs           int  // calls using fd now
	closing        bool // Close or Reset was called
	linger0        bool // the close is a reset
	fdClosed       bool
	loopGone       bool
	local          netip.AddrPort
}

// RemoteAddrPort returns the client's address.
func (c *Conn) RemoteAddrPort() netip.AddrPort { return c.remote }

// RemoteAddr returns the client's address (a *net.TCPAddr).
func (c *Conn) RemoteAddr() net.Addr { return net.TCPAddrFromAddrPort(c.remote) }

// LocalAddr returns the address the client connected to (a *net.TCPAddr);
// the first call asks the kernel.
func (c *Conn) LocalAddr() net.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.local.IsValid() && !c.fdClosed {
		if sa, err := unix.Getsockname(c.fd); err == nil {
			switch sa := sa.(type) {
			case *unix.SockaddrInet4:
				c.local = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
			case *unix.SockaddrInet6:
				c.local = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), uint16(sa.Port))
			}
		}
	}
	return net.TCPAddrFromAddrPort(c.local)
}

// Proxy proxies c along r: its owner hands c to the event loop, and must
// not use it afterwards. r's Result hears the outcome, as for a Route the
// AcceptFunc returns.
func (c *Conn) Proxy(r *Route) {
	if !c.l.post(func() { c.l.start(c, r, false) }) {
		c.Close()
		r.Result.Done(Stats{}, ErrServerClosed)
	}
}

// Read reads what the client sent, waiting for bytes until the read
// deadline.
func (c *Conn) Read(p []byte) (int, error) {
	if err := c.incref(); err != nil {
		return 0, c.opError("read", err)
	}
	defer c.decref()
	for {
		n, err := rawRecv(c.fd, p)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			if err := c.wait(false); err != nil {
				return 0, c.opError("read", err)
			}
			continue
		case err != nil:
			return 0, c.opError("read", os.NewSyscallError("recvfrom", err))
		case n == 0 && len(p) > 0:
			return 0, io.EOF
		}
		return n, nil
	}
}

// Write writes p to the client, waiting for room until the write deadline.
func (c *Conn) Write(p []byte) (int, error) {
	if err := c.incref(); err != nil {
		return 0, c.opError("write", err)
	}
	defer c.decref()
	written := 0
	for written < len(p) {
		n, err := rawSend(c.fd, p[written:])
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			if err := c.wait(true); err != nil {
				return written, c.opError("write", err)
			}
			continue
		case err != nil:
			return written, c.opError("write", os.NewSyscallError("sendto", err))
		}
		written += n
	}
	return written, nil
}

// Close closes the connection; a blocked Read or Write returns at once.
func (c *Conn) Close() error { return c.close(false) }

// Reset closes the connection with an RST (SO_LINGER 0).
func (c *Conn) Reset() error { return c.close(true) }

func (c *Conn) close(reset bool) error {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return c.opError("close", net.ErrClosed)
	}
	c.closing, c.linger0 = true, reset
	signal(c.rwait)
	signal(c.wwait)
	now := c.refs == 0
	c.mu.Unlock()
	if now {
		c.closeFD()
	}
	return nil
}

// SetDeadline sets the read and write deadlines.
func (c *Conn) SetDeadline(t time.Time) error {
	c.SetReadDeadline(t)
	return c.SetWriteDeadline(t)
}

// SetReadDeadline sets the read deadline; a Read waiting past it fails
// with os.ErrDeadlineExceeded. The zero time means none.
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.rdl = t
	signal(c.rwait)
	c.mu.Unlock()
	return nil
}

// SetWriteDeadline sets the write deadline, as SetReadDeadline does.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	c.wdl = t
	signal(c.wwait)
	c.mu.Unlock()
	return nil
}

// incref lets one call use the descriptor until decref.
func (c *Conn) incref() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return net.ErrClosed
	}
	c.refs++
	return nil
}

func (c *Conn) decref() {
	c.mu.Lock()
	c.refs--
	now := c.closing && c.refs == 0 && !c.fdClosed
	c.mu.Unlock()
	if now {
		c.closeFD()
	}
}

// armOut registers c for writable events too, once: a write found its
// socket full. If room came meanwhile, the event comes at once.
func (c *Conn) armOut() error {
	if c.outArmed.Load() {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.outArmed.Load() || c.fdClosed {
		return nil
	}
	c.l.mu.Lock()
	gen := c.l.slots[c.slot].gen
	c.l.mu.Unlock()
	ev := unix.EpollEvent{Events: connEvents, Fd: c.slot, Pad: int32(gen)}
	if err := rawEpollCtl(c.l.ep, unix.EPOLL_CTL_MOD, c.fd, &ev); err != nil {
		return os.NewSyscallError("epoll_ctl", err)
	}
	c.outArmed.Store(true)
	return nil
}

// wait blocks until an event the caller has not seen yet came (readable or
// writable), the deadline passed, or c closed.
func (c *Conn) wait(write bool) error {
	ready, ch, dl := &c.rready, &c.rwait, &c.rdl
	if write {
		ready, ch, dl = &c.wready, &c.wwait, &c.wdl
		if err := c.armOut(); err != nil {
			return err
		}
	}
	var t *time.Timer
	defer func() {
		if t != nil {
			t.Stop()
		}
	}()
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		switch {
		case c.closing:
			return net.ErrClosed
		case *ready:
			*ready = false
			return nil
		case c.loopGone:
			return ErrServerClosed
		}
		var expired <-chan time.Time
		if !dl.IsZero() {
			d := time.Until(*dl)
			if d <= 0 {
				return os.ErrDeadlineExceeded
			}
			if t == nil {
				t = time.NewTimer(d)
			} else {
				t.Reset(d)
			}
			expired = t.C
		}
		if *ch == nil {
			*ch = make(chan struct{}, 1)
		}
		w := *ch
		c.mu.Unlock()
		select {
		case <-w:
		case <-expired:
		}
		c.mu.Lock()
	}
}

// signal wakes the goroutine waiting on ch, if any; a wakeup that finds no
// goroutine waits in ch for the next one, which then checks again.
func signal(ch chan struct{}) {
	if ch == nil {
		return
	}
	select {
	case ch <- struct{}{}:
	default:
	}
}

// event handles an epoll event of c: the session's while proxied, else
// the owning goroutine's.
func (c *Conn) event(l *loop, ev uint32) {
	if c.s != nil {
		c.s.event(c, ev)
		return
	}
	if ev&unix.EPOLLRDHUP != 0 {
		c.rdhup = true
	}
	if ev&unix.EPOLLPRI != 0 {
		c.urgent = true
	}
	c.mu.Lock()
	if ev&(unix.EPOLLIN|unix.EPOLLPRI|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		c.rready = true
		signal(c.rwait)
	}
	if ev&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		c.wready = true
		signal(c.wwait)
	}
	c.mu.Unlock()
}

// toGoroutine gives c back to a goroutine after the loop held it: it may
// have missed events, so its first waits try again at once.
func (c *Conn) toGoroutine() {
	c.s = nil
	c.mu.Lock()
	c.rready, c.wready = true, true
	c.mu.Unlock()
}

// closed reports whether Close or Reset was called.
func (c *Conn) closed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closing
}

// closeFD ends c's registration and closes its descriptor; it runs once,
// from the loop or from the goroutine that made the last use of c.
func (c *Conn) closeFD() {
	c.mu.Lock()
	if c.fdClosed {
		c.mu.Unlock()
		return
	}
	c.fdClosed, c.closing = true, true
	linger0 := c.linger0
	c.mu.Unlock()
	c.l.unregister(c.slot)
	if linger0 {
		rawLingerZero(c.fd)
	}
	rawClose(c.fd)
}

// loopEnded fails c's waits from now on: its loop is gone.
func (c *Conn) loopEnded() {
	c.mu.Lock()
	c.loopGone = true
	signal(c.rwait)
	signal(c.wwait)
	c.mu.Unlock()
}

func (c *Conn) opError(op string, err error) error {
	if err == io.EOF {
		return err
	}
	return &net.OpError{Op: op, Net: "tcp", Source: nil, Addr: c.RemoteAddr(), Err: err}
}
