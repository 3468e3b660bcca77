package healthcheck

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/config"
	"github.com/handoff-lb/handoff/internal/nstest"
	"github.com/handoff-lb/handoff/internal/testenv"
)

// serve runs handle for every connection accepted on a fresh loopback
// listener and returns its address. The listener and every handler are
// stopped and waited for when the test ends; handlers should return when
// the client closes or done is closed.
func serve(t testing.TB, network, addr string, handle func(c net.Conn, done <-chan struct{})) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		testenv.Skipf(t, "listen %s %s: %v", network, addr, err)
	}
	done := make(chan struct{})
	nstest.Serve(t, ln, func(c net.Conn) { handle(c, done) })
	t.Cleanup(func() { close(done) }) // runs before Serve's cleanup waits for the handlers
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// silent reads until the client leaves and never answers.
func silent(c net.Conn, done <-chan struct{}) {
	_, _ = io.Copy(io.Discard, c)
}

// replyHTTP answers one request with raw and records the request head.
func replyHTTP(raw string, got chan<- string) func(net.Conn, <-chan struct{}) {
	return func(c net.Conn, done <-chan struct{}) {
		r := bufio.NewReader(c)
		var head strings.Builder
		for {
			l, err := r.ReadString('\n')
			head.WriteString(l)
			if err != nil || l == "\r\n" {
				break
			}
		}
		if got != nil {
			select {
			case got <- head.String():
			default:
			}
		}
		_, _ = io.WriteString(c, raw)
	}
}

// replyLine reads one line and answers with raw; then, if hold, waits for
// the client to leave.
func replyLine(raw string, hold bool) func(net.Conn, <-chan struct{}) {
	return func(c net.Conn, done <-chan struct{}) {
		if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
			return
		}
		_, _ = io.WriteString(c, raw)
		if hold {
			_, _ = io.Copy(io.Discard, c)
		}
	}
}

// dribble writes one byte at a time, as slow or fragmented backends do.
func dribble(raw string) func(net.Conn, <-chan struct{}) {
	return func(c net.Conn, done <-chan struct{}) {
		if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
			return
		}
		for i := range len(raw) {
			if _, err := c.Write([]byte{raw[i]}); err != nil {
				return
			}
			time.Sleep(time.Millisecond)
		}
		_, _ = io.Copy(io.Discard, c)
	}
}

type checkCase struct {
	name    string
	checker Checker
	handle  func(net.Conn, <-chan struct{}) // nil: nothing listens
	timeout time.Duration                   // 0: 2s
	wantErr string                          // "" means healthy; otherwise a substring of the error, with ADDR for the address
}

func runCheckCases(t *testing.T, cases []checkCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var addr netip.AddrPort
			if tc.handle == nil {
				addr = nstest.RefusedAddr(t)
			} else {
				addr = serve(t, "tcp", "127.0.0.1:0", tc.handle)
			}
			timeout := tc.timeout
			if timeout == 0 {
				timeout = 2 * time.Second
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			start := time.Now()
			err := tc.checker.Check(ctx, addr)
			took := time.Since(start)
			if took > timeout+3*time.Second {
				t.Errorf("Check took %v, context allowed %v", took, timeout)
			}
			want := strings.ReplaceAll(tc.wantErr, "ADDR", addr.String())
			switch {
			case want == "" && err != nil:
				t.Fatalf("Check = %v, want healthy", err)
			case want != "" && err == nil:
				t.Fatalf("Check passed, want error containing %q", want)
			case want != "" && !strings.Contains(err.Error(), want):
				t.Fatalf("Check = %q, want it to contain %q", err, want)
			}
		})
	}
}

func TestTCP(t *testing.T) {
	runCheckCases(t, []checkCase{
		{name: "up", checker: TCP{}, handle: silent},
		{name: "refused", checker: TCP{}, wantErr: "tcp ADDR: connect: "},
		{name: "dial seam", checker: TCP{Dial: func(ctx context.Context, a netip.AddrPort) (net.Conn, error) {
			return nil, errors.New("no route")
		}}, handle: silent, wantErr: "tcp ADDR: connect: no route"},
	})
}

