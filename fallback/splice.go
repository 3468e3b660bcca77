package fallback

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
	// 0 means no idle timeout.
	Idle time.Duration
	// Replay is written to the backend before anything else: the bytes the
	// classifier already read from the client. Splice only reads it.
	Replay []byte
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
// Bytes move between the raw sockets with io.CopyN, which on Linux is
// splice(2) through a kernel pipe, so they never enter user memory; elsewhere
// a pooled 32 KiB buffer is used while bytes are in flight. An idle
// connection holds neither pipe nor buffer: each direction first waits for
// its source to become readable, then moves only what is already there.
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
	s := &session{client: client, backend: backend, idle: o.Idle, slack: o.Idle / 16, start: time.Now()}
	defer s.closeBoth()
	if err := ctx.Err(); err != nil {
		return Stats{}, err
	}
	stop := context.AfterFunc(ctx, func() { s.abort(ctx.Err()) })
	defer stop()

	var st Stats
	if s.idle > 0 {
		dl := s.start.Add(s.idle + s.slack)
		client.SetWriteDeadline(dl)
		backend.SetWriteDeadline(dl)
	}
	if len(o.Replay) > 0 {
		n, err := backend.Write(o.Replay)
		st.ClientToBackend = int64(n)
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

// session is the state the two directions of one Splice share.
type session struct {
	client, backend *net.TCPConn
	idle, slack     time.Duration
	start           time.Time // the clock below counts nanoseconds since start (monotonic)

	last  atomic.Int64 // when a byte last moved either way
	armed atomic.Int64 // when the write deadlines were last pushed back
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

// copyHalf is the copy loop of one direction: wait until src is readable
// (with the idle deadline), move what src holds to dst, repeat. At EOF it
// half-closes dst; on an error it aborts the session.
func (s *session) copyHalf(dst, src *net.TCPConn, from, to string) (written int64) {
	r, err := newReadiness(src)
	if err != nil {
		s.abort(fmt.Errorf("%s: %w", from, err))
		return 0
	}
	for {
		avail, ready, err := r.poll()
		if err == nil && !ready {
			avail, err = s.wait(src, r)
		}
		if err == io.EOF {
			dst.CloseWrite() // an error here shows up in the other direction
			return written
		}
		if err == ErrIdle {
			s.abort(err)
			return written
		}
		if err != nil {
			s.abort(fmt.Errorf("read %s: %w", from, err))
			return written
		}
		s.touch() // bytes arrived
		n, err := transfer(dst, src, avail)
		written += n
		if n > 0 {
			s.touch()
		}
		if err == io.EOF {
			dst.CloseWrite()
			return written
		}
		if err != nil {
			// src had the bytes, so no read blocked: a deadline here is the
			// write deadline, which only passes when the session went idle.
			if err = s.classify(err); err != ErrIdle {
				err = fmt.Errorf("%s to %s: %w", from, to, err)
			}
			s.abort(err)
			return written
		}
	}
}

// wait blocks until src is readable or the session has been idle for Idle,
// and returns the bytes available (-1: unknown but some, or EOF pending).
func (s *session) wait(src *net.TCPConn, r *readiness) (int, error) {
	for {
		if s.idle > 0 {
			src.SetReadDeadline(s.start.Add(time.Duration(s.last.Load()) + s.idle))
		}
		avail, err := r.wait()
		if s.idle > 0 {
			// transfer must never see a read deadline: a deadline error
			// there has to mean a stalled write.
			src.SetReadDeadline(time.Time{})
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			return avail, err
		}
		if s.stale() {
			return 0, ErrIdle
		}
	}
}

// touch records progress and, at most every Idle/16, pushes both write
// deadlines to Idle (+Idle/16) from now; a write that has not completed by
// then belongs to a session where nothing moved for Idle.
func (s *session) touch() {
	if s.idle <= 0 {
		return
	}
	now := int64(time.Since(s.start))
	s.last.Store(now)
	if now-s.armed.Load() < int64(s.slack) {
		return
	}
	s.armMu.Lock()
	defer s.armMu.Unlock()
	now = int64(time.Since(s.start))
	if now-s.armed.Load() < int64(s.slack) {
		return
	}
	s.armed.Store(now)
	dl := s.start.Add(time.Duration(now) + s.idle + s.slack)
	s.client.SetWriteDeadline(dl)
	s.backend.SetWriteDeadline(dl)
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
