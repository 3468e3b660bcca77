package classifier

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/config"
	"github.com/handoff-lb/handoff/internal/nstest"
	"github.com/handoff-lb/handoff/internal/testenv"
)

// pair returns the two ends of a loopback TCP connection: client, server.
func pair(tb testing.TB) (net.Conn, net.Conn) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}

// peek is the max_bytes config gives sni and http-host services.
const peek = config.DefaultPeekMaxBytes

// needMore is a parser that never decides.
var needMore = ParserFunc(func([]byte) (string, error) { return "", ErrNeedMore })

func TestRead(t *testing.T) {
	hello := helloFor(t, "read.example")
	sni := sniParser{max: config.DefaultPeekMaxBytes}
	type step struct {
		data  []byte
		pause time.Duration
	}
	tests := []struct {
		name     string
		parser   Parser
		maxBytes int
		timeout  time.Duration
		send     []step
		close    bool
		key      string
		err      error
		peeked   int // bytes peeked; -1: everything sent
	}{
		{"one segment", sni, peek, time.Second, []step{{hello, 0}}, false, "read.example", nil, -1},
		{"three segments", sni, peek, time.Second, []step{{hello[:3], 0}, {hello[3:200], 20 * time.Millisecond}, {hello[200:], 20 * time.Millisecond}}, false, "read.example", nil, -1},
		{"two records in two segments", sni, peek, time.Second, []step{{reframe(hello, 50)[:30], 0}, {reframe(hello, 50)[30:], 20 * time.Millisecond}}, false, "read.example", nil, -1},
		{"garbage", sni, peek, time.Second, []step{{[]byte("GET / HTTP/1.1\r\n"), 0}}, false, "", ErrMalformed, -1},
		{"no SNI", sni, peek, time.Second, []step{{helloFor(t, ""), 0}}, false, "", ErrNoMatch, -1},
		{"EOF before a key", sni, peek, time.Second, []step{{hello[:100], 0}}, true, "", ErrClosed, 100},
		{"EOF at once", sni, peek, time.Second, nil, true, "", ErrClosed, 0},
		{"max bytes", needMore, 64, time.Second, []step{{bytes.Repeat([]byte("x"), 100), 0}}, false, "", ErrTooLong, 64},
		{"max bytes grows the buffer", needMore, 20000, time.Second, []step{{bytes.Repeat([]byte("x"), 25000), 0}}, false, "", ErrTooLong, 20000},
		{"hello longer than max bytes", sni, 512, time.Second, []step{{hello, 0}}, false, "", ErrTooLong, -2},
		{"timeout, silent", sni, peek, 200 * time.Millisecond, nil, false, "", ErrTimeout, 0},
		{"timeout, partial", sni, peek, 200 * time.Millisecond, []step{{hello[:10], 0}}, false, "", ErrTimeout, 10},
		{"parser error", ParserFunc(func([]byte) (string, error) { return "", errors.New("bad frame") }), peek, time.Second, []step{{[]byte("x"), 0}}, false, "", ErrMalformed, 1},
		{"parser panic", ParserFunc(func(b []byte) (string, error) { return string(b[10]), nil }), peek, time.Second, []step{{[]byte("x"), 0}}, false, "", ErrMalformed, 1},
		{"empty key", ParserFunc(func([]byte) (string, error) { return "", nil }), peek, time.Second, []step{{[]byte("x"), 0}}, false, "", ErrNoMatch, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, s := pair(t)
			var sent []byte
			go func() {
				for _, st := range tt.send {
					time.Sleep(st.pause)
					c.Write(st.data)
				}
				if tt.close {
					c.Close()
				}
			}()
			for _, st := range tt.send {
				sent = append(sent, st.data...)
			}
			start := time.Now()
			key, peeked, err := Read(context.Background(), s, tt.parser, tt.maxBytes, tt.timeout)
			took := time.Since(start)
			if key != tt.key || !errors.Is(err, tt.err) || (tt.err == nil) != (err == nil) {
				t.Fatalf("Read = %q, %v; want %q, %v", key, err, tt.key, tt.err)
			}
			switch tt.peeked {
			case -1:
				if !bytes.Equal(peeked, sent) {
					t.Fatalf("peeked %d bytes, sent %d", len(peeked), len(sent))
				}
			case -2:
				if !bytes.HasPrefix(sent, peeked) || len(peeked) == 0 || len(peeked) > tt.maxBytes {
					t.Fatalf("peeked %d bytes", len(peeked))
				}
			default:
				if len(peeked) != tt.peeked || !bytes.HasPrefix(sent, peeked) {
					t.Fatalf("peeked %d bytes, want %d", len(peeked), tt.peeked)
				}
			}
			if errors.Is(tt.err, ErrTimeout) && (took < tt.timeout || took > tt.timeout+500*time.Millisecond) {
				t.Fatalf("timed out after %v, timeout %v", took, tt.timeout)
			}
			if err != nil && Reason(err) == "error" {
				t.Fatalf("no reason for %v", err)
			}
			checkDeadlineCleared(t, c, s)
		})
	}
}

