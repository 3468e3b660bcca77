package kernel

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/dataplane"
)

func fakeMember(k *fakeKernel, set string, ip netip.Addr) (member, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	s := k.sets[set]
	if s == nil {
		return member{}, false
	}
	m, ok := s.members[ip]
	return m, ok
}

func fakeLen(k *fakeKernel, set string) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.sets[set].members)
}

func TestPinBatch(t *testing.T) {
	d, k := syncedFake(t, pinServices())
	ctx := context.Background()
	ip := netip.MustParseAddr
	pins := []dataplane.Pin{
		{Service: "web", Backend: "be1", Client: ip("198.18.0.2"), Key: "src=198.18.0.2"},
		{Service: "web", Backend: "be2", Client: ip("198.18.0.3"), TTL: 1500 * time.Millisecond},
		{Service: "web", Backend: "be2", Client: ip("::ffff:198.18.0.4"), Key: "sni=\"x\"\n"},
		{Service: "api", Backend: "x", Client: ip("198.18.0.5"), TTL: 1e6 * time.Hour},
		{Service: "v6", Backend: "a", Client: ip("2001:2:0:1::2"), Key: "v6"},
		{Service: "forever", Backend: "a", Client: ip("198.18.0.6"), TTL: time.Minute},
		{Service: "web", Backend: "be1", Client: ip("198.18.0.2"), Key: "again", TTL: time.Minute}, // the later pin wins
	}
	if err := d.PinBatch(ctx, pins); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		set, ip string
		want    member
	}{
		{"ho-web-be1", "198.18.0.2", member{timeout: 60, comment: "again"}},
		{"ho-web-be2", "198.18.0.3", member{timeout: 2}},
		{"ho-web-be2", "198.18.0.4", member{timeout: 3600, comment: "sni=_x__"}},
		{"ho-api-x", "198.18.0.5", member{timeout: maxTimeout}},
		{"ho6-v6-a", "2001:2:0:1::2", member{timeout: 600, comment: "v6"}},
		{"ho-forever-a", "198.18.0.6", member{}},
	} {
		m, ok := fakeMember(k, c.set, ip(c.ip))
		c.want.ip = ip(c.ip)
		if !ok || m != c.want {
			t.Errorf("%s in %s: %+v, %v; want %+v", c.ip, c.set, m, ok, c.want)
		}
	}
	if err := d.PinBatch(ctx, nil); err != nil {
		t.Errorf("empty batch: %v", err)
	}
}

func TestPinBatchChunks(t *testing.T) {
	d, k := newFakeDataplane(Options{})
	st := twoServices()
	st.Services[0].MaxClients = 20000
	mustSync(t, d, st)
	pins := make([]dataplane.Pin, 2*pinChunk+1)
	for i := range pins {
		pins[i] = dataplane.Pin{Service: "web", Backend: "be1", Client: benchClient(i)}
	}
	if err := d.PinBatch(context.Background(), pins); err != nil {
		t.Fatal(err)
	}
	if n := fakeLen(k, "ho-web-be1"); n != len(pins) {
		t.Errorf("%d pins in the set, want %d", n, len(pins))
	}
	if k.batches != 3 {
		t.Errorf("%d addBatch calls for %d pins, want 3", k.batches, len(pins))
	}
}

func TestPinBatchErrors(t *testing.T) {
	d, k := newFakeDataplane(Options{})
	ctx := context.Background()
	st := twoServices()
	st.Services[0].MaxClients = 3
	mustSync(t, d, st)
	c := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 0, byte(i)}) }

	var pins []dataplane.Pin
	for i := range 5 {
		pins = append(pins, dataplane.Pin{Service: "web", Backend: "be1", Client: c(i)})
	}
	pins = append(pins, dataplane.Pin{Service: "web", Backend: "nope", Client: c(10)}, dataplane.Pin{Service: "api", Backend: "x", Client: c(11)})
	err := d.PinBatch(ctx, pins)
	want := `kernel: pin batch: 3 of 7 pins failed: kernel: service "web": backend "nope": unknown service or backend; ` +
		`ipset "ho-web-be1": add 198.18.0.3: client table full (fake) (and 1 more like it)`
	if err == nil || err.Error() != want {
		t.Errorf("PinBatch =\n%v\nwant\n%s", err, want)
	}
	if !errors.Is(err, dataplane.ErrFull) || !errors.Is(err, dataplane.ErrUnknown) {
		t.Errorf("PinBatch error wraps neither ErrFull nor ErrUnknown")
	}
	if _, ok := fakeMember(k, "ho-api-x", c(11)); !ok {
		t.Error("the pin after the failures was not made")
	}

	// Past maxCauses distinct causes, the rest are counted.
	pins = pins[:0]
	for i := range maxCauses + 3 {
		pins = append(pins, dataplane.Pin{Service: fmt.Sprintf("svc%d", i), Backend: "a", Client: c(i)})
	}
	err = d.PinBatch(ctx, pins)
	if err == nil || !strings.HasPrefix(err.Error(), fmt.Sprintf("kernel: pin batch: %d of %d pins failed: ", len(pins), len(pins))) ||
		!strings.HasSuffix(err.Error(), "; 3 more for other reasons") {
		t.Errorf("PinBatch with many causes = %v", err)
	}

	// A cancelled context: nothing is pinned, every pin is counted.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	err = d.PinBatch(cctx, []dataplane.Pin{{Service: "api", Backend: "x", Client: c(20)}, {Service: "api", Backend: "x", Client: c(21)}})
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "2 of 2 pins failed: not attempted: context canceled") {
		t.Errorf("PinBatch with a cancelled context = %v", err)
	}
	if _, ok := fakeMember(k, "ho-api-x", c(20)); ok {
		t.Error("pinned despite the cancelled context")
	}

	d.Close()
	if err := d.PinBatch(ctx, pins); !errors.Is(err, errClosed) {
		t.Errorf("PinBatch after Close = %v", err)
	}
}