func TestTCPIPv6(t *testing.T) {
	up := serve(t, "tcp6", "[::1]:0", silent)
	if err := (TCP{}).Check(context.Background(), up); err != nil {
		t.Fatalf("Check(%v) = %v", up, err)
	}
	if err := (TCP{}).Check(context.Background(), netip.AddrPortFrom(netip.IPv6Loopback(), nstest.RefusedAddr(t).Port())); err == nil {
		t.Fatal("Check of a closed IPv6 port passed")
	}
}

func TestTCPContextEnded(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	addr := serve(t, "tcp", "127.0.0.1:0", silent)
	err := TCP{}.Check(ctx, addr)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Check with a canceled context = %v, want context.Canceled", err)
	}
}

func TestHTTP(t *testing.T) {
	runCheckCases(t, []checkCase{
		{name: "200", checker: HTTP{Path: "/healthz", Status: 200},
			handle: replyHTTP("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", nil)},
		{name: "defaults", checker: HTTP{},
			handle: replyHTTP("HTTP/1.0 200 OK\r\n\r\n", nil)},
		{name: "no reason phrase", checker: HTTP{},
			handle: replyHTTP("HTTP/1.1 200\r\n\r\n", nil)},
		{name: "204 expected", checker: HTTP{Path: "/ready", Status: 204},
			handle: replyHTTP("HTTP/1.1 204 No Content\r\n\r\n", nil)},
		{name: "503", checker: HTTP{Path: "/healthz", Status: 200},
			handle: replyHTTP("HTTP/1.1 503 Service Unavailable\r\n\r\n", nil), wantErr: "http ADDR: status 503, want 200"},
		{name: "garbage", checker: HTTP{},
			handle: replyHTTP("SSH-2.0-OpenSSH_9.6\r\n", nil), wantErr: `http ADDR: malformed status line "SSH-2.0-OpenSSH_9.6"`},
		{name: "garbage without newline", checker: HTTP{},
			handle: replyHTTP("\x00\x01\x02", nil), wantErr: `http ADDR: malformed status line "\x00\x01\x02"`},
		{name: "endless line", checker: HTTP{},
			handle: replyHTTP(strings.Repeat("x", 4096), nil), wantErr: "http ADDR: no status line in the first 512 bytes"},
		{name: "closed without answer", checker: HTTP{},
			handle: replyHTTP("", nil), wantErr: "http ADDR: connection closed before the status line"},
		{name: "slow", checker: HTTP{}, timeout: 100 * time.Millisecond,
			handle: silent, wantErr: "http ADDR: read response: context deadline exceeded"},
		{name: "fragmented", checker: HTTP{},
			handle: dribble("HTTP/1.1 200 OK\r\n\r\n")},
		{name: "refused", checker: HTTP{}, wantErr: "http ADDR: connect: "},
		{name: "bad path", checker: HTTP{Path: "/a b"}, handle: silent, wantErr: `path "/a b"`},
	})
}

func TestHTTPRequest(t *testing.T) {
	tests := []struct {
		network, listen string
	}{
		{"tcp4", "127.0.0.1:0"},
		{"tcp6", "[::1]:0"},
	}
	for _, tc := range tests {
		t.Run(tc.network, func(t *testing.T) {
			got := make(chan string, 1)
			addr := serve(t, tc.network, tc.listen, replyHTTP("HTTP/1.1 200 OK\r\n\r\n", got))
			if err := (HTTP{Path: "/healthz?full=1"}).Check(context.Background(), addr); err != nil {
				t.Fatal(err)
			}
			head := <-got
			for _, want := range []string{"GET /healthz?full=1 HTTP/1.1\r\n", "\r\nHost: " + addr.String() + "\r\n", "\r\nConnection: close\r\n"} {
				if !strings.Contains(head, want) {
					t.Errorf("request %q lacks %q", head, want)
				}
			}
		})
	}
}