// checkDeadlineCleared: after Read, s has no read deadline left.
func checkDeadlineCleared(t *testing.T, c, s net.Conn) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		var b [1]byte
		_, err := s.Read(b[:])
		done <- err
	}()
	time.Sleep(300 * time.Millisecond) // past any deadline Read set
	select {
	case err := <-done:
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read deadline still set: %v", err)
		}
		return // EOF or data: fine
	default:
	}
	c.Close()
	s.Close()
	<-done
}

// TestReadNeedsMaxBytes: Read takes max_bytes from config and defaults
// nothing; without it, it reads nothing.
func TestReadNeedsMaxBytes(t *testing.T) {
	c, s := pair(t)
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	key, peeked, err := Read(context.Background(), s, needMore, 0, time.Second)
	if err == nil || key != "" || peeked != nil {
		t.Fatalf("Read = %q, %q, %v; want an error", key, peeked, err)
	}
}

func TestReadContext(t *testing.T) {
	c, s := pair(t)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	_, _, err := Read(ctx, s, needMore, peek, 10*time.Second)
	if !errors.Is(err, context.Canceled) || Reason(err) != "canceled" {
		t.Fatalf("err %v", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("took %v", took)
	}
	checkDeadlineCleared(t, c, s)

	c, s = pair(t)
	ctx, cancel = context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, _, err := Read(ctx, s, needMore, peek, 0); !errors.Is(err, context.DeadlineExceeded) || Reason(err) != "timeout" {
		t.Fatalf("err %v", err)
	}
	checkDeadlineCleared(t, c, s)
}

// TestReadManySilent: a thousand silent clients don't delay a normal one.
func TestReadManySilent(t *testing.T) {
	if testing.Short() {
		testenv.Skip(t, "opens 2000 sockets")
	}
	const silent = 1000
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sni := sniParser{max: config.DefaultPeekMaxBytes}
	normal := make(chan time.Time, 1)
	nstest.Serve(t, ln, func(s net.Conn) {
		key, _, _ := Read(context.Background(), s, sni, peek, 30*time.Second)
		if key == "normal.example" {
			normal <- time.Now()
		}
	})
	var clients []net.Conn
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for range silent {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
	}
	hello := helloFor(t, "normal.example")
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	clients = append(clients, c)
	sent := time.Now()
	c.Write(hello)
	select {
	case at := <-normal:
		if d := at.Sub(sent); d > time.Second {
			t.Fatalf("normal client classified after %v", d)
		} else {
			t.Logf("normal client classified in %v among %d silent ones", d, silent)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("normal client not classified")
	}
}

// memConn is a net.Conn that reads from a byte slice, for benchmarking
// Read without the network.
type memConn struct {
	net.Conn
	data []byte
}

func (c *memConn) Read(b []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := copy(b, c.data)
	c.data = c.data[n:]
	return n, nil
}

func (c *memConn) SetReadDeadline(time.Time) error { return nil }

// BenchmarkRead measures Read's own cost (buffers, deadlines, the copy of
// the peeked bytes) around the SNI parser.
func BenchmarkRead(b *testing.B) {
	hello := helloFor(b, "bench.example")
	sni := sniParser{max: config.DefaultPeekMaxBytes}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	conn := &memConn{}
	b.ReportAllocs()
	for b.Loop() {
		conn.data = hello
		if _, _, err := Read(ctx, conn, sni, peek, time.Second); err != nil {
			b.Fatal(err)
		}
	}
}

// oneByteConn hands out its bytes one per Read, as a client sending a byte
// per segment would.
type oneByteConn struct{ memConn }

func (c *oneByteConn) Read(b []byte) (int, error) { return c.memConn.Read(b[:min(1, len(b))]) }

// TestReadParseWorkBounded: a greeting sent a byte at a time costs parse
// work bounded by parseBudget plus a few times its size, not its square,
// and is still classified, on its last byte.
func TestReadParseWorkBounded(t *testing.T) {
	pp, err := newPayloadParser(config.Payload{Pattern: regexp.MustCompile(`^HELLO (\w+)\n`), MaxBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	scanned := 0
	counting := ParserFunc(func(d []byte) (string, error) { scanned += len(d); return pp.Parse(d) })
	word := strings.Repeat("a", 16<<10)
	data := []byte("HELLO " + word + "\n")
	key, peeked, err := Read(context.Background(), &oneByteConn{memConn{data: data}}, counting, 1<<20, 0)
	if err != nil || key != word || len(peeked) != len(data) {
		t.Fatalf("Read = %d-byte key, %d bytes, %v; want the word and every byte", len(key), len(peeked), err)
	}
	if limit := parseBudget + 4*len(data); scanned > limit {
		t.Fatalf("the parser read %d bytes in all for a %d-byte greeting; want at most %d", scanned, len(data), limit)
	}
}
