package kernel

// Root tests of Pins walking real sets, each in a fresh network namespace.

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/dataplane"
	"github.com/handoff-lb/handoff/internal/nstest"
	"github.com/handoff-lb/handoff/internal/testenv"
)

// perf reports whether the slow, large variants of tests are asked for.
func perf() bool { return testenv.Perf() }

// walkClient is the i'th client of the big walks: 2001:2:0:ff00::/64 + i.
func walkClient(i int) netip.Addr {
	return netip.AddrFrom16([16]byte{0x20, 0x01, 0, 2, 0, 0, 0xff, 0, 12: byte(i >> 24), 13: byte(i >> 16), 14: byte(i >> 8), 15: byte(i)})
}

// walkIndex inverts walkClient; ok is false for other addresses.
func walkIndex(a netip.Addr) (int, bool) {
	b, p := a.As16(), walkClient(0).As16()
	if !a.Is6() || [12]byte(b[:12]) != [12]byte(p[:12]) {
		return 0, false
	}
	return int(b[12])<<24 | int(b[13])<<16 | int(b[14])<<8 | int(b[15]), true
}

// walkTTL is the TTL the i'th client is pinned with.
func walkTTL(i int) time.Duration { return time.Duration(600+i%3000) * time.Second }

// walkKey appends the key the i'th client is pinned with to b[:0].
func walkKey(b []byte, i int) []byte {
	return strconv.AppendInt(append(b[:0], "src=walk-"...), int64(i), 10)
}

// fillWalkSet syncs service big (IPv6, TTL 1h) with one backend per sets
// entry, and pins sets[j] clients to backend be<j> in PinBatch chunks. It
// returns when it started pinning: remaining TTLs count from then.
func fillWalkSet(t testing.TB, d *Dataplane, sets ...int) time.Time {
	t.Helper()
	total := 0
	for _, n := range sets {
		total += n
	}
	svc := dataplane.Service{Name: "big", Listen: netip.MustParseAddrPort("[2001:2:0:fe00::1]:80"), ClientTTL: time.Hour, MaxClients: max(total, 1024)}
	for j := range sets {
		svc.Backends = append(svc.Backends, dataplane.Backend{Name: fmt.Sprintf("be%d", j), Address: netip.AddrPortFrom(nstest.Backend6(j), 8080)})
	}
	mustSync(t, d, dataplane.State{Services: []dataplane.Service{svc}})
	start := time.Now()
	batch := make([]dataplane.Pin, 0, 1<<16)
	var key []byte
	i := 0
	for j, n := range sets {
		for range n {
			key = walkKey(key, i)
			batch = append(batch, dataplane.Pin{Service: "big", Backend: fmt.Sprintf("be%d", j), Client: walkClient(i), Key: string(key), TTL: walkTTL(i)})
			i++
			if len(batch) == cap(batch) || i == total {
				if err := d.PinBatch(context.Background(), batch); err != nil {
					t.Fatalf("PinBatch: %v", err)
				}
				batch = batch[:0]
			}
		}
	}
	t.Logf("pinned %d clients in %v", total, time.Since(start).Round(time.Millisecond))
	return start
}

// TestNSPinsStreams walks a big set with Pins and checks that the walk's
// live heap stays small whatever the set's size (the pins stream from the
// kernel as fn takes them), and that every pin is seen once with its key
// and remaining TTL. HANDOFF_PERF=1 walks a set of 1,048,576 pins (the
// most one backend can hold) and 4 sets of 250,000.
func TestNSPinsStreams(t *testing.T) {
	nstest.RequireRoot(t)
	cases := []struct {
		name string
		sets []int
	}{{"one set of 200k", []int{200000}}}
	if perf() {
		cases = []struct {
			name string
			sets []int
		}{
			{"one set of 1M", []int{1 << 20}},
			{"4 sets of 250k", []int{250000, 250000, 250000, 250000}},
		}
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ns := nstest.New(t, "kw-")
			d, _ := newNSDataplane(t, ns, Options{})
			pinned := fillWalkSet(t, d, c.sets...)
			total := 0
			for _, n := range c.sets {
				total += n
			}

			// The walk's live heap: sampled with a GC every sampleEvery
			// pins. fn keeps nothing but a count per pin, allocated up
			// front.
			const sampleEvery = 10000
			seen := make([]uint8, total)
			var key []byte
			var ms runtime.MemStats
			live := func() uint64 {
				runtime.GC()
				runtime.ReadMemStats(&ms)
				return ms.HeapAlloc
			}
			base := live()
			peak := base
			n, bad := 0, 0
			start := time.Now()
			err := d.Pins(context.Background(), "big", "", func(p dataplane.Pin) error {
				n++
				if n%sampleEvery == 0 {
					peak = max(peak, live())
				}
				i, ok := walkIndex(p.Client)
				if !ok || i >= total {
					bad++
					if bad < 5 {
						t.Errorf("pin of unknown client %s", p.Client)
					}
					return nil
				}
				seen[i]++
				key = walkKey(key, i)
				// Remaining TTL: at most the TTL pinned with, and at least
				// that less the time since pinning (whole seconds).
				ttl := walkTTL(i)
				if p.Key != string(key) || p.TTL > ttl || p.TTL < ttl-time.Since(pinned)-time.Second || p.Service != "big" {
					bad++
					if bad < 5 {
						t.Errorf("pin %d = %+v, want key %q and TTL about %v", i, p, key, ttl)
					}
				}
				return nil
			})
			took := time.Since(start)
			peak = max(peak, live())
			if err != nil {
				t.Fatalf("Pins: %v", err)
			}
			growth := int64(peak) - int64(base)
			t.Logf("walked %d pins in %v; live heap grew by at most %d KiB (base %d KiB)", n, took.Round(time.Millisecond), growth>>10, base>>10)
			for i, s := range seen {
				if s != 1 {
					bad++
					if bad < 10 {
						t.Errorf("client %d (%s) seen %d times, want once", i, walkClient(i), s)
					}
				}
			}
			if n != total {
				t.Errorf("walked %d pins, want %d", n, total)
			}
			// A buffered walk holds every pin of a set: at 200,000 pins
			// that is more than 10 MiB.
			const limit = 2 << 20
			if growth > limit {
				t.Errorf("live heap grew by %.1f MiB during the walk of %d pins, want at most %.1f MiB", float64(growth)/(1<<20), total, float64(limit)/(1<<20))
			}

			// The process's peak RSS over a walk without forced GCs, for
			// the log (the race detector's shadow memory inflates it).
			if rss, ok := peakRSSGrowth(t, func() {
				if err := d.Pins(context.Background(), "big", "", func(dataplane.Pin) error { return nil }); err != nil {
					t.Errorf("Pins: %v", err)
				}
			}); ok {
				t.Logf("peak RSS grew by %.1f MiB during a plain walk of %d pins", float64(rss)/(1<<20), total)
			}
		})
	}
}