func TestSendExpect(t *testing.T) {
	runCheckCases(t, []checkCase{
		{name: "match", checker: SendExpect{Send: "PING\n", Expect: "PONG"},
			handle: replyLine("+PONG\r\n", false)},
		{name: "match held open", checker: SendExpect{Send: "PING\n", Expect: "PONG"},
			handle: replyLine("+PONG\r\n", true)},
		{name: "match across reads", checker: SendExpect{Send: "PING\n", Expect: "PONG"},
			handle: dribble("+PONG\r\n")},
		{name: "banner", checker: SendExpect{Expect: "220 "},
			handle: func(c net.Conn, done <-chan struct{}) { _, _ = io.WriteString(c, "220 mail ESMTP\r\n") }},
		{name: "send only", checker: SendExpect{Send: "PING\n"}, handle: silent},
		{name: "mismatch closed", checker: SendExpect{Send: "PING\n", Expect: "PONG"},
			handle: replyLine("-ERR\r\n", false), wantErr: `send-expect ADDR: connection closed after "-ERR\r\n", want "PONG"`},
		{name: "mismatch held open", checker: SendExpect{Send: "PING\n", Expect: "PONG"}, timeout: 100 * time.Millisecond,
			handle: replyLine("-ERR\r\n", true), wantErr: `send-expect ADDR: read: context deadline exceeded (got "-ERR\r\n", want "PONG")`},
		{name: "slow", checker: SendExpect{Send: "PING\n", Expect: "PONG"}, timeout: 100 * time.Millisecond,
			handle: silent, wantErr: `send-expect ADDR: read: context deadline exceeded (got "", want "PONG")`},
		{name: "bounded", checker: SendExpect{Send: "PING\n", Expect: "PONG", MaxBytes: 100},
			handle: replyLine(strings.Repeat("x", 1000)+"PONG", true), wantErr: `send-expect ADDR: no "PONG" in the first 100 bytes`},
		{name: "default bound", checker: SendExpect{Send: "PING\n", Expect: "PONG"},
			handle: replyLine(strings.Repeat("x", 10000)+"PONG", true), wantErr: `no "PONG" in the first 4096 bytes`},
		{name: "refused", checker: SendExpect{Send: "PING\n", Expect: "PONG"}, wantErr: "send-expect ADDR: connect: "},
	})
}

func TestNone(t *testing.T) {
	if err := (None{}).Check(context.Background(), nstest.RefusedAddr(t)); err != nil {
		t.Fatal(err)
	}
}

func TestNewChecker(t *testing.T) {
	tests := []struct {
		name    string
		h       config.Health
		want    Checker
		wantErr string
	}{
		{"tcp", config.Health{Check: config.CheckTCP}, TCP{}, ""},
		{"empty is no check", config.Health{}, nil, `health check ""`},
		{"http", config.Health{Check: config.CheckHTTP, HTTPPath: "/healthz", ExpectStatus: 200}, HTTP{Path: "/healthz", Status: 200}, ""},
		{"send-expect", config.Health{Check: config.CheckSendExpect, Send: "PING\n", Expect: "PONG"}, SendExpect{Send: "PING\n", Expect: "PONG"}, ""},
		{"none", config.Health{Check: config.CheckNone}, None{}, ""},
		{"unknown", config.Health{Check: "icmp"}, nil, `health check "icmp"`},
		{"relative path", config.Health{Check: config.CheckHTTP, HTTPPath: "healthz"}, nil, `path "healthz"`},
		{"bad status", config.Health{Check: config.CheckHTTP, ExpectStatus: 42}, nil, "expect_status 42"},
		{"http without a path", config.Health{Check: config.CheckHTTP, ExpectStatus: 200}, nil, `path ""`},
		{"http without a status", config.Health{Check: config.CheckHTTP, HTTPPath: "/healthz"}, nil, "expect_status 0"},
		{"status above config's range", config.Health{Check: config.CheckHTTP, HTTPPath: "/healthz", ExpectStatus: 600}, nil, "expect_status 600: want 100-599"},
		{"path with a space", config.Health{Check: config.CheckHTTP, HTTPPath: "/a b", ExpectStatus: 200}, nil, `path "/a b": holds a space`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := NewChecker(tc.h)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("NewChecker = %v, %v; want error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("NewChecker = %#v, %v; want %#v", got, err, tc.want)
			}
		})
	}
}

func BenchmarkTCPCheck(b *testing.B) {
	addr := serve(b, "tcp", "127.0.0.1:0", silent)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		if err := (TCP{}).Check(cctx, addr); err != nil {
			b.Fatal(err)
		}
		cancel()
	}
}
