package balancer_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/config"
	"github.com/handoff-lb/handoff/dataplane"
	"github.com/handoff-lb/handoff/healthcheck"
	"github.com/handoff-lb/handoff/internal/nstest"
	"github.com/handoff-lb/handoff/internal/testenv"
)

// TestMigrateKernel: when a backend with N pinned clients goes down, the
// engine re-pins all of them onto the pool's other backends in real sets:
// the dead set ends empty, the others hold exactly N more, and the time
// from the down decision to the last set update is within 1 s for 100,000
// clients (HANDOFF_PERF=1; 20,000 by default).
func TestMigrateKernel(t *testing.T) {
	nstest.RequireRoot(t)
	n := 20_000
	if testenv.Perf() {
		n = 100_000
	}
	ns := nstest.New(t, "mig-")
	ns.Run(t, "ip", "link", "set", "lo", "up")
	sc := kernelService("web", netip.MustParseAddrPort("127.0.0.1:8080"), 4, 1<<20)
	r, dp := runKernelEngine(t, ns, balancer.Options{Config: &config.Config{Services: []config.Service{sc}}})
	eng := r.eng
	ctx := context.Background()
	time.Sleep(50 * time.Millisecond) // Run syncs and starts the monitor after listening

	pins := make([]dataplane.Pin, n)
	for i := range pins {
		c := netip.AddrFrom4([4]byte{198, 18 + byte(i>>16), byte(i >> 8), byte(i)})
		pins[i] = dataplane.Pin{Service: "web", Backend: "be1", Client: c, Key: "src=" + c.String()}
	}
	if err := dp.PinBatch(ctx, pins); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	eng.OnHealth(healthcheck.Event{Service: "web", Backend: "be1", Up: false, Reason: "test", At: start})
	took := time.Since(start)

	counts, err := dp.Count(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d clients of a dead backend re-pinned in %v (%.0f clients/s); now %v", n, took.Round(time.Millisecond), float64(n)/took.Seconds(), counts)
	if counts["be1"] != 0 || counts["be2"]+counts["be3"]+counts["be4"] != n {
		t.Fatalf("after the migration: %v, want be1 empty and %d on the others", counts, n)
	}
	for _, b := range []string{"be2", "be3", "be4"} {
		if share := float64(counts[b]) / float64(n); share < 0.28 || share > 0.39 {
			t.Errorf("%s took %.1f%% of the clients, want about a third (maglev)", b, 100*share)
		}
	}
	st, err := eng.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Services[0].MigratedClients; got != uint64(n) {
		t.Errorf("status counts %d migrated clients, want %d", got, n)
	}
	// The remaining timeout and the comment moved with each pin.
	var checked int
	if err := dp.Pins(ctx, "web", "be2", func(p dataplane.Pin) error {
		if checked < 100 && (p.Key != "src="+p.Client.String() || p.TTL < 59*time.Minute) {
			t.Errorf("moved pin %+v lost its comment or timeout", p)
		}
		checked++
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if n == 100_000 && took > time.Second {
		t.Errorf("re-pinning %d clients took %v, want ≤ 1s", n, took)
	}
}