// peakRSSGrowth runs fn and returns how far the process's peak RSS
// (VmHWM, reset first) rose above its RSS before fn. ok is false where
// /proc cannot tell.
func peakRSSGrowth(t testing.TB, fn func()) (growth int64, ok bool) {
	t.Helper()
	status := func(field string) (int64, bool) {
		b, err := os.ReadFile("/proc/self/status")
		if err != nil {
			return 0, false
		}
		for l := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, field+":"); ok {
				kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				return kb << 10, err == nil
			}
		}
		return 0, false
	}
	runtime.GC()
	// 5 resets VmHWM to the current RSS (proc(5)).
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		return 0, false
	}
	before, ok1 := status("VmRSS")
	fn()
	peak, ok2 := status("VmHWM")
	return peak - before, ok1 && ok2
}

// blockedWalk starts a walk of service big's backend be that blocks in fn
// at its first pin until release is closed. It returns once fn blocks;
// the walk's error arrives on the channel.
func blockedWalk(t testing.TB, d *Dataplane, be string, release <-chan struct{}) <-chan error {
	t.Helper()
	blocked := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		first := true
		done <- d.Pins(context.Background(), "big", be, func(dataplane.Pin) error {
			if first {
				first = false
				close(blocked)
				<-release
			}
			return nil
		})
	}()
	select {
	case <-blocked:
	case err := <-done:
		t.Fatalf("Pins returned before blocking: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("Pins did not reach fn")
	}
	return done
}

