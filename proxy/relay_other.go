//go:build !linux

package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// This is the proxy where the event loops (Linux) are not: a goroutine per
// accepting listener, and two per proxied connection, one per direction,
// over the net package.

// Server accepts and proxies connections in goroutines. Make one with
// NewServer and end it with Close.
type Server struct {
	wg     sync.WaitGroup
	mu     sync.Mutex
	closed bool
	live   map[*session]struct{}
}

// NewServer returns a Server.
func NewServer() (*Server, error) {
	return &Server{live: map[*session]struct{}{}}, nil
}

// Close ends every connection still proxied (ErrServerClosed) and waits for
// their goroutines; listeners stop being served, and their owners close
// them.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	for ss := range s.live {
		ss.abort(ErrServerClosed)
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// abort ends g's live sessions.
func (s *Server) abort(g *Group) {
	err := g.aborted()
	s.mu.Lock()
	defer s.mu.Unlock()
	for ss := range s.live {
		if ss.group == g {
			ss.abort(err)
		}
	}
}

// Acceptor is a listener a Server serves.
type Acceptor struct {
	ln      net.Listener
	stopped atomic.Bool
	done    chan struct{}
	once    sync.Once
}

// Serve accepts the connections of ln, a TCP listener, in a goroutine and
// passes each to o.Accept. It returns at once; Stop ends it. The caller
// keeps ln, and closes it after Stop.
func (s *Server) Serve(ln net.Listener, o ServeOptions) (*Acceptor, error) {
	if o.Accept == nil {
		return nil, errors.New("proxy: Serve without an Accept function")
	}
	if _, ok := ln.(interface{ SetDeadline(time.Time) error }); !ok {
		return nil, fmt.Errorf("proxy: cannot serve a %T", ln)
	}
	a := &Acceptor{ln: ln, done: make(chan struct{})}
	go a.run(s, o)
	return a, nil
}

func (a *Acceptor) run(s *Server, o ServeOptions) {
	defer close(a.done)
	var delay time.Duration
	for {
		c, err := a.ln.Accept()
		if a.stopped.Load() {
			if c != nil {
				c.Close()
			}
			return
		}
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			if o.AcceptError != nil {
				o.AcceptError(err, delay)
			}
			time.Sleep(delay)
			continue
		}
		delay = 0
		tc, ok := c.(*net.TCPConn)
		if !ok {
			c.Close()
			continue
		}
		conn := &Conn{tc: tc, srv: s}
		if r := o.Accept(conn); r != nil {
			conn.Proxy(r)
		}
	}
}

// Stop ends accepting: when it returns, the listener is not used any more,
// and it may be closed.
func (a *Acceptor) Stop() {
	a.once.Do(func() {
		a.stopped.Store(true)
		a.ln.(interface{ SetDeadline(time.Time) error }).SetDeadline(time.Unix(1, 0))
		<-a.done
		a.ln.(interface{ SetDeadline(time.Time) error }).SetDeadline(time.Time{})
	})
}

// Conn is a client connection a Server accepted. It belongs to whoever the
// AcceptFunc gave it to: the Server, along a Route, or a goroutine, which
// may read from it (it is a net.Conn) and then proxy it with Proxy, or
// Close or Reset it.
type Conn struct {
	tc  *net.TCPConn
	srv *Server
}

