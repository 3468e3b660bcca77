package proxy

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"
)

// session is one proxied connection on its loop: the client, the backend
// it dials, and the two directions between them. Everything in it is the
// loop's.
//
// Each direction copies its first bytes through a 16 KiB buffer, which
// costs less than splicing for the few small messages most connections
// carry, and switches to splice(2) through a pooled kernel pipe (the bytes
// never enter user memory) once a read fills the buffer. A buffer or pipe
// is held only while bytes wait for a receiver that is not ready: a
// waiting direction holds neither. When one side finishes sending (EOF),
// the other side's write end is half-closed and the other direction goes
// on; once both reached EOF both sockets are closed. Idle timeouts are one
// timer per session, pushed back lazily: a chunk moved records the time,
// and the timer, when it fires, ends the session or re-arms at the last
// movement plus Idle.
type session struct {
	l       *loop
	client  *Conn
	backend Conn
	r       Route
	state   uint8
	up      dir // client to backend
	down    dir // backend to client
	hdr     int // bytes of Route.Header not written yet (not counted in Stats)
	last    int64
	t       timer
	prev    *session // in the loop's list of live sessions
	next    *session
}

const (
	dialing uint8 = iota
	relaying
	ended
)

// dir is one direction of a session.
type dir struct {
	s        *session
	src, dst *Conn
	from, to string // "client" and "backend", for errors
	splice   bool   // bulk: splice instead of copying
	buf      *[]byte
	out      []byte // copying: bytes read and not written yet (in buf, or Header and Replay)
	pipe     *pipe  // splicing: non-nil while bytes are in flight
	held     int    // splicing: bytes in pipe
	eof      bool   // src reached EOF, passed on to dst
	moved    int64
	queued   bool // in the loop's again list
}

// pumpBudget bounds how many reads one direction makes before the loop
// turns to other connections; a direction with more to do goes on after
// them.
const pumpBudget = 16

// start proxies c along r: it dials the backend. fresh is true when c was
// just accepted (its events are still to come), false when a goroutine
// held it (events may have gone unseen).
func (l *loop) start(c *Conn, r *Route, fresh bool) {
	if err := r.Group.aborted(); err != nil {
		c.closeFD()
		r.Result.Done(Stats{}, err)
		return
	}
	if c.closed() {
		r.Result.Done(Stats{}, net.ErrClosed)
		return
	}
	s := &session{l: l, client: c, r: *r, hdr: len(r.Header)}
	s.t.idx, s.t.owner = -1, s
	s.up = dir{s: s, src: c, dst: &s.backend, from: "client", to: "backend"}
	s.down = dir{s: s, src: &s.backend, dst: c, from: "backend", to: "client"}
	c.s = s
	if !fresh {
		c.readable = true
	}
	s.prev, s.next = l.live.prev, &l.live
	l.live.prev.next = s
	l.live.prev = s

	fd, err := dialSocket(r.Backend, r.Source)
	if err != nil {
		s.dialFailed(err)
		return
	}
	s.backend.l, s.backend.fd, s.backend.remote, s.backend.s = l, fd, r.Backend, s
	if err := l.register(fd, &s.backend, connEvents, &s.backend.slot); err != nil {
		rawClose(fd)
		s.backend.l = nil
		s.dialFailed(&net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(r.Backend), Err: err})
		return
	}
	s.backend.outArmed.Store(true)
	if r.ConnectTimeout > 0 {
		l.timers.set(&s.t, l.now+int64(r.ConnectTimeout))
	}
}

// event handles an epoll event of one of s's connections.
func (s *session) event(c *Conn, ev uint32) {
	if ev&(unix.EPOLLIN|unix.EPOLLPRI|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		c.readable = true
	}
	if ev&(unix.EPOLLRDHUP|unix.EPOLLHUP) != 0 {
		c.rdhup = true
	}
	if ev&unix.EPOLLPRI != 0 {
		c.urgent = true
	}
	switch s.state {
	case dialing:
		if c != &s.backend {
			return // the client waits for the backend
		}
		if ev&(unix.EPOLLERR|unix.EPOLLHUP) != 0 {
			err := error(unix.ECONNREFUSED)
			if v, gerr := unix.GetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_ERROR); gerr == nil && v != 0 {
				err = unix.Errno(v)
			}
			s.dialFailed(&net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(s.r.Backend), Err: os.NewSyscallError("connect", err)})
			return
		}
		if ev&unix.EPOLLOUT != 0 {
			s.connected()
		}
	case relaying:
		from, to := &s.up, &s.down // the directions c sends and receives
		if c == &s.backend {
			from, to = to, from
		}
		if c.readable {
			s.pump(from)
		}
		if ev&unix.EPOLLOUT != 0 && to.pending() {
			s.pump(to)
		}
	}
}

