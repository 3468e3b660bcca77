package proxy_test

import (
	"bytes"
	"io"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/proxy"
)

// TestSpliceSmallThenBulk: a direction starts by copying small messages and
// switches to splice(2) for a bulk stream; the bytes stay in order and
// whole across the switch, and small messages after it still echo.
func TestSpliceSmallThenBulk(t *testing.T) {
	p := startProxy(t, startBackend(t, "", echo), proxyConfig{route: proxy.Route{Idle: time.Minute}})
	c := dial(t, p.addr)
	c.SetDeadline(time.Now().Add(20 * time.Second))
	roundTrip := func(msg []byte) {
		t.Helper()
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("%d-byte message: echo differs (%v)", len(msg), err)
		}
	}
	var total int64
	for i := range 5 {
		msg := bytes.Repeat([]byte{byte('a' + i)}, 10+i)
		roundTrip(msg)
		total += int64(len(msg))
	}
	// 8 MiB at once: reads fill the copy buffer, and the rest is spliced.
	const bulk = 8 << 20
	sum := make(chan digest, 1)
	go func() {
		n, s, err := drain(io.LimitReader(c, bulk))
		sum <- digest{n, s, err}
	}()
	sent, err := stream(c, 7, bulk)
	if err != nil {
		t.Fatal(err)
	}
	if d := <-sum; d.err != nil || d.n != bulk || d.sum != sent {
		t.Fatalf("bulk echo: %d of %d bytes, sha256 match %v, %v", d.n, bulk, d.sum == sent, d.err)
	}
	total += bulk
	for i := range 3 {
		msg := []byte{byte('x' + i)}
		roundTrip(msg)
		total++
	}
	c.CloseWrite()
	if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("after CloseWrite: %d, %v; want EOF", n, err)
	}
	r := p.result(t)
	if r.err != nil || r.st.ClientToBackend != total || r.st.BackendToClient != total {
		t.Fatalf("Splice = %+v, %v; want %d bytes each way", r.st, r.err, total)
	}
}
