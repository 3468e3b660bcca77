// Package proxy is the TCP proxy both modes use: userspace mode carries
// every connection through it, kernel mode a new client's first one
// (first_connection: proxy).
//
// A Server accepts the connections of the listeners it serves (Serve) and
// asks an AcceptFunc what to do with each: proxy it along a Route at once
// (dial the backend, send a PROXY protocol header and replayed bytes, then
// copy both ways with half-close and an idle timeout), or hand it to a
// goroutine that reads from it first (classification) and then proxies it
// with Conn.Proxy, or resets it. The outcome of a Route comes back through
// its Result. Limiter bounds the connections proxied at once, and Header
// builds PROXY protocol v1/v2 headers.
//
// On Linux the Server runs one event loop per GOMAXPROCS: accept, connect,
// the copies (read/write for small messages, splice(2) through a kernel
// pipe for bulk), half-closes, timeouts and closes all happen there, with
// raw system calls on non-blocking sockets registered in the loop's own
// epoll instance, which waits in the runtime's poller. A connection
// proxied at once costs no goroutine. Elsewhere each proxied connection
// runs in goroutines over the net package.
//
// It knows nothing of pins or data planes.
package proxy

import (
	"errors"
	"net/netip"
	"sync/atomic"
	"time"
)

// ErrIdle ends a proxied connection when neither direction moved a byte for
// Route.Idle.
var ErrIdle = errors.New("idle timeout")

// ErrServerClosed ends the connections a closing Server still proxied.
var ErrServerClosed = errors.New("proxy: server closed")

// Stats counts the bytes one proxied connection moved.
type Stats struct {
	ClientToBackend int64 // Route.Replay included, Route.Header not
	BackendToClient int64
}

// Flow counts the bytes of the connections whose Route names it, as they
// move on Linux (elsewhere when each connection ends); Route.Replay
// included, Route.Header not. Many connections may share one (a backend's
// totals): it is safe for concurrent use.
type Flow struct {
	ClientToBackend, BackendToClient atomic.Int64
}

// AcceptFunc decides what happens to a connection a Server accepted. It is
// called on the event loop and must not block. It returns the Route to
// proxy c along at once; or nil, after it reset or closed c, or handed c to
// a goroutine of its own, which then owns c (and may proxy it later with
// c.Proxy). c must not be used by anyone else once a Route is returned.
type AcceptFunc func(c *Conn) *Route

// ServeOptions tell Serve what to do with the connections of one listener.
type ServeOptions struct {
	Accept AcceptFunc // required
	// AcceptError, when set, is told about an accept that failed for lack
	// of resources (file descriptors, memory) and when accepting resumes;
	// it is called on the event loop and must not block.
	AcceptError func(err error, retryIn time.Duration)
}

// Route says where and how to proxy one client connection.
type Route struct {
	Backend netip.AddrPort
	// ConnectTimeout bounds the connect to the backend; 0 leaves it to the
	// kernel (its SYN retries).
	ConnectTimeout time.Duration
	// Source, when valid, makes the dial transparent: from this address
	// (the client's own, port included), as DialTransparent dials. Its
	// family must be the backend's.
	Source netip.AddrPort
	// Idle closes both connections when neither direction has moved a
	// byte for this long; a stream flowing one way only is not idle, and a
	// direction whose receiver stops reading stops moving (progress is
	// seen per chunk: what the source holds, at most 1 MiB). 0 means no
	// idle timeout: TCP keepalive is then turned on for both connections
	// (with the kernel's timers, net.ipv4.tcp_keepalive_*), so that a peer
	// that vanished is still noticed.
	Idle time.Duration
	// Header is written to the backend first (a PROXY protocol header),
	// then Replay: the client bytes already read. Neither is changed.
	Header, Replay []byte
	// Group, when set, ends the connection when the group is aborted.
	Group *Group
	// Flow, when set, counts the connection's bytes as they move.
	Flow *Flow
	// Result hears the outcome; required.
	Result Result
}

// Result hears the outcome of one Route: exactly one of Done and
// DialFailed is called, Done after Connected when the backend accepted.
type Result interface {
	// Connected reports that the backend accepted and copying starts. It
	// is called on the event loop and must not block.
	Connected()
	// Done reports that the connection ended and both sides are closed:
	// err is nil once both directions reached EOF, ErrIdle after the idle
	// timeout, the Group's error after an abort, otherwise the first I/O
	// error. It is called on the event loop and must not block.
	Done(st Stats, err error)
	// DialFailed reports that the backend could not be reached. The client
	// connection is untouched and handed back: DialFailed runs in a
	// goroutine of its own, which owns c (it may proxy it elsewhere with
	// c.Proxy, or reset it).
	DialFailed(c *Conn, err error)
}

// Group is a set of proxied connections that end together (a service's,
// when it closes). Make one with Server.NewGroup.
type Group struct {
	srv *Server
	err atomic.Pointer[error] // set once by Abort
}

// NewGroup returns an empty group of s's connections.
func (s *Server) NewGroup() *Group { return &Group{srv: s} }

// Abort ends every connection of g now, and every one proxied in g later
// at once, with err (Done's error); err must not be nil. Only the first
// Abort counts. Connections whose goroutine owns them (Conn.Proxy not
// called yet) are their owner's to end.
func (g *Group) Abort(err error) {
	if err == nil {
		err = ErrServerClosed
	}
	if g.err.CompareAndSwap(nil, &err) {
		g.srv.abort(g)
	}
}

// aborted returns the error of Abort, or nil.
func (g *Group) aborted() error {
	if g == nil {
		return nil
	}
	if p := g.err.Load(); p != nil {
		return *p
	}
	return nil
}
