package proxy_test

import (
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/proxy"
)

func TestLimiter(t *testing.T) {
	tests := []struct {
		max, acquire, wantOK int
	}{
		{max: 2, acquire: 5, wantOK: 2},
		{max: 0, acquire: 5, wantOK: 5}, // no limit
		{max: -1, acquire: 3, wantOK: 3},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.max), func(t *testing.T) {
			l := proxy.NewLimiter(tt.max)
			ok := 0
			for range tt.acquire {
				if l.TryAcquire() {
					ok++
				}
			}
			if ok != tt.wantOK || l.Active() != int64(ok) || l.Refused() != uint64(tt.acquire-ok) {
				t.Fatalf("admitted %d (active %d, refused %d), want %d", ok, l.Active(), l.Refused(), tt.wantOK)
			}
			l.Release()
			if tt.max > 0 && !l.TryAcquire() {
				t.Fatal("Release did not free a slot")
			}
		})
	}
}

// TestLimiterRefusesAtOnce: past max_connections a new client is closed at
// once while the admitted ones keep working.
func TestLimiterRefusesAtOnce(t *testing.T) {
	l := proxy.NewLimiter(2)
	p := startProxy(t, startBackend(t, "", echo), proxyConfig{limiter: l})
	held := []*net.TCPConn{dial(t, p.addr), dial(t, p.addr)}
	for _, c := range held {
		c.Write([]byte("x"))
		io.ReadFull(c, make([]byte, 1))
	}
	start := time.Now()
	c := dial(t, p.addr)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("third connection was served")
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("refusal took %v", d)
	}
	if l.Refused() != 1 || l.Active() != 2 {
		t.Fatalf("refused %d, active %d", l.Refused(), l.Active())
	}
	held[0].Write([]byte("y"))
	if _, err := io.ReadFull(held[0], make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
}