// RemoteAddrPort returns the client's address.
func (c *Conn) RemoteAddrPort() netip.AddrPort {
	ap := c.tc.RemoteAddr().(*net.TCPAddr).AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// RemoteAddr returns the client's address (a *net.TCPAddr).
func (c *Conn) RemoteAddr() net.Addr { return c.tc.RemoteAddr() }

// LocalAddr returns the address the client connected to (a *net.TCPAddr).
func (c *Conn) LocalAddr() net.Addr { return c.tc.LocalAddr() }

// Read reads what the client sent.
func (c *Conn) Read(p []byte) (int, error) { return c.tc.Read(p) }

// Write writes p to the client.
func (c *Conn) Write(p []byte) (int, error) { return c.tc.Write(p) }

// Close closes the connection.
func (c *Conn) Close() error { return c.tc.Close() }

// Reset closes the connection with an RST (SO_LINGER 0).
func (c *Conn) Reset() error {
	c.tc.SetLinger(0)
	return c.tc.Close()
}

// SetDeadline sets the read and write deadlines.
func (c *Conn) SetDeadline(t time.Time) error { return c.tc.SetDeadline(t) }

// SetReadDeadline sets the read deadline.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.tc.SetReadDeadline(t) }

// SetWriteDeadline sets the write deadline.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.tc.SetWriteDeadline(t) }

// Proxy proxies c along r in goroutines of its own; its owner must not use
// c afterwards. r's Result hears the outcome.
func (c *Conn) Proxy(r *Route) {
	c.srv.wg.Go(func() { c.srv.relay(c, r) })
}

// relay dials r's backend and splices c to it.
func (s *Server) relay(c *Conn, r *Route) {
	if err := r.Group.aborted(); err != nil {
		c.Close()
		r.Result.Done(Stats{}, err)
		return
	}
	var bc *net.TCPConn
	var err error
	if r.Source.IsValid() {
		bc, err = DialTransparent(context.Background(), r.Source, r.Backend, r.ConnectTimeout)
	} else {
		d := net.Dialer{Timeout: r.ConnectTimeout, KeepAlive: -1}
		var nc net.Conn
		if nc, err = d.Dial("tcp", r.Backend.String()); err == nil {
			bc = nc.(*net.TCPConn)
		}
	}
	if err != nil {
		r.Result.DialFailed(c, err)
		return
	}
	r.Result.Connected()
	st, err := s.splice(c.tc, bc, r)
	if r.Flow != nil {
		r.Flow.add(st)
	}
	r.Result.Done(st, err)
}

// splice proxies client and backend until both directions are done and
// returns the bytes moved each way; it closes both connections before it
// returns.
//
// Each direction copies through a pooled 32 KiB buffer, and waits for bytes
// without one (readiness). When one side finishes sending (EOF), the other
// side's write end is half-closed and the other direction goes on. It runs
// one direction in the calling goroutine and the other in a goroutine it
// waits for.
func (s *Server) splice(client, backend *net.TCPConn, r *Route) (Stats, error) {
	ss := &session{client: client, backend: backend, group: r.Group, idle: r.Idle, slack: r.Idle / 16, start: time.Now()}
	defer ss.closeBoth()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return Stats{}, ErrServerClosed
	}
	s.live[ss] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.live, ss)
		s.mu.Unlock()
	}()
	if err := r.Group.aborted(); err != nil {
		return Stats{}, err
	}

	var st Stats
	if ss.idle > 0 {
		ss.arm(0, true)
	} else {
		client.SetKeepAliveConfig(kernelKeepAlive)
		backend.SetKeepAliveConfig(kernelKeepAlive)
	}
	if out := append(append([]byte(nil), r.Header...), r.Replay...); len(out) > 0 {
		n, err := backend.Write(out)
		st.ClientToBackend = int64(max(0, n-len(r.Header)))
		if err != nil {
			if err = ss.classify(err); err != ErrIdle {
				err = fmt.Errorf("replay to backend: %w", err)
			}
			ss.abort(err)
			return st, ss.err()
		}
		ss.touch()
	}

	done := make(chan int64, 1)
	go ss.copyBackendToClient(done)
	st.ClientToBackend += ss.copyClientToBackend()
	st.BackendToClient = <-done
	return st, ss.err()
}

// kernelKeepAlive turns keepalive probes on and leaves their timing to the
// kernel (negative values leave a socket option untouched).
var kernelKeepAlive = net.KeepAliveConfig{Enable: true, Idle: -1, Interval: -1, Count: -1}

// session is the state the two directions of one Splice share.
//
// Idle timeouts are deadlines on the sockets, so a waiting direction costs
// no timer of its own: every read and write deadline of both connections is
// Idle (+Idle/16) after the last time they were pushed back, which touch
// does at most every Idle/16 while bytes move. A wait that passes its
// deadline ends the session if nothing moved for Idle, and is retried with
// the deadlines pushed back otherwise.
type session struct {
	client, backend *net.TCPConn
	group           *Group
	idle, slack     time.Duration
	start           time.Time // the clock below counts nanoseconds since start (monotonic)

	eofs  atomic.Int32 // directions that reached EOF
	last  atomic.Int64 // when a byte last moved either way
	armed atomic.Int64 // when the deadlines were last pushed back
	armMu sync.Mutex

	closeOnce sync.Once
	errMu     sync.Mutex
	cause     error
}

