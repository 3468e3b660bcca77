package proxy_test

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoff-lb/handoff/proxy"
)

// TestSpliceUrgentData: a byte sent with MSG_OOB after a direction switched
// to splice(2) must not stall it or cut it short. splice(2) stops at TCP's
// urgent mark and never moves past it; the bytes behind the mark must still
// arrive (the urgent byte itself is not part of the stream and is dropped,
// as read(2) does). Both while the sender stays open and when it
// half-closes right after, in one burst.
func TestSpliceUrgentData(t *testing.T) {
	const bulk = 64 << 10 // fills the copy buffer: the direction splices
	want := append(make([]byte, bulk), "tail"...)
	for _, halfClose := range []bool{false, true} {
		name := "open"
		if halfClose {
			name = "half-closed"
		}
		t.Run(name, func(t *testing.T) {
			got := make(chan []byte, 1)
			backend := startBackend(t, "", func(c *net.TCPConn) {
				c.SetReadDeadline(time.Now().Add(3 * time.Second))
				b := make([]byte, 0, len(want))
				buf := make([]byte, 32<<10)
				for len(b) < len(want) {
					n, err := c.Read(buf)
					b = append(b, buf[:n]...)
					if err != nil {
						break
					}
				}
				got <- b
			})
			p := startProxy(t, backend, proxyConfig{route: proxy.Route{Idle: 10 * time.Second}})
			c := dial(t, p.addr)
			if _, err := c.Write(want[:bulk]); err != nil {
				t.Fatal(err)
			}
			rc, err := c.SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			var serr error
			if err := rc.Write(func(fd uintptr) bool {
				serr = unix.Sendto(int(fd), []byte("!"), unix.MSG_OOB, nil)
				return true
			}); err != nil || serr != nil {
				t.Fatalf("send urgent byte: %v %v", err, serr)
			}
			if _, err := c.Write(want[bulk:]); err != nil {
				t.Fatal(err)
			}
			if halfClose {
				c.CloseWrite()
			}
			b := <-got
			if !bytes.Equal(b, want) {
				t.Fatalf("backend got %d bytes ending %q, want %d ending %q", len(b), tail(b), len(want), tail(want))
			}
			if halfClose {
				c.SetReadDeadline(time.Now().Add(3 * time.Second))
				io.Copy(io.Discard, c)
				if r := p.result(t); r.err != nil || r.st.ClientToBackend != int64(len(want)) {
					t.Fatalf("Splice = %+v, %v; want %d bytes to the backend, nil", r.st, r.err, len(want))
				}
			}
		})
	}
}

func tail(b []byte) []byte { return b[max(0, len(b)-8):] }
