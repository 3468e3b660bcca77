package fallback_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/handoff-lb/handoff/dataplane"
	"github.com/handoff-lb/handoff/fallback"
)

// clock is a fake wall clock for Options.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// table is one affinity table under test with its fake clock and log.
type table struct {
	t    *testing.T
	dp   *fallback.Dataplane
	clk  *clock
	logs *logtest.Hook
}

type tableOptions struct {
	dir string
	clk *clock
}

func newTable(t *testing.T, o tableOptions) *table {
	t.Helper()
	logger, hook := logtest.NewNullLogger()
	logger.SetLevel(logrus.DebugLevel)
	if o.clk == nil {
		o.clk = newClock()
	}
	dp, err := fallback.New(fallback.Options{StateDir: o.dir, Logger: logrus.NewEntry(logger), Now: o.clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	tb := &table{t: t, dp: dp, clk: o.clk, logs: hook}
	t.Cleanup(func() { dp.Close() })
	return tb
}

// newSaving opens a Dataplane on real time that saves its state to dir
// every interval, closed when the test ends.
func newSaving(t *testing.T, dir string, interval time.Duration) *fallback.Dataplane {
	t.Helper()
	logger, _ := logtest.NewNullLogger()
	dp, err := fallback.New(fallback.Options{StateDir: dir, SaveInterval: interval, Logger: logrus.NewEntry(logger)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	return dp
}

// webState declares service "web" (and "api") with backends be1, be2.
func webState(ttl time.Duration, maxClients int, backends ...string) dataplane.State {
	if len(backends) == 0 {
		backends = []string{"be1", "be2"}
	}
	var bes []dataplane.Backend
	for i, b := range backends {
		bes = append(bes, dataplane.Backend{Name: b, Address: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 19, 1, byte(10 + i)}), 80)})
	}
	return dataplane.State{Services: []dataplane.Service{
		{Name: "web", ClientTTL: ttl, MaxClients: maxClients, Backends: bes},
		{Name: "api", ClientTTL: time.Hour, Backends: []dataplane.Backend{{Name: "be1"}}},
	}}
}

func (tb *table) sync(s dataplane.State) {
	tb.t.Helper()
	if err := tb.dp.Sync(context.Background(), s); err != nil {
		tb.t.Fatalf("Sync: %v", err)
	}
}

func (tb *table) pin(client, backend string, ttl time.Duration) error {
	return tb.dp.Pin(context.Background(), dataplane.Pin{
		Service: "web", Backend: backend, Client: netip.MustParseAddr(client), Key: "src=" + client, TTL: ttl,
	})
}

func (tb *table) mustPin(client, backend string, ttl time.Duration) {
	tb.t.Helper()
	if err := tb.pin(client, backend, ttl); err != nil {
		tb.t.Fatalf("Pin %s → %s: %v", client, backend, err)
	}
}

// lookup returns the backend client is pinned to ("" for none) and the TTL.
func (tb *table) lookup(client string) (string, time.Duration) {
	tb.t.Helper()
	p, ok, err := tb.dp.Lookup(context.Background(), "web", netip.MustParseAddr(client))
	if err != nil {
		tb.t.Fatalf("Lookup %s: %v", client, err)
	}
	if !ok {
		return "", 0
	}
	return p.Backend, p.TTL
}

func (tb *table) wantLookup(client, backend string) {
	tb.t.Helper()
	if got, _ := tb.lookup(client); got != backend {
		tb.t.Fatalf("Lookup %s = %q, want %q", client, got, backend)
	}
}

// pins lists "client→backend ttl" for every pin of web (backend "" = all).
func (tb *table) pins(backend string) []string {
	tb.t.Helper()
	var out []string
	err := tb.dp.Pins(context.Background(), "web", backend, func(p dataplane.Pin) error {
		out = append(out, fmt.Sprintf("%s→%s %v", p.Client, p.Backend, p.TTL))
		return nil
	})
	if err != nil {
		tb.t.Fatalf("Pins: %v", err)
	}
	sort.Strings(out)
	return out
}

func (tb *table) wantPins(backend string, want ...string) {
	tb.t.Helper()
	got := tb.pins(backend)
	if strings.Join(got, ",") != strings.Join(want, ",") {
		tb.t.Fatalf("Pins(%q) = %q, want %q", backend, got, want)
	}
}

func TestAffinity(t *testing.T) {
	const ttl = 30 * time.Minute
	tests := []struct {
		name  string
		ttl   time.Duration // the service's ClientTTL
		max   int
		steps func(tb *table)
	}{
		{"pin then lookup", ttl, 0, func(tb *table) {
			tb.mustPin("198.18.0.1", "be1", 0)
			if be, got := tb.lookup("198.18.0.1"); be != "be1" || got != ttl {
				tb.t.Fatalf("Lookup = %s %v, want be1 %v", be, got, ttl)
			}
			tb.wantLookup("198.18.0.2", "")
		}},
		{"expires after ClientTTL", ttl, 0, func(tb *table) {
			tb.mustPin("198.18.0.1", "be1", 0)
			tb.clk.Advance(ttl - time.Second)
			tb.wantPins("", "198.18.0.1→be1 1s")
			tb.clk.Advance(time.Second)
			tb.wantPins("")
			tb.wantLookup("198.18.0.1", "")
		}},
		{"lookup refreshes like a new connection", ttl, 0, func(tb *table) {
			tb.mustPin("198.18.0.1", "be1", 0)
			tb.clk.Advance(20 * time.Minute)
			tb.wantLookup("198.18.0.1", "be1")
			tb.clk.Advance(20 * time.Minute) // 40m after the pin, 20m after the connection
			tb.wantPins("", "198.18.0.1→be1 10m0s")
			tb.wantLookup("198.18.0.1", "be1")
			tb.clk.Advance(ttl)
			tb.wantLookup("198.18.0.1", "")
		}},
		{"explicit TTL, then refresh to ClientTTL", ttl, 0, func(tb *table) {
			tb.mustPin("198.18.0.1", "be1", time.Minute)
			tb.clk.Advance(59 * time.Second)
			tb.wantPins("", "198.18.0.1→be1 1s")
			tb.wantLookup("198.18.0.1", "be1") // SET --exist --timeout ClientTTL
			tb.wantPins("", "198.18.0.1→be1 30m0s")
		}},
		{"ClientTTL 0 never expires", 0, 0, func(tb *table) {
			tb.mustPin("198.18.0.1", "be1", 0)
			tb.clk.Advance(10000 * time.Hour)
			tb.wantPins("", "198.18.0.1→be1 0s")
			if be, got := tb.lookup("198.18.0.1"); be != "be1" || got != 0 {
				tb.t.Fatalf("Lookup = %s %v, want be1 0s", be, got)
			}
		}},
		{"re-pin replaces key and expiry", ttl, 0, func(tb *table) {
			tb.mustPin("198.18.0.1", "be1", time.Minute)
			tb.mustPin("198.18.0.1", "be1", 0)
			tb.wantPins("be1", "198.18.0.1→be1 30m0s")
		}},
		{"pinning elsewhere moves the client", ttl, 1, func(tb *table) {
			tb.mustPin("198.18.0.1", "be1", 0)
			tb.mustPin("198.18.0.1", "be2", 0)
			tb.wantLookup("198.18.0.1", "be2")
			tb.wantPins("be1")
			tb.wantPins("be2", "198.18.0.1→be2 30m0s")
			tb.mustPin("198.18.0.2", "be1", 0) // the move freed be1's only slot
		}},
		{"IPv4-mapped clients are unmapped", ttl, 0, func(tb *table) {
			tb.mustPin("::ffff:198.18.0.1", "be1", 0)
			tb.wantLookup("198.18.0.1", "be1")
			tb.wantLookup("::ffff:198.18.0.1", "be1")
			tb.mustPin("2001:db8::1", "be2", 0)
			tb.wantLookup("2001:db8::1", "be2")
		}},
		{"max clients per backend", ttl, 2, func(tb *table) {
			tb.mustPin("198.18.0.1", "be1", 0)
			tb.mustPin("198.18.0.2", "be1", 0)
			err := tb.pin("198.18.0.3", "be1", 0)
			if !errors.Is(err, dataplane.ErrFull) {
				tb.t.Fatalf("Pin into a full backend: %v, want ErrFull", err)
			}
			if n := tb.dp.Refused(); n != 1 {
				tb.t.Fatalf("Refused() = %d, want 1", n)
			}
			tb.mustPin("198.18.0.3", "be2", 0) // other backends have their own limit
			tb.mustPin("198.18.0.1", "be1", 0) // replacing is not adding
			if err := tb.pin("198.18.0.3", "be1", 0); !errors.Is(err, dataplane.ErrFull) {
				tb.t.Fatalf("moving into a full backend: %v, want ErrFull", err)
			}
			tb.wantLookup("198.18.0.3", "be2") // a refused move keeps the old pin
			if err := tb.dp.Unpin(context.Background(), "web", "be1", netip.MustParseAddr("198.18.0.2")); err != nil {
				tb.t.Fatal(err)
			}
			tb.mustPin("198.18.0.3", "be1", 0)
			if n := tb.dp.Refused(); n != 2 {
				tb.t.Fatalf("Refused() = %d, want 2", n)
			}
		}},
		{"expired pins make room in a full backend", ttl, 1, func(tb *table) {
			tb.mustPin("198.18.0.1", "be1", 0)
			tb.clk.Advance(ttl)
			tb.mustPin("198.18.0.2", "be1", 0)
			tb.wantPins("be1", "198.18.0.2→be1 30m0s")
		}},
		{"unknown service or backend", ttl, 0, func(tb *table) {
			ctx, c := context.Background(), netip.MustParseAddr("198.18.0.1")
			errs := map[string]error{
				"Pin backend":   tb.pin("198.18.0.1", "nope", 0),
				"Pin service":   tb.dp.Pin(ctx, dataplane.Pin{Service: "nope", Backend: "be1", Client: c}),
				"Unpin":         tb.dp.Unpin(ctx, "nope", "be1", c),
				"Unpin backend": tb.dp.Unpin(ctx, "web", "nope", c),
				"Pins":          tb.dp.Pins(ctx, "nope", "", nil),
				"Pins backend":  tb.dp.Pins(ctx, "web", "nope", nil),
			}
			_, _, errs["Lookup"] = tb.dp.Lookup(ctx, "nope", c)
			for op, err := range errs {
				if !errors.Is(err, dataplane.ErrUnknown) {
					tb.t.Errorf("%s: %v, want ErrUnknown", op, err)
				}
			}
		}},
		{"unpin", ttl, 0, func(tb *table) {
			ctx, c := context.Background(), netip.MustParseAddr("198.18.0.1")
			tb.mustPin("198.18.0.1", "be1", 0)
			if err := tb.dp.Unpin(ctx, "web", "be2", c); err != nil {
				tb.t.Fatal(err)
			}
			tb.wantLookup("198.18.0.1", "be1") // pinned elsewhere: untouched
			if err := tb.dp.Unpin(ctx, "web", "", c); err != nil {
				tb.t.Fatal(err)
			}
			tb.wantLookup("198.18.0.1", "")
			if err := tb.dp.Unpin(ctx, "web", "be1", c); err != nil {
				tb.t.Fatalf("Unpin of an absent pin: %v", err)
			}
		}},
		{"services are separate", ttl, 0, func(tb *table) {
			tb.mustPin("198.18.0.1", "be1", 0)
			_, ok, err := tb.dp.Lookup(context.Background(), "api", netip.MustParseAddr("198.18.0.1"))
			if ok || err != nil {
				tb.t.Fatalf("Lookup in another service = %v, %v", ok, err)
			}
		}},
		{"Pins stops at fn's error", ttl, 0, func(tb *table) {
			tb.mustPin("198.18.0.1", "be1", 0)
			tb.mustPin("198.18.0.2", "be2", 0)
			stop, calls := errors.New("stop"), 0
			err := tb.dp.Pins(context.Background(), "web", "", func(dataplane.Pin) error { calls++; return stop })
			if err != stop || calls != 1 {
				tb.t.Fatalf("Pins = %v after %d calls, want stop after 1", err, calls)
			}
		}},
		{"Forget has no flows to drop", ttl, 0, func(tb *table) {
			tb.mustPin("198.18.0.1", "be1", 0)
			if n, err := tb.dp.Forget(context.Background(), "web", "be1"); n != 0 || err != nil {
				tb.t.Fatalf("Forget = %d, %v", n, err)
			}
			tb.wantLookup("198.18.0.1", "be1")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tb := newTable(t, tableOptions{})
			tb.sync(webState(tt.ttl, tt.max))
			tt.steps(tb)
		})
	}
}

func TestAffinityBeforeFirstSync(t *testing.T) {
	tb := newTable(t, tableOptions{})
	if err := tb.pin("198.18.0.1", "be1", 0); !errors.Is(err, dataplane.ErrUnknown) {
		t.Fatalf("Pin before Sync: %v, want ErrUnknown", err)
	}
}

func TestAffinityFullIsLoggedRateLimited(t *testing.T) {
	tb := newTable(t, tableOptions{})
	tb.sync(webState(time.Hour, 1))
	tb.mustPin("198.18.0.1", "be1", 0)
	for i := 2; i < 12; i++ {
		if err := tb.pin(fmt.Sprintf("198.18.0.%d", i), "be1", 0); !errors.Is(err, dataplane.ErrFull) {
			t.Fatalf("pin %d: %v", i, err)
		}
	}
	tb.clk.Advance(time.Minute)
	if err := tb.pin("198.18.0.99", "be1", 0); !errors.Is(err, dataplane.ErrFull) {
		t.Fatal(err)
	}
	var warned []logrus.Fields
	for _, e := range tb.logs.AllEntries() {
		if e.Level == logrus.WarnLevel {
			warned = append(warned, e.Data)
		}
	}
	if len(warned) != 2 || warned[0]["backend"] != "be1" || warned[1]["refused"] != uint64(10) {
		t.Fatalf("warnings = %v, want 2: the first refusal, then one counting the 10 since", warned)
	}
	if n := tb.dp.Refused(); n != 11 {
		t.Fatalf("Refused() = %d, want 11", n)
	}
}

func TestAffinitySync(t *testing.T) {
	tb := newTable(t, tableOptions{})
	tb.sync(webState(time.Hour, 0))
	tb.mustPin("198.18.0.1", "be1", 0)
	tb.mustPin("198.18.0.2", "be2", 0)
	ctx := context.Background()
	if err := tb.dp.Pin(ctx, dataplane.Pin{Service: "api", Backend: "be1", Client: netip.MustParseAddr("198.18.0.3")}); err != nil {
		t.Fatal(err)
	}

	tb.sync(webState(time.Hour, 0)) // the same state again changes nothing
	tb.wantPins("", "198.18.0.1→be1 1h0m0s", "198.18.0.2→be2 1h0m0s")

	tb.sync(webState(2*time.Hour, 0, "be1", "be3")) // be2 removed, TTL changed
	tb.wantPins("", "198.18.0.1→be1 1h0m0s")
	tb.wantLookup("198.18.0.1", "be1")
	tb.wantPins("", "198.18.0.1→be1 2h0m0s")
	if !tb.logged("dropped pins", "be2") {
		t.Errorf("dropping be2's pins was not logged: %v", tb.logs.AllEntries())
	}

	tb.sync(webState(time.Hour, 0)) // be2 back: its old pins stay gone
	tb.wantPins("be2")

	only := webState(time.Hour, 0)
	only.Services = only.Services[:1] // api removed
	tb.sync(only)
	_, _, err := tb.dp.Lookup(ctx, "api", netip.MustParseAddr("198.18.0.3"))
	if !errors.Is(err, dataplane.ErrUnknown) {
		t.Fatalf("Lookup in a removed service: %v", err)
	}
	only.Services = append(only.Services, webState(0, 0).Services[1])
	tb.sync(only)
	if _, ok, _ := tb.dp.Lookup(ctx, "api", netip.MustParseAddr("198.18.0.3")); ok {
		t.Fatal("pin of a removed service came back")
	}

	dup := webState(time.Hour, 0, "be1", "be1")
	if err := tb.dp.Sync(ctx, dup); err == nil {
		t.Fatal("Sync accepted a backend declared twice")
	}
	tb.wantLookup("198.18.0.1", "be1") // a refused Sync changes nothing
}

func (tb *table) logged(msg, backend string) bool {
	for _, e := range tb.logs.AllEntries() {
		if strings.Contains(e.Message, msg) && e.Data["backend"] == backend {
			return true
		}
	}
	return false
}

func TestAffinityPersistence(t *testing.T) {
	dir := t.TempDir()
	clk := newClock()
	tb := newTable(t, tableOptions{dir: dir, clk: clk})
	s := webState(time.Hour, 0, "be1", "be2")
	s.Services[1].ClientTTL = 0 // api pins never expire
	tb.sync(s)
	tb.mustPin("198.18.0.1", "be1", 0)
	tb.mustPin("2001:db8::1", "be2", 0)
	tb.mustPin("198.18.0.3", "be1", time.Minute) // expired by the restart
	ctx := context.Background()
	if err := tb.dp.Pin(ctx, dataplane.Pin{Service: "api", Backend: "be1", Client: netip.MustParseAddr("198.18.0.4"), Key: `sni="x"\n`}); err != nil {
		t.Fatal(err)
	}
	if err := tb.dp.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	assertOnlyStateFile(t, dir)
	var f map[string]any
	if b, err := os.ReadFile(filepath.Join(dir, fallback.StateFile)); err != nil || json.Unmarshal(b, &f) != nil {
		t.Fatalf("state file is not JSON: %v", err)
	}

	// A save that a kill interrupted left its temporary file; the restart
	// removes it, and nothing else.
	stale := filepath.Join(dir, fallback.StateFile+".tmp-4242")
	other := filepath.Join(dir, "notes.txt")
	for _, p := range []string{stale, other} {
		if err := os.WriteFile(p, []byte("half a save"), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	// Restart 10 minutes later. The pins wait for the first Sync.
	clk.Advance(10 * time.Minute)
	tb2 := newTable(t, tableOptions{dir: dir, clk: clk})
	if _, err := os.Stat(stale); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the interrupted save's temporary file survived the restart: %v", err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Fatalf("a file that is not the table's was touched: %v", err)
	}
	os.Remove(other)
	if _, _, err := tb2.dp.Lookup(ctx, "web", netip.MustParseAddr("198.18.0.1")); !errors.Is(err, dataplane.ErrUnknown) {
		t.Fatalf("Lookup before the first Sync: %v", err)
	}
	tb2.sync(webState(time.Hour, 0, "be1")) // be2 no longer declared
	tb2.wantPins("", "198.18.0.1→be1 50m0s")
	var api []dataplane.Pin
	tb2.dp.Pins(ctx, "api", "", func(p dataplane.Pin) error { api = append(api, p); return nil })
	if len(api) != 1 || api[0].TTL != 0 || api[0].Key != `sni="x"\n` {
		t.Fatalf("api pins after restart = %+v", api)
	}
	tb2.sync(webState(time.Hour, 0, "be1", "be2"))
	tb2.wantPins("be2") // dropped at the first Sync, not resurrected
}

// A daemon that stops before its first Sync writes the loaded pins back.
func TestAffinityCloseBeforeSyncKeepsPins(t *testing.T) {
	dir := t.TempDir()
	clk := newClock()
	tb := newTable(t, tableOptions{dir: dir, clk: clk})
	tb.sync(webState(time.Hour, 0))
	tb.mustPin("198.18.0.1", "be1", 0)
	tb.dp.Close()

	tb2 := newTable(t, tableOptions{dir: dir, clk: clk})
	if err := tb2.dp.Close(); err != nil {
		t.Fatal(err)
	}
	tb3 := newTable(t, tableOptions{dir: dir, clk: clk})
	tb3.sync(webState(time.Hour, 0))
	tb3.wantLookup("198.18.0.1", "be1")
}

func TestAffinityPeriodicSave(t *testing.T) {
	dir := t.TempDir()
	dp := newSaving(t, dir, 20*time.Millisecond)
	if err := dp.Sync(context.Background(), webState(time.Hour, 0)); err != nil {
		t.Fatal(err)
	}
	if err := dp.Pin(context.Background(), dataplane.Pin{Service: "web", Backend: "be1", Client: netip.MustParseAddr("198.18.0.1")}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, _ := os.ReadFile(filepath.Join(dir, fallback.StateFile))
		if strings.Contains(string(b), `"198.18.0.1"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the pin was not saved periodically")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestAffinityCorruptStateFile(t *testing.T) {
	tests := []struct{ name, content string }{
		{"garbage", "\x00\x01not json"},
		{"truncated", `{"version":1,"pins":[{"service":"web","backend":"be1","client":"198.18.0.1"`},
		{"wrong version", `{"version":99,"pins":[]}`},
		{"bad client", `{"version":1,"pins":[{"service":"web","backend":"be1","client":"198.18.0.999"}]}`},
		{"missing client", `{"version":1,"pins":[{"service":"web","backend":"be1"}]}`},
		{"trailing data", `{"version":1,"pins":[]} {}`},
		{"empty", ``},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, fallback.StateFile)
			if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			tb := newTable(t, tableOptions{dir: dir})
			tb.sync(webState(time.Hour, 0))
			tb.wantPins("")
			aside, _ := filepath.Glob(path + ".corrupt-*")
			if len(aside) != 1 {
				t.Fatalf("corrupt file moved to %v, want one file", aside)
			}
			if b, _ := os.ReadFile(aside[0]); string(b) != tt.content {
				t.Fatalf("moved-aside file changed")
			}
			if !tb.hasError() {
				t.Fatalf("corruption not logged as an error")
			}
			tb.mustPin("198.18.0.1", "be1", 0) // and the table works
		})
	}
}

func (tb *table) hasError() bool {
	for _, e := range tb.logs.AllEntries() {
		if e.Level == logrus.ErrorLevel {
			return true
		}
	}
	return false
}

// assertOnlyStateFile checks that a save left no temporary files behind.
func assertOnlyStateFile(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 || ents[0].Name() != fallback.StateFile {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Fatalf("state dir holds %v, want only %s", names, fallback.StateFile)
	}
}

// TestAffinityConcurrent runs Pin, Lookup, Unpin, Pins, Sync and saves at
// once, for the race detector, then checks the limits held.
func TestAffinityConcurrent(t *testing.T) {
	const max = 50
	dir := t.TempDir()
	dp := newSaving(t, dir, 5*time.Millisecond)
	ctx := context.Background()
	if err := dp.Sync(ctx, webState(time.Hour, max, "be1", "be2", "be3")); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for range 3000 {
				c := netip.AddrFrom4([4]byte{198, 18, byte(r.IntN(2)), byte(r.IntN(200))})
				be := []string{"be1", "be2", "be3"}[r.IntN(3)]
				switch n := r.IntN(10); {
				case n < 3:
					err := dp.Pin(ctx, dataplane.Pin{Service: "web", Backend: be, Client: c, TTL: time.Duration(r.IntN(3)) * time.Millisecond})
					if err != nil && !errors.Is(err, dataplane.ErrFull) && !errors.Is(err, dataplane.ErrUnknown) {
						t.Error(err)
					}
				case n < 8:
					if _, _, err := dp.Lookup(ctx, "web", c); err != nil {
						t.Error(err)
					}
				case n < 9:
					dp.Unpin(ctx, "web", "", c)
				default:
					dp.Pins(ctx, "web", be, func(dataplane.Pin) error { return nil })
				}
			}
		})
	}
	wg.Go(func() {
		for i := range 50 {
			bes := []string{"be1", "be2", "be3"}
			if i%2 == 1 {
				bes = bes[:2]
			}
			if err := dp.Sync(ctx, webState(time.Hour, max, bes...)); err != nil {
				t.Error(err)
			}
			time.Sleep(time.Millisecond)
		}
	})
	wg.Wait()
	if err := dp.Sync(ctx, webState(time.Hour, max, "be1", "be2", "be3")); err != nil {
		t.Fatal(err)
	}
	for _, be := range []string{"be1", "be2", "be3"} {
		n := 0
		dp.Pins(ctx, "web", be, func(dataplane.Pin) error { n++; return nil })
		if n > max {
			t.Errorf("%s holds %d pins, max %d", be, n, max)
		}
	}
	if err := fallback.CheckCounts(dp); err != nil {
		t.Error(err)
	}
	seen := map[netip.Addr]bool{}
	dp.Pins(ctx, "web", "", func(p dataplane.Pin) error {
		if seen[p.Client] {
			t.Errorf("%s pinned twice", p.Client)
		}
		seen[p.Client] = true
		return nil
	})
}
