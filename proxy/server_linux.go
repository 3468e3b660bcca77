package proxy

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Server accepts and proxies connections on its event loops, one per
// GOMAXPROCS at NewServer. Make one with NewServer and end it with Close.
type Server struct {
	start time.Time // the loops' clock counts from here (monotonic)
	loops []*loop
	wg    sync.WaitGroup

	mu     sync.Mutex
	closed bool
}

// NewServer starts a Server's event loops.
func NewServer() (*Server, error) {
	s := &Server{start: time.Now()}
	for range runtime.GOMAXPROCS(0) {
		l, err := newLoop(s)
		if err != nil {
			s.Close()
			return nil, err
		}
		s.loops = append(s.loops, l)
		s.wg.Go(l.run)
	}
	return s, nil
}

func (s *Server) clock() int64 { return int64(time.Since(s.start)) }

// Close ends the event loops, and with them every connection still
// proxied (ErrServerClosed); listeners stop being served, and their owners
// close them. Connections a goroutine owns stay open, but their reads and
// writes fail.
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.mu.Unlock()
	for _, l := range s.loops {
		l.exit()
	}
	s.wg.Wait()
}

// abort ends g's live sessions on every loop.
func (s *Server) abort(g *Group) {
	err := g.aborted()
	for _, l := range s.loops {
		l.post(func() { l.abortGroup(g, err) })
	}
}

// Acceptor is a listener a Server serves.
type Acceptor struct {
	fd   int
	ends []*listenEnd
	once sync.Once
}

// Serve accepts the connections of ln, a TCP listener, on every event loop
// and passes each to o.Accept. It returns at once; Stop ends it. The
// caller keeps ln, and closes it after Stop.
//
// ln gets TCP_NODELAY, which the connections it accepts inherit (as Go
// sets it on each by default).
func (s *Server) Serve(ln net.Listener, o ServeOptions) (*Acceptor, error) {
	if o.Accept == nil {
		return nil, errors.New("proxy: Serve without an Accept function")
	}
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return nil, fmt.Errorf("proxy: cannot serve a %T", ln)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, err
	}
	a := &Acceptor{fd: -1}
	if err := rc.Control(func(fd uintptr) { a.fd = int(fd) }); err != nil {
		return nil, err
	}
	rawSetsockoptInt(a.fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	for _, l := range s.loops {
		e := &listenEnd{a: a, l: l, o: o}
		e.t.idx, e.t.owner = -1, e
		if err := l.register(a.fd, e, listenEvents, &e.slot); err != nil {
			a.Stop()
			return nil, err
		}
		a.ends = append(a.ends, e)
	}
	return a, nil
}

// listenEvents: every loop waits for the listener's connections, and one
// loop wakes for each (EPOLLEXCLUSIVE). Level-triggered, so that the
// connections a loop leaves in the queue wake it (or another) again.
const listenEvents = unix.EPOLLIN | unix.EPOLLEXCLUSIVE

// Stop ends accepting: when it returns, no loop uses the listener any
// more, and it may be closed. It must not be called on an event loop (in
// an AcceptFunc or a Result's loop methods).
func (a *Acceptor) Stop() {
	a.once.Do(func() {
		var wg sync.WaitGroup
		for _, e := range a.ends {
			wg.Add(1)
			if !e.l.post(func() { e.stop(); wg.Done() }) {
				wg.Done() // the loop ended, and its epoll set with it
			}
		}
		wg.Wait()
	})
}

// listenEnd is a listener on one loop.
type listenEnd struct {
	a       *Acceptor
	l       *loop
	o       ServeOptions
	slot    int32
	off     bool // out of the set while accepting backs off
	stopped bool
	delay   time.Duration
	t       timer
}

// acceptBatch bounds the connections one loop accepts per wakeup before it
// turns to its connections; the listener stays ready if more wait.
const acceptBatch = 32

func (e *listenEnd) event(l *loop, _ uint32) {
	if e.stopped || e.off {
		return
	}
	for range acceptBatch {
		fd, remote, err := rawAccept(e.a.fd)
		switch err {
		case nil:
		case unix.EAGAIN:
			return
		case unix.EINTR, unix.ECONNABORTED, unix.EPERM, unix.EPROTO:
			continue // that connection is gone; the next may not be
		default:
			// EMFILE, ENFILE, ENOBUFS, ENOMEM: retry later, not at once
			// (the listener stays ready, and this would spin).
			e.backoff(os.NewSyscallError("accept4", err))
			return
		}
		e.delay = 0
		c := &Conn{l: l, fd: fd, remote: remote}
		if err := l.register(fd, c, readEvents, &c.slot); err != nil {
			rawClose(fd)
			e.backoff(err)
			return
		}
		if r := e.o.Accept(c); r != nil {
			l.start(c, r, true)
		}
	}
	l.backlog = true // the batch ended before EAGAIN: more may wait
}

// backoff takes the listener out of the loop's set for a while (doubling
// from 5 ms to 1 s while accepting keeps failing).
func (e *listenEnd) backoff(err error) {
	e.delay = min(max(2*e.delay, 5*time.Millisecond), time.Second)
	if e.o.AcceptError != nil {
		e.o.AcceptError(err, e.delay)
	}
	if rawEpollCtl(e.l.ep, unix.EPOLL_CTL_DEL, e.a.fd, nil) == nil {
		e.off = true
	}
	e.l.timers.set(&e.t, e.l.now+int64(e.delay))
}

// expire puts the listener back in the set after a back-off.
func (e *listenEnd) expire(l *loop) {
	if e.stopped || !e.off {
		return
	}
	l.mu.Lock()
	gen := l.slots[e.slot].gen
	l.mu.Unlock()
	ev := unix.EpollEvent{Events: listenEvents, Fd: e.slot, Pad: int32(gen)}
	if rawEpollCtl(l.ep, unix.EPOLL_CTL_ADD, e.a.fd, &ev) != nil {
		l.timers.set(&e.t, l.now+int64(e.delay)) // try again
		return
	}
	e.off = false
}

// stop takes the listener out of the loop; it runs on the loop.
func (e *listenEnd) stop() {
	e.stopped = true
	e.l.timers.stop(&e.t)
	if !e.off {
		rawEpollCtl(e.l.ep, unix.EPOLL_CTL_DEL, e.a.fd, nil)
	}
	e.l.unregister(e.slot)
}
