package healthcheck

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/handoff-lb/handoff/config"
	"github.com/handoff-lb/handoff/proxy"
)

// Checker probes one backend once. A nil error means healthy. The deadline
// and cancellation come from ctx; a Checker never picks its own timeout.
// Implementations are plain values, safe for concurrent use, and leave no
// goroutine or connection behind when Check returns.
type Checker interface {
	Check(ctx context.Context, addr netip.AddrPort) error
}

// DialFunc opens a TCP connection to addr. It is the dial seam of every
// checker; nil means a plain TCP dial from the host's default source address.
type DialFunc func(ctx context.Context, addr netip.AddrPort) (net.Conn, error)

// Response bounds.
const (
	// httpMaxStatusLine is all the HTTP checker reads: the status line.
	httpMaxStatusLine = 512
	// DefaultExpectMaxBytes is how much of the reply SendExpect reads when
	// MaxBytes is 0.
	DefaultExpectMaxBytes = 4096
)

// checkDialer skips the keep-alive setsockopt calls: check connections live
// for one round trip.
var checkDialer = net.Dialer{KeepAlive: -1}

func dial(ctx context.Context, f DialFunc, addr netip.AddrPort) (net.Conn, error) {
	if f != nil {
		return f(ctx, addr)
	}
	// Not DialTCP: with a zero local address it binds the socket first,
	// which costs two system calls and takes the local port from the pool
	// shared by every destination.
	return checkDialer.DialContext(ctx, "tcp", addr.String())
}

// cause strips what the message already says (the *net.OpError's op and
// addresses) and reports the context's error when it ended the operation.
// I/O deadlines come only from ctx, and may pass an instant before ctx
// notices, so a timeout is the context's deadline.
func cause(ctx context.Context, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return ctxErr
	}
	if _, ok := ctx.Deadline(); ok && (errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded)) {
		return context.DeadlineExceeded
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err
	}
	return err
}

// aLongTimeAgo is a deadline that has passed: setting it wakes blocked I/O.
var aLongTimeAgo = time.Unix(1, 0)

// bindContext makes ctx's deadline and cancellation apply to c's I/O. The
// returned stop must be called before c is released.
func bindContext(ctx context.Context, c net.Conn) (stop func() bool) {
	if d, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(d)
	}
	return context.AfterFunc(ctx, func() { _ = c.SetDeadline(aLongTimeAgo) })
}

// snippet quotes at most the first 64 bytes of b for an error message.
func snippet(b []byte) string {
	const limit = 64
	if len(b) > limit {
		return fmt.Sprintf("%q...", b[:limit])
	}
	return fmt.Sprintf("%q", b)
}

// TCP passes when a TCP connection to the backend is established. The
// connection is then closed with a reset (SO_LINGER 0), as HAProxy does, so
// that checks leave no TIME_WAIT sockets behind on the balancer.
type TCP struct {
	Dial DialFunc // nil: a plain TCP connect
}