// walkEnds waits up to 10 seconds for the walk blockedWalk started (what)
// to end with an error wrapping want.
func walkEnds(t testing.TB, done <-chan error, want error, what string) {
	t.Helper()
	select {
	case err := <-done:
		if !errors.Is(err, want) {
			t.Errorf("%s = %v, want an error wrapping %v", what, err, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s did not return", what)
	}
}

// TestNSPinsDuringSync checks that a walk blocked in fn neither blocks nor
// fails a Sync that must rebuild or destroy the walked set (the kernel
// refuses both while the set is listed): the Sync interrupts the walk.
func TestNSPinsDuringSync(t *testing.T) {
	_, d, _ := nsLab(t, "kw-", Options{})
	fillWalkSet(t, d, 5000, 5000) // a few datagrams each
	st := func(ttl time.Duration, backends int) dataplane.State {
		svc := dataplane.Service{Name: "big", Listen: netip.MustParseAddrPort("[2001:2:0:fe00::1]:80"), ClientTTL: ttl, MaxClients: 10000}
		for j := range backends {
			svc.Backends = append(svc.Backends, dataplane.Backend{Name: fmt.Sprintf("be%d", j), Address: netip.AddrPortFrom(nstest.Backend6(j), 8080)})
		}
		return dataplane.State{Services: []dataplane.Service{svc}}
	}
	ctx := context.Background()
	for _, c := range []struct {
		name string
		st   dataplane.State
		gone bool // the walked set goes
	}{
		{"rebuild", st(2*time.Hour, 2), false},
		{"destroy", st(2*time.Hour, 1), true},
	} {
		t.Run(c.name, func(t *testing.T) {
			release := make(chan struct{})
			done := blockedWalk(t, d, "be1", release)
			start := time.Now()
			err := d.Sync(ctx, c.st)
			close(release)
			if err != nil {
				t.Fatalf("Sync during a walk: %v", err)
			}
			t.Logf("Sync took %v", time.Since(start).Round(time.Millisecond))
			walkEnds(t, done, errListInterrupted, "interrupted Pins")
			names, err := d.sets.names()
			if err != nil {
				t.Fatal(err)
			}
			if got := slices.Contains(names, "ho6-big-be1"); got == c.gone {
				t.Errorf("set ho6-big-be1 exists = %v after Sync, want %v", got, !c.gone)
			}
			if !c.gone {
				counts, err := d.Count(ctx, "big")
				if err != nil || counts["be1"] != 5000 {
					t.Errorf("Count = %v, %v; want 5000 pins in be1 after the rebuild", counts, err)
				}
			}
		})
	}
}

// TestNSPinsNested checks that fn may call the Dataplane, Pins included,
// while the walk is in progress.
func TestNSPinsNested(t *testing.T) {
	_, d, _ := nsLab(t, "kw-", Options{})
	fillWalkSet(t, d, 3000, 2000)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	outer, inner := 0, 0
	moved := walkClient(4999) // in be1
	err := d.Pins(ctx, "big", "be0", func(p dataplane.Pin) error {
		outer++
		if outer != 10 {
			return nil
		}
		// Mid-walk: a walk of another set, and of the same one, and the
		// per-client calls.
		for _, be := range []string{"be1", "be0"} {
			if err := d.Pins(ctx, "big", be, func(dataplane.Pin) error { inner++; return nil }); err != nil {
				return fmt.Errorf("nested Pins of %s: %w", be, err)
			}
		}
		if err := d.Unpin(ctx, "big", "be1", moved); err != nil {
			return err
		}
		if err := d.Pin(ctx, dataplane.Pin{Service: "big", Backend: "be1", Client: moved, Key: "again"}); err != nil {
			return err
		}
		if _, ok, err := d.Lookup(ctx, "big", moved); err != nil || !ok {
			return fmt.Errorf("Lookup = %v, %v", ok, err)
		}
		if _, err := d.Count(ctx, "big"); err != nil {
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Pins: %v", err)
	}
	if outer != 3000 || inner != 5000 {
		t.Errorf("walked %d pins, and %d in the nested walks; want 3000 and 5000", outer, inner)
	}

	// fn's error ends the walk and comes back as is; the next walk works.
	stop := errors.New("stop")
	n := 0
	if err := d.Pins(ctx, "big", "", func(dataplane.Pin) error { n++; return stop }); err != stop || n != 1 {
		t.Errorf("Pins with failing fn = %v after %d pins, want %v after 1", err, n, stop)
	}
	n = 0
	if err := d.Pins(ctx, "big", "", func(dataplane.Pin) error { n++; return nil }); err != nil || n != 5000 {
		t.Errorf("Pins = %v after %d pins, want 5000", err, n)
	}
}

// TestNSPinsClose checks that Close ends a walk blocked in fn.
func TestNSPinsClose(t *testing.T) {
	_, d, _ := nsLab(t, "kw-", Options{})
	fillWalkSet(t, d, 5000)
	release := make(chan struct{})
	done := blockedWalk(t, d, "be0", release)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	close(release)
	walkEnds(t, done, errClosed, "Pins across Close")
}

// TestNSListErrors checks the listings of a missing set, and that a dump
// socket serves again after a failed or abandoned listing.
func TestNSListErrors(t *testing.T) {
	_, d, _ := nsLab(t, "kw-", Options{})
	fillWalkSet(t, d, 3000)
	s := d.sets.(*nlSets)
	for range 3 {
		if err := s.list("ho-nope", func(member) error { return nil }); !errors.Is(err, errNoSet) {
			t.Errorf("list of a missing set = %v, want %v", err, errNoSet)
		}
		if _, err := s.count("ho-nope"); !errors.Is(err, errNoSet) {
			t.Errorf("count of a missing set = %v, want %v", err, errNoSet)
		}
		stop := errors.New("stop")
		if err := s.list("ho6-big-be0", func(member) error { return stop }); err != stop {
			t.Errorf("list with failing fn = %v, want %v", err, stop)
		}
		n := 0
		if err := s.list("ho6-big-be0", func(member) error { n++; return nil }); err != nil || n != 3000 {
			t.Errorf("list = %v after %d members, want 3000", err, n)
		}
		if c, err := s.count("ho6-big-be0"); err != nil || c != 3000 {
			t.Errorf("count = %d, %v; want 3000", c, err)
		}
	}
	s.dumps.mu.Lock()
	idle, busy := len(s.dumps.idle), len(s.dumps.busy)
	s.dumps.mu.Unlock()
	if idle > maxIdleDumps || busy != 0 {
		t.Errorf("%d idle and %d busy dump sockets after the listings, want at most %d and 0", idle, busy, maxIdleDumps)
	}
}
