package balancer_test

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/fallback"
	"github.com/handoff-lb/handoff/healthcheck"
)

// pinOf returns client's backend in service web, "" when unpinned.
func pinOf(t *testing.T, eng *balancer.Engine, client string) string {
	t.Helper()
	got := ""
	if err := eng.Clients(context.Background(), "web", "", 0, func(p balancer.ClientPin) error {
		if p.Client == client {
			got = p.Backend
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return got
}

// TestHandPinsPersist: a pin made by hand survives the loss of every pin
// (a reboot: the affinity table, like the kernel's sets, is gone) and is
// made again when it vanishes while the daemon runs (a flush), until it
// is unpinned by hand.
func TestHandPinsPersist(t *testing.T) {
	be1, be2 := startEcho(t, "be1"), startEcho(t, "be2")
	cfg := webConfig(be1, be2)
	dir := t.TempDir()
	ctx := context.Background()
	client := netip.MustParseAddr("127.0.0.9")

	r := startStateful(t, cfg, dir)
	if err := r.eng.PinClient(ctx, "web", client, "be2"); err != nil {
		t.Fatal(err)
	}
	r.stop()
	if err := os.Remove(filepath.Join(dir, fallback.StateFile)); err != nil {
		t.Fatal(err)
	}

	r = startStateful(t, cfg, dir)
	if got := pinOf(t, r.eng, client.String()); got != "be2" {
		t.Fatalf("after a restart that lost every pin, the hand-made pin is on %q, want be2", got)
	}
	if err := r.dp.Flush(ctx, "web", "be2"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * balancer.HandPinsEvery)
	for pinOf(t, r.eng, client.String()) != "be2" {
		if time.Now().After(deadline) {
			t.Fatal("a hand-made pin flushed away was not made again")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := r.eng.UnpinClient(ctx, "web", client); err != nil {
		t.Fatal(err)
	}
	r.stop()
	r = startStateful(t, cfg, dir)
	if got := pinOf(t, r.eng, client.String()); got != "" {
		t.Fatalf("unpinned by hand, yet pinned to %q after a restart", got)
	}
}

// TestHandPinToUnusableBackendConflicts: a hand-made pin to a backend
// that is down or draining is refused with ErrConflict (409), and none
// is made.
func TestHandPinToUnusableBackendConflicts(t *testing.T) {
	be1, be2 := startEcho(t, "be1"), startEcho(t, "be2")
	r := startEngine(t, webConfig(be1, be2))
	ctx := context.Background()
	client := netip.MustParseAddr("127.0.0.9")
	r.eng.OnHealth(healthcheck.Event{Service: "web", Backend: "be1", Up: false, Reason: "test", At: time.Now()})
	if err := r.eng.PinClient(ctx, "web", client, "be1"); !errors.Is(err, balancer.ErrConflict) {
		t.Fatalf("pin to a down backend: %v, want a conflict", err)
	}
	if _, err := r.eng.Drain(ctx, "web", "be2", balancer.DrainStart); err != nil {
		t.Fatal(err)
	}
	if err := r.eng.PinClient(ctx, "web", client, "be2"); !errors.Is(err, balancer.ErrConflict) {
		t.Fatalf("pin to a draining backend: %v, want a conflict", err)
	}
	n := 0
	r.eng.Clients(ctx, "web", "", 0, func(balancer.ClientPin) error { n++; return nil })
	if n != 0 {
		t.Fatalf("%d pins after refused hand pins", n)
	}
}