// Check implements Checker.
func (c TCP) Check(ctx context.Context, addr netip.AddrPort) error {
	if c.Dial == nil {
		if err := connectProbe(ctx, addr); err != nil {
			return fmt.Errorf("tcp %s: connect: %w", addr, cause(ctx, err))
		}
		return nil
	}
	conn, err := c.Dial(ctx, addr)
	if err != nil {
		return fmt.Errorf("tcp %s: connect: %w", addr, cause(ctx, err))
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
	return nil
}

// HTTP passes when GET Path, sent with the backend's address as Host,
// answers with status Status. Only the status line is read (at most 512
// bytes); the connection is closed after it.
type HTTP struct {
	Path   string   // request target; "" means "/"
	Status int      // expected status code; 0 means 200
	Dial   DialFunc // nil: a plain TCP dial
}

// Check implements Checker.
func (c HTTP) Check(ctx context.Context, addr netip.AddrPort) error {
	path, want := c.Path, c.Status
	if path == "" {
		path = "/"
	}
	if want == 0 {
		want = 200
	}
	if err := validPath(path); err != nil {
		return fmt.Errorf("http %s: %w", addr, err)
	}
	conn, err := dial(ctx, c.Dial, addr)
	if err != nil {
		return fmt.Errorf("http %s: connect: %w", addr, cause(ctx, err))
	}
	defer conn.Close()
	stop := bindContext(ctx, conn)
	defer stop()

	buf := make([]byte, 0, httpMaxStatusLine)
	buf = append(buf, "GET "...)
	buf = append(buf, path...)
	buf = append(buf, " HTTP/1.1\r\nHost: "...)
	buf = addr.AppendTo(buf)
	buf = append(buf, "\r\nUser-Agent: handoff-healthcheck\r\nAccept: */*\r\nConnection: close\r\n\r\n"...)
	if _, err := conn.Write(buf); err != nil {
		return fmt.Errorf("http %s: send request: %w", addr, cause(ctx, err))
	}

	buf = buf[:cap(buf)]
	n, line := 0, []byte(nil)
	for {
		if n == len(buf) {
			return fmt.Errorf("http %s: no status line in the first %d bytes", addr, n)
		}
		m, err := conn.Read(buf[n:])
		n += m
		if i := bytes.IndexByte(buf[:n], '\n'); i >= 0 {
			line = bytes.TrimSuffix(buf[:i], []byte("\r"))
			break
		}
		if err == io.EOF {
			if n == 0 {
				return fmt.Errorf("http %s: connection closed before the status line", addr)
			}
			return fmt.Errorf("http %s: malformed status line %s", addr, snippet(buf[:n]))
		}
		if err != nil {
			return fmt.Errorf("http %s: read response: %w", addr, cause(ctx, err))
		}
	}
	got, ok := parseStatusLine(line)
	if !ok {
		return fmt.Errorf("http %s: malformed status line %s", addr, snippet(line))
	}
	if got != want {
		return fmt.Errorf("http %s: status %d, want %d", addr, got, want)
	}
	return nil
}

// validPath rejects request targets that would break the request line, by
// config's rule.
func validPath(p string) error {
	if err := config.CheckHTTPPath(p); err != nil {
		return fmt.Errorf("path %q: %w", p, err)
	}
	return nil
}

// parseStatusLine reads the code of "HTTP/1.x NNN[ reason]".
func parseStatusLine(l []byte) (int, bool) {
	if len(l) < 12 || !bytes.HasPrefix(l, []byte("HTTP/1.")) || l[8] != ' ' || (len(l) > 12 && l[12] != ' ') {
		return 0, false
	}
	code := 0
	for _, d := range l[9:12] {
		if d < '0' || d > '9' {
			return 0, false
		}
		code = code*10 + int(d-'0')
	}
	return code, code >= 100
}

// SendExpect passes when, after Send is written, Expect appears in the reply
// within the first MaxBytes bytes. An empty Send suits protocols that greet
// first (SMTP, FTP); an empty Expect passes once Send is written.
type SendExpect struct {
	Send     string
	Expect   string
	MaxBytes int      // reply bytes read before giving up; 0 means DefaultExpectMaxBytes, never less than len(Expect)
	Dial     DialFunc // nil: a plain TCP dial
}

// Check implements Checker.
func (c SendExpect) Check(ctx context.Context, addr netip.AddrPort) error {
	conn, err := dial(ctx, c.Dial, addr)
	if err != nil {
		return fmt.Errorf("send-expect %s: connect: %w", addr, cause(ctx, err))
	}
	defer conn.Close()
	stop := bindContext(ctx, conn)
	defer stop()

	if c.Send != "" {
		if _, err := io.WriteString(conn, c.Send); err != nil {
			return fmt.Errorf("send-expect %s: send: %w", addr, cause(ctx, err))
		}
	}
	if c.Expect == "" {
		return nil
	}
	size := c.MaxBytes
	if size <= 0 {
		size = DefaultExpectMaxBytes
	}
	buf := make([]byte, max(size, len(c.Expect)))
	want := []byte(c.Expect)
	n := 0
	for {
		m, err := conn.Read(buf[n:])
		if m > 0 {
			// Only the new bytes, plus a tail long enough to hold a match
			// that straddles two reads, need searching.
			from := max(0, n-len(want)+1)
			n += m
			if bytes.Contains(buf[from:n], want) {
				return nil
			}
		}
		switch {
		case n == len(buf):
			return fmt.Errorf("send-expect %s: no %q in the first %d bytes (got %s)", addr, c.Expect, n, snippet(buf[:n]))
		case err == io.EOF:
			return fmt.Errorf("send-expect %s: connection closed after %s, want %q", addr, snippet(buf[:n]), c.Expect)
		case err != nil:
			return fmt.Errorf("send-expect %s: read: %w (got %s, want %q)", addr, cause(ctx, err), snippet(buf[:n]), c.Expect)
		}
	}
}

// WithProxyHeader returns c sending the PROXY protocol header of a health
// check (proxy.CheckHeader: v1 "PROXY UNKNOWN", v2 LOCAL) first on each
// connection, as HAProxy's check-send-proxy does, for backends that expect
// one (accept-proxy) and would otherwise log every check as an error.
// version "" or off returns c; checkers other than TCP, HTTP and
// SendExpect are returned as they are.
func WithProxyHeader(c Checker, version config.ProxyProtocol) (Checker, error) {
	hdr, err := proxy.CheckHeader(version)
	if err != nil || hdr == nil {
		return c, err
	}
	with := func(next DialFunc) DialFunc {
		return func(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
			conn, err := dial(ctx, next, addr)
			if err != nil {
				return nil, err
			}
			stop := bindContext(ctx, conn)
			_, err = conn.Write(hdr)
			stop()
			if err != nil {
				conn.Close()
				return nil, fmt.Errorf("PROXY header: %w", err)
			}
			return conn, nil
		}
	}
	switch c := c.(type) {
	case TCP:
		c.Dial = with(c.Dial)
		return c, nil
	case HTTP:
		c.Dial = with(c.Dial)
		return c, nil
	case SendExpect:
		c.Dial = with(c.Dial)
		return c, nil
	}
	return c, nil
}

// None always passes: the backend is taken to be healthy.
type None struct{}

// Check implements Checker.
func (None) Check(context.Context, netip.AddrPort) error { return nil }

// NewChecker returns the checker h describes. h is taken as config gives
// it: an empty Check, or an http check without a path or status, is an
// error, never a default.
func NewChecker(h config.Health) (Checker, error) {
	switch h.Check {
	case config.CheckTCP:
		return TCP{}, nil
	case config.CheckHTTP:
		var errs []error
		if err := validPath(h.HTTPPath); err != nil {
			errs = append(errs, err)
		}
		if h.ExpectStatus < config.MinExpectStatus || h.ExpectStatus > config.MaxExpectStatus {
			errs = append(errs, fmt.Errorf("expect_status %d: want %d-%d", h.ExpectStatus, config.MinExpectStatus, config.MaxExpectStatus))
		}
		if err := errors.Join(errs...); err != nil {
			return nil, fmt.Errorf("health check http: %w", err)
		}
		return HTTP{Path: h.HTTPPath, Status: h.ExpectStatus}, nil
	case config.CheckSendExpect:
		return SendExpect{Send: h.Send, Expect: h.Expect}, nil
	case config.CheckNone:
		return None{}, nil
	}
	return nil, fmt.Errorf("health check %q: want tcp, http, send-expect or none", h.Check)
}
