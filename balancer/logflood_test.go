package balancer_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/config"
	"github.com/handoff-lb/handoff/dataplane"
	"github.com/handoff-lb/handoff/internal/testenv"
)

// failingPins is a data plane whose sets are gone: every pin fails.
type failingPins struct{ balancer.Dataplane }

func (failingPins) Pin(context.Context, dataplane.Pin) error {
	return errors.New(`ipset "ho-web-be1": add: set does not exist`)
}

// TestPinFailuresLogRateLimited: with the sets gone, a burst of new
// connections logs a handful of "pin failed" lines, not one per
// connection, and a later line says how many were suppressed.
func TestPinFailuresLogRateLimited(t *testing.T) {
	be1 := startEcho(t, "be1")
	sc := testService("web", config.CheckNone, be1)
	var out testenv.Buffer
	log := logrus.New()
	log.Out = &out
	log.SetLevel(logrus.InfoLevel)
	eng := runEngine(t, balancer.Options{Config: &config.Config{Services: []config.Service{sc}}, Dataplane: failingPins{newFDP(t)}, Kernel: true, Logger: logrus.NewEntry(log)}).eng
	addr := eng.Addr("web").String()
	const conns = 1000
	start := time.Now()
	var wg sync.WaitGroup
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, byte(i>>8), byte(2+i%250))}, Timeout: 5 * time.Second}
			c, err := d.Dial("tcp", addr)
			if err == nil {
				c.SetDeadline(time.Now().Add(5 * time.Second))
				c.Read(make([]byte, 1))
				c.Close()
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	lines := strings.Count(out.String(), "pin failed")
	// A burst of 10, then one a second.
	if limit := 10 + int(took/time.Second) + 1; lines > limit {
		t.Fatalf("%d connections whose pin failed logged %d lines in %v, want at most %d", conns, lines, took, limit)
	}
	if lines == 0 {
		t.Fatal("no pin failure was logged at all")
	}
	time.Sleep(1100 * time.Millisecond)
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 9, 9)}}
	if c, err := d.Dial("tcp", addr); err == nil {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Read(make([]byte, 1))
		c.Close()
	}
	deadline := time.Now().Add(2 * time.Second)
	for !strings.Contains(out.String(), "suppressed=") {
		if time.Now().After(deadline) {
			t.Fatalf("no line says how many were suppressed:\n%s", out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