// connected starts copying once the backend accepted.
func (s *session) connected() {
	l := s.l
	l.timers.stop(&s.t)
	s.state = relaying
	s.last = l.now
	if s.r.Idle > 0 {
		l.timers.set(&s.t, l.now+int64(s.r.Idle))
	} else {
		rawSetsockoptInt(s.client.fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
		rawSetsockoptInt(s.backend.fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
	}
	switch h, r := s.r.Header, s.r.Replay; {
	case len(h) > 0 && len(r) > 0:
		s.up.out = append(append(make([]byte, 0, len(h)+len(r)), h...), r...)
	case len(h) > 0:
		s.up.out = h
	default:
		s.up.out = r
	}
	s.r.Result.Connected()
	s.pump(&s.up)
	s.pump(&s.down)
}

// pump moves d's bytes: it writes what d holds, then reads and writes
// until the source has nothing more, the receiver is full, or the budget
// is spent.
func (s *session) pump(d *dir) {
	for i := 0; s.state == relaying; i++ {
		if d.pending() && !s.flush(d) {
			return
		}
		if d.eof || !d.src.readable {
			return
		}
		if i == pumpBudget {
			if !d.queued {
				d.queued = true
				s.l.again = append(s.l.again, d)
			}
			return
		}
		if !s.fill(d) {
			return
		}
	}
}

func (d *dir) pending() bool { return len(d.out) > 0 || d.held > 0 }

func (s *session) other(d *dir) *dir {
	if d == &s.up {
		return &s.down
	}
	return &s.up
}

// fill takes what d's source holds (at most one buffer, or maxChunk into
// the pipe) and reports whether there are bytes to write. At EOF it
// passes the EOF on; on an error it ends the session.
func (s *session) fill(d *dir) bool {
	if !d.splice {
		return s.read(d)
	}
	if d.pipe == nil {
		p, err := getPipe()
		if err != nil {
			s.end(err)
			return false
		}
		d.pipe = p
	}
	for {
		n, err := rawSplice(d.src.fd, d.pipe.w, maxChunk)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN || err == nil && n == 0:
			// Nothing yet, or EOF. But splice(2) also stops at TCP's
			// urgent mark (MSG_OOB) and never moves past it: EAGAIN while
			// the sender is open, 0 once it half-closed, with bytes still
			// queued behind the mark. read(2) steps over the urgent byte
			// (it is not part of the stream and is not forwarded), so it
			// has the last word: it takes those bytes, or confirms
			// "nothing yet" or EOF. That costs one call returning EAGAIN
			// per wait, next to splices taking tens of microseconds.
			putPipe(d.pipe)
			d.pipe = nil
			return s.read(d)
		case err != nil:
			s.end(fmt.Errorf("read %s: %w", d.from, os.NewSyscallError("splice", err)))
			return false
		}
		d.held = n
		s.last = s.l.now
		return true
	}
}

// read is fill while copying. A read that fills the buffer switches d to
// splicing; a short one means the source is drained, unless its FIN or
// urgent data arrived (reads stop at the urgent mark and before the EOF),
// so the source waits for its next event without a read to find EAGAIN.
func (s *session) read(d *dir) bool {
	b := s.l.takeBuf()
	for {
		n, err := rawRecv(d.src.fd, *b)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			s.l.giveBuf(b)
			d.src.readable = false
			return false
		case err != nil:
			s.l.giveBuf(b)
			s.end(fmt.Errorf("read %s: %w", d.from, os.NewSyscallError("recvfrom", err)))
			return false
		case n == 0:
			s.l.giveBuf(b)
			s.eof(d)
			return false
		}
		d.buf, d.out = b, (*b)[:n]
		d.splice = n == len(*b)
		if !d.splice && !d.src.rdhup && !d.src.urgent {
			d.src.readable = false
		}
		s.last = s.l.now
		return true
	}
}