// copyClientToBackend and copyBackendToClient are named so that goroutine
// dumps say which way a stuck copy goes.
func (s *session) copyClientToBackend() int64 {
	return s.copyHalf(s.backend, s.client, "client", "backend")
}

func (s *session) copyBackendToClient(done chan<- int64) {
	done <- s.copyHalf(s.client, s.backend, "backend", "client")
}

// copyHalf is the copy loop of one direction: wait until src has bytes (or
// EOF), take what it holds (at most maxChunk), write all of it to dst,
// repeat. At EOF it half-closes dst, unless the other direction is done
// already: then closing both, which Splice does next, sends that FIN (each
// socket's input was read to EOF, so close is orderly) and saves a system
// call. On an error it aborts the session.
func (s *session) copyHalf(dst, src *net.TCPConn, from, to string) (written int64) {
	p, err := newPump(dst, src)
	if err != nil {
		s.abort(fmt.Errorf("%s: %w", from, err))
		return 0
	}
	defer p.release()
	for {
		err := p.fill()
		for s.retry(err) {
			err = p.fill()
		}
		if err == io.EOF {
			if s.eofs.Add(1) == 1 {
				dst.CloseWrite() // an error here shows up in the other direction
			}
			return written
		}
		if err != nil {
			if err = s.classify(err); err != ErrIdle {
				err = fmt.Errorf("read %s: %w", from, err)
			}
			s.abort(err)
			return written
		}
		s.touch() // bytes arrived
		n, err := p.flush()
		written += n
		for s.retry(err) {
			n, err = p.flush()
			written += n
		}
		if err != nil {
			if err = s.classify(err); err != ErrIdle {
				err = fmt.Errorf("%s to %s: %w", from, to, err)
			}
			s.abort(err)
			return written
		}
		s.touch()
	}
}

// retry reports whether err is a deadline that passed although bytes moved
// within Idle (touch raced with the wait); the deadlines are then pushed
// back and the wait can be repeated.
func (s *session) retry(err error) bool {
	if s.idle <= 0 || err == nil || !errors.Is(err, os.ErrDeadlineExceeded) || s.stale() {
		return false
	}
	s.arm(s.last.Load(), true)
	return true
}

// touch records progress and, at most every Idle/16, pushes the deadlines
// back.
func (s *session) touch() {
	if s.idle <= 0 {
		return
	}
	now := int64(time.Since(s.start))
	s.last.Store(now)
	if now-s.armed.Load() >= int64(s.slack) {
		s.arm(now, false)
	}
}

// arm sets the read and write deadlines of both connections to Idle
// (+Idle/16) after at (nanoseconds since start). Unless force, it does
// nothing when they were pushed back less than Idle/16 before at; it never
// moves them earlier than the last push.
func (s *session) arm(at int64, force bool) {
	s.armMu.Lock()
	defer s.armMu.Unlock()
	armed := s.armed.Load()
	if at < armed || !force && at-armed < int64(s.slack) {
		return
	}
	s.armed.Store(at)
	dl := s.start.Add(time.Duration(at) + s.idle + s.slack)
	s.client.SetDeadline(dl)
	s.backend.SetDeadline(dl)
}

// stale reports whether nothing moved either way for Idle.
func (s *session) stale() bool {
	return time.Since(s.start)-time.Duration(s.last.Load()) >= s.idle
}

// classify maps a deadline error to ErrIdle.
func (s *session) classify(err error) error {
	if s.idle > 0 && errors.Is(err, os.ErrDeadlineExceeded) {
		return ErrIdle
	}
	return err
}

// abort records the first reason the session ends early and closes both
// connections, which unblocks both directions.
func (s *session) abort(err error) {
	s.errMu.Lock()
	if s.cause == nil {
		s.cause = err
	}
	s.errMu.Unlock()
	s.closeBoth()
}

func (s *session) err() error {
	s.errMu.Lock()
	defer s.errMu.Unlock()
	return s.cause
}

func (s *session) closeBoth() {
	s.closeOnce.Do(func() {
		s.client.Close()
		s.backend.Close()
	})
}

// add counts st.
func (f *Flow) add(st Stats) {
	f.ClientToBackend.Add(st.ClientToBackend)
	f.BackendToClient.Add(st.BackendToClient)
}
