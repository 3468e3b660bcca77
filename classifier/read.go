package classifier

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net"
	"os"
	"sync"
	"time"
)

// Read peeks at the first bytes of conn until p finds a key, and returns the
// key and every byte it read, which the caller replays to the backend in
// proxy mode. On error it returns the bytes read so far too, so that an
// unclassified client can still be proxied.
//
// Read never reads more than maxBytes, which must be positive (config's
// payload.max_bytes), and gives up timeout after it starts (≤ 0 means no
// limit but ctx) or when ctx is done, by setting conn's read deadline; it
// clears the read deadline before it returns. It does not close conn,
// which stays the caller's.
//
// Errors wrap one of [ErrNoMatch], [ErrMalformed], [ErrTooLong],
// [ErrTimeout] or [ErrClosed], or are ctx's error; see [Reason]. A panic in
// p is returned as ErrMalformed. A maxBytes ≤ 0 is an error before
// anything is read.
func Read(ctx context.Context, conn net.Conn, p Parser, maxBytes int, timeout time.Duration) (key string, peeked []byte, err error) {
	if maxBytes <= 0 {
		return "", nil, fmt.Errorf("classifier: Read: maxBytes %d: want more than 0", maxBytes)
	}
	if timeout > 0 {
		if err := conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
			return "", nil, fmt.Errorf("%w: %w", ErrClosed, err)
		}
	}
	var stopped chan struct{}
	stop := func() bool { return true }
	if ctx.Done() != nil {
		stopped = make(chan struct{})
		stop = context.AfterFunc(ctx, func() {
			defer close(stopped)
			conn.SetReadDeadline(time.Unix(1, 0)) // unblock the Read below
		})
	}
	defer func() {
		if !stop() {
			<-stopped // the AfterFunc ran; let it finish before clearing
		}
		conn.SetReadDeadline(time.Time{})
	}()

	buf := getBuf(min(maxBytes, initialBuf))
	defer func() { putBuf(buf) }()
	n := 0
	parsed, scanned := 0, 0 // bytes at the last parse; bytes parsed in all
	parse := func() (string, []byte, bool, error) {
		parsed, scanned = n, scanned+n
		k, perr := safeParse(p, (*buf)[:n])
		switch {
		case perr == nil && k != "":
			return k, clone((*buf)[:n]), true, nil
		case perr == nil:
			return "", clone((*buf)[:n]), true, fmt.Errorf("%w: empty key", ErrNoMatch)
		case errors.Is(perr, ErrNeedMore):
			return "", nil, false, nil
		case errors.Is(perr, ErrNoMatch), errors.Is(perr, ErrMalformed), errors.Is(perr, ErrTooLong):
			return "", clone((*buf)[:n]), true, perr
		default:
			return "", clone((*buf)[:n]), true, fmt.Errorf("%w: %w", ErrMalformed, perr)
		}
	}
	for {
		if n == len(*buf) {
			if n >= maxBytes {
				return "", clone((*buf)[:n]), fmt.Errorf("%w (%d bytes)", ErrTooLong, maxBytes)
			}
			bigger := getBuf(min(maxBytes, 4*n))
			copy(*bigger, (*buf)[:n])
			putBuf(buf)
			buf = bigger
		}
		m, rerr := conn.Read((*buf)[n:min(len(*buf), maxBytes)])
		n += m
		// Each parse reads every byte so far, so a client sending a large
		// greeting a byte at a time would cost work quadratic in its size.
		// Past parseBudget bytes parsed in all, parse only when the bytes
		// doubled, the buffer is full, or the read ends (below).
		if m > 0 && (scanned < parseBudget || n >= 2*parsed || n >= maxBytes) {
			if k, peeked, done, err := parse(); done {
				return k, peeked, err
			}
		}
		if rerr != nil && parsed < n {
			if k, peeked, done, err := parse(); done {
				return k, peeked, err
			}
		}
		if rerr != nil {
			peeked := clone((*buf)[:n])
			switch {
			case ctx.Err() != nil:
				return "", peeked, ctx.Err()
			case errors.Is(rerr, os.ErrDeadlineExceeded):
				return "", peeked, fmt.Errorf("%w after %v (%d bytes)", ErrTimeout, timeout, n)
			case errors.Is(rerr, io.EOF):
				return "", peeked, fmt.Errorf("%w after %d bytes", ErrClosed, n)
			}
			return "", peeked, fmt.Errorf("%w: %w", ErrClosed, rerr)
		}
	}
}

// parseBudget is how many bytes Read lets its parser read in all, summed
// over its calls, before it parses only at doublings of the bytes read
// (see Read). A greeting typed a byte at a time stays well within it up
// to config's largest max_bytes for a few kilobytes.
const parseBudget = 1 << 20

// safeParse calls p.Parse, turning a panic into an error.
func safeParse(p Parser, data []byte) (key string, err error) {
	defer func() {
		if r := recover(); r != nil {
			key, err = "", malformed("parser panic: %v", r)
		}
	}()
	return p.Parse(data)
}

func clone(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return append([]byte(nil), b...)
}

// Read buffers come from one sync.Pool per power-of-two size class, from
// 2^minBufShift to 2^maxBufShift bytes; larger ones are not pooled.
const (
	initialBuf  = 4096
	minBufShift = 9
	maxBufShift = 16
)

var bufPools [maxBufShift - minBufShift + 1]sync.Pool

// getBuf returns a buffer of exactly n bytes (n > 0).
func getBuf(n int) *[]byte {
	c := sizeClass(n)
	if c < len(bufPools) {
		if b, ok := bufPools[c].Get().(*[]byte); ok {
			*b = (*b)[:n]
			return b
		}
		b := make([]byte, n, 1<<(c+minBufShift))
		return &b
	}
	b := make([]byte, n)
	return &b
}

func putBuf(b *[]byte) {
	c := sizeClass(cap(*b))
	if c < len(bufPools) && cap(*b) == 1<<(c+minBufShift) {
		bufPools[c].Put(b)
	}
}

// sizeClass returns the index of the smallest class holding n bytes.
func sizeClass(n int) int {
	if n <= 1<<minBufShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minBufShift
}