// flush writes what d holds to its receiver; it reports whether all of it
// went. After a partial write the rest stays for the receiver's next
// event.
func (s *session) flush(d *dir) bool {
	for len(d.out) > 0 {
		n, err := rawSend(d.dst.fd, d.out)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			s.waitOut(d)
			return false
		case err != nil:
			s.end(fmt.Errorf("%s to %s: %w", d.from, d.to, os.NewSyscallError("sendto", err)))
			return false
		}
		d.out = d.out[n:]
		s.count(d, n)
	}
	d.out = nil
	if d.buf != nil {
		s.l.giveBuf(d.buf)
		d.buf = nil
	}
	for d.held > 0 {
		n, err := rawSplice(d.pipe.r, d.dst.fd, d.held)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			s.waitOut(d)
			return false
		case err != nil:
			s.end(fmt.Errorf("%s to %s: %w", d.from, d.to, os.NewSyscallError("splice", err)))
			return false
		case n == 0:
			s.end(fmt.Errorf("%s to %s: %w", d.from, d.to, io.ErrShortWrite))
			return false
		}
		d.held -= n
		s.moved(d, n)
	}
	s.last = s.l.now
	return true
}

// waitOut makes sure the full receiver's room wakes d: it registers the
// receiver for writable events if it was not.
func (s *session) waitOut(d *dir) {
	if err := d.dst.armOut(); err != nil {
		s.end(fmt.Errorf("%s to %s: %w", d.from, d.to, err))
	}
}

// count adds n written bytes to d's total, leaving out the header's.
func (s *session) count(d *dir, n int) {
	if d == &s.up && s.hdr > 0 {
		h := min(n, s.hdr)
		s.hdr -= h
		n -= h
	}
	s.moved(d, n)
}

// moved adds n bytes moved to d's total and to the route's Flow.
func (s *session) moved(d *dir, n int) {
	d.moved += int64(n)
	if f := s.r.Flow; f != nil {
		if d == &s.up {
			f.ClientToBackend.Add(int64(n))
		} else {
			f.BackendToClient.Add(int64(n))
		}
	}
}

// eof passes d's EOF on: it half-closes the receiver's write end, unless
// the other direction is done already: then closing both, which end does,
// sends that FIN (each socket's input was read to EOF, so the close is
// orderly) and saves a system call.
func (s *session) eof(d *dir) {
	d.eof = true
	d.src.readable = false
	if s.other(d).eof {
		s.end(nil)
		return
	}
	rawShutdownWrite(d.dst.fd) // an error here shows up in the other direction
}

// end closes both connections and reports the outcome.
func (s *session) end(err error) {
	if s.state == ended {
		return
	}
	s.finish()
	if s.backend.l != nil {
		var local netip.AddrPort
		if s.r.Source.IsValid() {
			s.backend.LocalAddr() // asks the kernel: the port may not be Source's
			local = s.backend.local
			if err != nil {
				// An orphan would hold the client's address: see
				// timewait_linux.go.
				rawLingerZero(s.backend.fd)
			}
		}
		s.backend.closeFD()
		if local.IsValid() {
			s.l.timeWaits.destroy(local, s.r.Backend) // see timewait_linux.go
		}
	}
	s.client.closeFD()
	s.r.Result.Done(Stats{ClientToBackend: s.up.moved, BackendToClient: s.down.moved}, err)
}

// dialFailed hands the client back to a goroutine: the backend could not
// be reached.
func (s *session) dialFailed(err error) {
	s.finish()
	if s.backend.l != nil {
		s.backend.closeFD()
	}
	c := s.client
	c.toGoroutine()
	go s.r.Result.DialFailed(c, err)
}

// finish takes s off the loop: its timer, its list, its buffers and pipes.
func (s *session) finish() {
	s.state = ended
	s.l.timers.stop(&s.t)
	s.prev.next, s.next.prev = s.next, s.prev
	s.prev, s.next = nil, nil
	for _, d := range []*dir{&s.up, &s.down} {
		if d.buf != nil {
			bufPool.Put(d.buf)
			d.buf = nil
		}
		d.out = nil
		if d.pipe != nil {
			if d.held == 0 {
				putPipe(d.pipe)
			} else {
				d.pipe.close()
			}
			d.pipe, d.held = nil, 0
		}
	}
}

// expire is s's timer: the connect timeout while dialing, the idle timeout
// while copying.
func (s *session) expire(l *loop) {
	switch s.state {
	case dialing:
		s.dialFailed(&net.OpError{Op: "dial", Net: "tcp", Addr: net.TCPAddrFromAddrPort(s.r.Backend), Err: os.ErrDeadlineExceeded})
	case relaying:
		if idleFor := l.now - s.last; idleFor < int64(s.r.Idle) {
			l.timers.set(&s.t, s.last+int64(s.r.Idle))
			return
		}
		s.end(ErrIdle)
	}
}

// abortGroup ends the loop's sessions of g.
func (l *loop) abortGroup(g *Group, err error) {
	for s := l.live.next; s != &l.live; {
		next := s.next
		if s.r.Group == g {
			s.end(err)
		}
		s = next
	}
}
