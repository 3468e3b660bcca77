package balancer_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/internal/testenv"
)

// TestAccessLog: one JSON line per proxied connection (client, backend,
// bytes each way, duration, how it ended) and per pin event, and the pin
// counters of the status.
func TestAccessLog(t *testing.T) {
	be1 := startEcho(t, "be1")
	cfg := webConfig(be1)
	var buf testenv.Buffer
	access := logrus.New()
	access.SetOutput(&buf)
	access.SetFormatter(&logrus.JSONFormatter{})
	eng := runEngine(t, balancer.Options{Config: cfg, AccessLog: logrus.NewEntry(access)}).eng
	ctx := context.Background()

	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	c, err := d.Dial("tcp", eng.Addr("web").String())
	if err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	greeting, err := r.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "hello")
	c.(*net.TCPConn).CloseWrite()
	rest, _ := io.ReadAll(r)
	c.Close()
	client := c.LocalAddr().String()

	if err := eng.PinClient(ctx, "web", netip.MustParseAddr("127.0.0.3"), "be1"); err != nil {
		t.Fatal(err)
	}
	if err := eng.UnpinClient(ctx, "web", netip.MustParseAddr("127.0.0.3")); err != nil {
		t.Fatal(err)
	}
	if err := eng.UnpinClient(ctx, "web", netip.MustParseAddr("127.0.0.4")); err != nil { // had no pin: no event
		t.Fatal(err)
	}

	var conn map[string]any
	var events []string
	deadline := time.Now().Add(5 * time.Second)
	for conn == nil && time.Now().Before(deadline) {
		events = nil
		for _, l := range jsonLines(buf.String()) {
			events = append(events, l["event"].(string))
			if l["event"] == "connection" {
				conn = l
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	if conn == nil {
		t.Fatalf("no connection line; events %v", events)
	}
	want := map[string]any{"service": "web", "client": client, "backend": "be1", "bytes_in": 5.0, "bytes_out": float64(len(greeting) + len(rest)), "end": "closed", "level": "info"}
	for k, v := range want {
		if conn[k] != v {
			t.Errorf("connection line %s = %v, want %v (%v)", k, conn[k], v, conn)
		}
	}
	if _, err := time.ParseDuration(conn["duration"].(string)); err != nil {
		t.Errorf("duration %v", conn["duration"])
	}
	slices.Sort(events) // the connection's line may come after the API's
	if got := strings.Join(events, " "); got != "connection pinned pinned-by-hand unpinned" {
		t.Errorf("events %q", got)
	}
	st, err := eng.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s := st.Services[0]; s.PinsAdded != 2 || s.PinsUnpinned != 1 || s.PinsExpired != 0 {
		t.Errorf("pins added %d, unpinned %d, expired %d; want 2, 1, 0", s.PinsAdded, s.PinsUnpinned, s.PinsExpired)
	}
	if st.Sync == nil || st.Sync.Syncs == 0 || st.Sync.Failures != 0 {
		t.Errorf("sync stats %+v", st.Sync)
	}
	if b := st.Services[0].Backends[0]; b.BytesIn != 5 || b.BytesOut != uint64(len(greeting)+len(rest)) {
		t.Errorf("backend bytes %d in, %d out", b.BytesIn, b.BytesOut)
	}
}