// TestPinBatchDuringRebuild pins in a batch while Sync rebuilds the set:
// the pins reach the rebuilt set, including the re-pin of a client
// unpinned during the rebuild.
func TestPinBatchDuringRebuild(t *testing.T) {
	st := twoServices()
	d, k := syncedFake(t, st)
	ctx := context.Background()
	old, back, during := netip.MustParseAddr("198.18.0.2"), netip.MustParseAddr("198.18.0.3"), netip.MustParseAddr("198.18.0.4")
	mustPin(t, d, dataplane.Pin{Service: "web", Backend: "be1", Client: old, Key: "old"})
	mustPin(t, d, dataplane.Pin{Service: "web", Backend: "be1", Client: back, Key: "back"})
	k.onList = func() {
		if err := d.Unpin(ctx, "web", "be1", back); err != nil {
			t.Error(err)
		}
		if err := d.PinBatch(ctx, []dataplane.Pin{
			{Service: "web", Backend: "be1", Client: during, Key: "during"},
			{Service: "web", Backend: "be1", Client: back, Key: "back again"},
		}); err != nil {
			t.Error(err)
		}
	}
	st.Services[0].MaxClients = 500
	mustSync(t, d, st)
	for ip, key := range map[netip.Addr]string{old: "old", back: "back again", during: "during"} {
		if m, ok := fakeMember(k, "ho-web-be1", ip); !ok || m.comment != key {
			t.Errorf("%s after the rebuild: %+v, %v; want key %q", ip, m, ok, key)
		}
	}
	if k.sets["ho-web-be1"].spec.maxelem != 500 {
		t.Error("set not rebuilt")
	}
}

// TestConcurrentPinBatchesAndSyncs is TestConcurrentPinsAndSyncs with
// batches: no pin may be lost while Syncs rebuild the set (run with -race).
func TestConcurrentPinBatchesAndSyncs(t *testing.T) {
	const each = 300
	pinDuringSyncs(t, 3, each, 30, func(ctx context.Context, d *Dataplane, w int) error {
		pins := make([]dataplane.Pin, each)
		for i := range pins {
			pins[i] = dataplane.Pin{Service: "web", Backend: "be1", Client: benchClient(w*each + i)}
		}
		return d.PinBatch(ctx, pins)
	})
}

func TestFlushAndCount(t *testing.T) {
	d, k := syncedFake(t, twoServices())
	ctx := context.Background()
	var pins []dataplane.Pin
	for i := range 30 {
		pins = append(pins, dataplane.Pin{Service: "web", Backend: []string{"be1", "be2"}[i%3/2], Client: netip.AddrFrom4([4]byte{198, 18, 0, byte(i)})})
	}
	pins = append(pins, dataplane.Pin{Service: "api", Backend: "x", Client: netip.MustParseAddr("198.18.1.1")})
	if err := d.PinBatch(ctx, pins); err != nil {
		t.Fatal(err)
	}
	counts, err := d.Count(ctx, "web")
	if err != nil || len(counts) != 2 || counts["be1"] != 20 || counts["be2"] != 10 {
		t.Errorf("Count = %v, %v; want be1 20, be2 10", counts, err)
	}
	if err := d.Flush(ctx, "web", "be1"); err != nil {
		t.Fatal(err)
	}
	if n, m := fakeLen(k, "ho-web-be1"), fakeLen(k, "ho-web-be2")+fakeLen(k, "ho-api-x"); n != 0 || m != 11 {
		t.Errorf("after Flush: %d pins in be1 (want 0), %d elsewhere (want 11)", n, m)
	}
	// A backend whose set is gone counts 0, and flushes fine.
	k.mu.Lock()
	delete(k.sets, "ho-web-be2")
	k.mu.Unlock()
	counts, err = d.Count(ctx, "web")
	if err != nil || counts["be1"] != 0 || counts["be2"] != 0 {
		t.Errorf("Count without a set = %v, %v", counts, err)
	}
	if err := d.Flush(ctx, "web", "be2"); err != nil {
		t.Errorf("Flush without a set: %v", err)
	}
	for _, err := range []error{d.Flush(ctx, "web", "nope"), d.Flush(ctx, "nope", "be1"), func() error { _, err := d.Count(ctx, "nope"); return err }()} {
		if !errors.Is(err, dataplane.ErrUnknown) {
			t.Errorf("unknown service or backend: %v", err)
		}
	}
}

// TestFlushDuringRebuild flushes a set while Sync rebuilds it: the copy
// made from the older listing must not bring the flushed pins back.
func TestFlushDuringRebuild(t *testing.T) {
	st := twoServices()
	d, k := syncedFake(t, st)
	ctx := context.Background()
	for i := range 10 {
		mustPin(t, d, dataplane.Pin{Service: "web", Backend: "be1", Client: netip.AddrFrom4([4]byte{198, 18, 0, byte(i)})})
	}
	flushed := make(chan error, 1)
	k.onList = func() {
		go func() { flushed <- d.Flush(ctx, "web", "be1") }()
		time.Sleep(50 * time.Millisecond) // give a Flush that does not wait time to run
	}
	st.Services[0].MaxClients = 500
	mustSync(t, d, st)
	if err := <-flushed; err != nil {
		t.Fatal(err)
	}
	if n := fakeLen(k, "ho-web-be1"); n != 0 {
		t.Errorf("%d pins in ho-web-be1 after a Flush during its rebuild", n)
	}
}
