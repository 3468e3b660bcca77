// Package proxy is the splice proxy both modes use: userspace mode carries
// every connection through it, kernel mode a new client's first one
// (first_connection: proxy). It dials backends (Dial) and listens (Listen)
// without per-connection keepalive setup, writes PROXY protocol v1/v2
// headers (WriteHeader), bounds the connections proxied at once (Limiter),
// and copies both directions with half-close and an idle timeout (Splice).
//
// It knows nothing of pins or data planes.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// ErrIdle is returned by Splice when neither direction moved a byte for
// SpliceOptions.Idle.
var ErrIdle = errors.New("idle timeout")

// SpliceOptions tune one proxied connection.
type SpliceOptions struct {
	// Idle closes both connections when neither direction has moved a byte
	// for this long; a stream flowing one way only is not idle. A direction
	// whose receiver stops reading stops moving: progress is seen per chunk
	// (what the source holds, at most 1 MiB), so a receiver taking less than
	// a chunk per Idle counts as stalled. Detection may lag by up to Idle/16.
	// 0 means no idle timeout; Splice then turns TCP keepalive on for both
	// connections (with the kernel's timers, net.ipv4.tcp_keepalive_*), so
	// that a peer that vanished is still noticed.
	Idle time.Duration
	// Replay is written to the backend before anything else: the bytes the
	// classifier already read from the client. Splice only reads it.
	Replay []byte
	// ToBackend and ToClient, when set, receive the bytes of each direction
	// as they are written, so a long connection's traffic shows while it
	// lasts. Splice only adds to them.
	ToBackend, ToClient *atomic.Uint64
}

// Stats counts the bytes a Splice call moved.
type Stats struct {
	ClientToBackend int64 // Replay included
	BackendToClient int64
}

// Splice proxies client and backend until both directions are done and
// returns the bytes moved each way. It takes ownership of both connections
// and closes them before returning.
//
// On Linux each direction copies its first bytes through a pooled 16 KiB
// buffer, which costs less than splicing for the few small messages most
// connections carry, and switches to splice(2) through a pooled kernel pipe
// (the bytes never enter user memory) once a read fills the buffer;
// elsewhere a pooled 32 KiB buffer is used. A buffer or pipe is held only
// while bytes are in flight: an idle direction waits in the runtime's
// poller holding neither.
//
// When one side finishes sending (EOF), Splice half-closes the other side's
// write end and keeps copying the other way. It returns nil once both
// directions reached EOF; ErrIdle after an idle timeout; ctx.Err() when ctx
// is cancelled, which closes both connections at once; otherwise the first
// I/O error of either direction.
//
// Splice runs one direction in the calling goroutine and the other in a
// goroutine it waits for.
func Splice(ctx context.Context, client, backend *net.TCPConn, o SpliceOptions) (Stats, error) {
	s := &session{client: client, backend: backend, idle: o.Idle, slack: o.Idle / 16, start: time.Now(), toBackend: o.ToBackend, toClient: o.ToClient}
	defer s.closeBoth()
	if err := ctx.Err(); err != nil {
		return Stats{}, err
	}
	stop := context.AfterFunc(ctx, func() { s.abort(ctx.Err()) })
	defer stop()

	var st Stats
	if s.idle > 0 {
		s.arm(0, true)
	} else {
		client.SetKeepAliveConfig(kernelKeepAlive)
		backend.SetKeepAliveConfig(kernelKeepAlive)
	}
	if len(o.Replay) > 0 {
		n, err := backend.Write(o.Replay)
		st.ClientToBackend = int64(n)
		count(o.ToBackend, int64(n))
		if err != nil {
			if err = s.classify(err); err != ErrIdle {
				err = fmt.Errorf("replay to backend: %w", err)
			}
			s.abort(err)
			return st, s.err()
		}
		s.touch()
	}

	done := make(chan int64, 1)
	go s.copyBackendToClient(done)
	st.ClientToBackend += s.copyClientToBackend()
	st.BackendToClient = <-done
	stop()
	return st, s.err()
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
	idle, slack     time.Duration
	start           time.Time // the clock below counts nanoseconds since start (monotonic)

	toBackend, toClient *atomic.Uint64 // SpliceOptions' counters, may be nil

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
	return s.copyHalf(s.backend, s.client, "client", "backend", s.toBackend)
}

func (s *session) copyBackendToClient(done chan<- int64) {
	done <- s.copyHalf(s.client, s.backend, "backend", "client", s.toClient)
}

// count adds n to c, when set.
func count(c *atomic.Uint64, n int64) {
	if c != nil && n > 0 {
		c.Add(uint64(n))
	}
}

// copyHalf is the copy loop of one direction: wait until src has bytes (or
// EOF), take what it holds (at most maxChunk), write all of it to dst,
// repeat. At EOF it half-closes dst, unless the other direction is done
// already: then closing both, which Splice does next, sends that FIN (each
// socket's input was read to EOF, so close is orderly) and saves a system
// call. On an error it aborts the session.
func (s *session) copyHalf(dst, src *net.TCPConn, from, to string, counter *atomic.Uint64) (written int64) {
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
		count(counter, n)
		for s.retry(err) {
			n, err = p.flush()
			written += n
			count(counter, n)
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
