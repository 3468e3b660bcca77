package kernel

// Unit tests of the dispatch index and the mark tree, on the fake kernel.

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/dataplane"
)

// wideService is service web on 198.18.1.1:80 with n backends b0..b<n-1>
// at 198.19.<i/250>.<i%250+1>:8080.
func wideService(n int) dataplane.Service {
	s := svc("web", "198.18.1.1:80", time.Hour, false)
	s.MaxClients = 10000
	for i := range n {
		s.Backends = append(s.Backends, dataplane.Backend{
			Name:    fmt.Sprintf("b%d", i),
			Address: netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 19, byte(i / 250), byte(i%250 + 1)}), 8080),
		})
	}
	return s
}

var webVIP = netip.MustParseAddrPort("198.18.1.1:80")

// TestDispatchCost checks that a SYN of a client pinned to any backend of
// a service lands on that backend, and that the walk costs the same few
// rules and set lookups whatever the number of backends and the
// backend's place among them; an unpinned client's SYN costs one lookup
// and a handful of rules on its way to the listener.
func TestDispatchCost(t *testing.T) {
	worst := 0
	for _, n := range []int{1, 2, 15, 16, 17, 100, 256, 1000, 4094} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			d, k := newFakeDataplane(Options{})
			st := dataplane.State{Services: []dataplane.Service{wideService(n)}}
			mustSync(t, d, st)
			for i, be := range slices.Compact([]int{0, n / 2, n - 1}) {
				client := netip.AddrFrom4([4]byte{198, 18, 0, byte(10 + i)})
				mustPin(t, d, dataplane.Pin{Service: "web", Backend: fmt.Sprintf("b%d", be), Client: client})
				to, ok, err := k.synLands(client, webVIP)
				if err != nil || !ok || to != st.Services[0].Backends[be].Address {
					t.Fatalf("client of b%d lands at %v, %v, %v", be, to, ok, err)
				}
				// The index, then the pin set twice (refresh, DNAT) and the
				// refresh's add; at most 16 rules a level, 3 levels.
				if k.lastWalk.lookups != 4 || k.lastWalk.rules > 72 {
					t.Errorf("client of b%d: %d rules and %d set lookups, want at most 72 and 4", be, k.lastWalk.rules, k.lastWalk.lookups)
				}
				worst = max(worst, k.lastWalk.rules)
			}
			if _, ok, err := k.synLands(netip.MustParseAddr("198.18.0.99"), webVIP); ok || err != nil {
				t.Fatalf("unpinned client landed (%v, %v)", ok, err)
			}
			if k.lastWalk.lookups != 1 || k.lastWalk.rules > 8 {
				t.Errorf("unpinned client: %d rules and %d set lookups, want at most 8 and 1", k.lastWalk.rules, k.lastWalk.lookups)
			}
		})
	}
	t.Logf("the most rules a pinned SYN met: %d", worst)
}

// TestForwardCounting walks the later packets of kernel-forwarded
// connections through filter, both ways: each is accepted by its
// service's chain in one or two lookups of the counting set whatever the
// number of backends, and counted against its backend's entry, which is
// what Counters reports; what handoff accepted before the counting (every
// flow DNATed to the VIP) is accepted still, a removed backend's too;
// other flows are not touched. A service listening on every address
// accepts its backends' flows only.
func TestForwardCounting(t *testing.T) {
	for _, n := range []int{1, 17, 1000, 4094} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			any := svc("any", "0.0.0.0:25", time.Hour, false, "m0", "198.19.250.1:2525", "m1", "198.19.250.2:2525")
			any.MaxClients = 10
			st := dataplane.State{Services: []dataplane.Service{any, wideService(n)}}
			d, k := syncedFake(t, st)
			k.local[netip.MustParseAddr("198.18.1.9")] = true
			want := map[dataplane.BackendRef]Counter{}
			for i, be := range slices.Compact([]int{0, n / 2, n - 1}) {
				client := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 0, byte(10 + i)}), 40000)
				name := fmt.Sprintf("b%d", be)
				to := st.Services[1].Backends[be].Address
				for _, c := range []struct {
					reply   bool
					size    int
					by      string
					lookups int
				}{{false, 1500, "handoff web to backends", 1}, {true, 700, "handoff web from backends", 2}} {
					verdict, by, err := k.forwardLands(client, webVIP, to, c.reply, c.size)
					if err != nil || verdict != "ACCEPT" || by != c.by {
						t.Fatalf("a packet of %s's connection (reply %v): %q by %q (%v), want ACCEPT by %q", name, c.reply, verdict, by, err, c.by)
					}
					// FORWARD's jump, the rules of any and web, then the
					// chain's one or two.
					if k.lastWalk.rules > 3+c.lookups+1 || k.lastWalk.lookups != c.lookups {
						t.Errorf("a packet of %s's connection (reply %v) met %d rules and %d set lookups, want at most %d and %d",
							name, c.reply, k.lastWalk.rules, k.lastWalk.lookups, 3+c.lookups+1, c.lookups)
					}
				}
				want[dataplane.BackendRef{Service: "web", Backend: name}] = Counter{Bytes: 2200}
			}
			got, err := d.Counters(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			for ref, c := range got {
				if c != want[ref] {
					t.Errorf("Counters[%v] = %+v, want %+v", ref, c, want[ref])
				}
			}
			if len(got) != n+2 {
				t.Errorf("Counters has %d backends, want %d", len(got), n+2)
			}

			client := netip.MustParseAddrPort("198.18.0.50:40000")
			to := st.Services[1].Backends[n-1].Address
			// The last backend goes; a connection it still serves is
			// accepted, and not counted.
			st.Services[1].Backends = st.Services[1].Backends[:n-1]
			mustSync(t, d, st)
			for _, c := range []struct {
				desc        string
				vip, to     netip.AddrPort
				verdict, by string
			}{
				{"a removed backend's", webVIP, to, "ACCEPT", "handoff web other"},
				{"another VIP", netip.MustParseAddrPort("198.18.1.2:80"), to, "", ""},
				{"another port", netip.MustParseAddrPort("198.18.1.1:81"), to, "", ""},
				{"any: its backend m1", netip.MustParseAddrPort("198.18.1.9:25"), netip.MustParseAddrPort("198.19.250.2:2525"), "ACCEPT", "handoff any to backends"},
				{"any: not its backend", netip.MustParseAddrPort("198.18.1.9:25"), netip.MustParseAddrPort("198.19.250.3:2525"), "", ""},
				{"any: its backend's address, another port", netip.MustParseAddrPort("198.18.1.9:25"), netip.MustParseAddrPort("198.19.250.2:2526"), "", ""},
			} {
				for _, reply := range []bool{false, true} {
					verdict, by, err := k.forwardLands(client, c.vip, c.to, reply, 100)
					if err != nil || verdict != c.verdict || by != strings.Replace(c.by, " to ", map[bool]string{false: " to ", true: " from "}[reply], 1) {
						t.Errorf("%s (reply %v): %q by %q (%v), want %q by %q", c.desc, reply, verdict, by, err, c.verdict, c.by)
					}
				}
			}
		})
	}
}

// TestCountSetSync checks that Sync keeps the counting set of a service
// to its backends' addresses: a backend added gets an entry, one removed
// or moved loses its entry (a moved one counts afresh), one unchanged
// keeps its entry and its counters; a service removed loses its set. A
// set flushed or destroyed behind handoff's back is refilled by the
// canary.
func TestCountSetSync(t *testing.T) {
	ctx := context.Background()
	st := dataplane.State{Services: []dataplane.Service{
		svc("web", "198.18.1.1:80", time.Hour, false, "be1", "198.19.1.11:8080", "be2", "198.19.1.12:8080"),
		svc("web6", "[2001:2:0:1::1]:80", time.Hour, false, "a", "[2001:2:0:2::11]:8080"),
	}}
	d, k := syncedFake(t, st)
	entries := func(set string) []string {
		t.Helper()
		var out []string
		if err := (fakeSets{k}).list(set, func(m member) error {
			out = append(out, fmt.Sprintf("%s %d", netip.AddrPortFrom(m.ip, m.port), m.bytes))
			return nil
		}); err != nil {
			t.Fatalf("list %s: %v", set, err)
		}
		return out
	}
	check := func(set string, want ...string) {
		t.Helper()
		if got := entries(set); !slices.Equal(got, want) {
			t.Errorf("%s: %q, want %q", set, got, want)
		}
	}
	check("hoc-web", "198.19.1.11:8080 0", "198.19.1.12:8080 0")
	check("hoc6-web6", "[2001:2:0:2::11]:8080 0")
	client := netip.MustParseAddrPort("198.18.0.10:40000")
	for _, to := range []string{"198.19.1.11:8080", "198.19.1.12:8080"} {
		if v, _, err := k.forwardLands(client, webVIP, netip.MustParseAddrPort(to), false, 1000); v != "ACCEPT" || err != nil {
			t.Fatalf("to %s: %q (%v)", to, v, err)
		}
	}
	check("hoc-web", "198.19.1.11:8080 1000", "198.19.1.12:8080 1000")

	// A reload: be2 moves, be3 comes; be1 keeps its counters.
	st.Services[0].Backends[1].Address = netip.MustParseAddrPort("198.19.1.22:8080")
	st.Services[0].Backends = append(st.Services[0].Backends, dataplane.Backend{Name: "be3", Address: netip.MustParseAddrPort("198.19.1.13:8080")})
	mustSync(t, d, st)
	check("hoc-web", "198.19.1.11:8080 1000", "198.19.1.13:8080 0", "198.19.1.22:8080 0")
	got, err := d.Counters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c := got[dataplane.BackendRef{Service: "web", Backend: "be1"}]; c.Bytes != 1000 {
		t.Errorf("be1 after the reload: %+v, want its 1000 bytes", c)
	}
	if c := got[dataplane.BackendRef{Service: "web", Backend: "be2"}]; c.Bytes != 0 {
		t.Errorf("be2 moved: %+v, want no bytes", c)
	}
	// A Sync of the same state changes nothing.
	k.log = nil
	mustSync(t, d, st)
	if len(k.log) != 0 {
		t.Errorf("a no-op Sync: %q", k.log)
	}

	// Drift: the canary refills a flushed set, and makes a destroyed one
	// again (a rule refers to it, so the kernel refuses to destroy it
	// while the rules stand: the fake drops it as a restart of the
	// kernel's sets would).
	before := d.Repairs()
	if err := (fakeSets{k}).flush("hoc-web"); err != nil {
		t.Fatal(err)
	}
	k.mu.Lock()
	delete(k.sets, "hoc6-web6")
	k.mu.Unlock()
	d.checkCanary(ctx)
	check("hoc-web", "198.19.1.11:8080 0", "198.19.1.13:8080 0", "198.19.1.22:8080 0")
	check("hoc6-web6", "[2001:2:0:2::11]:8080 0")
	if d.Repairs() == before {
		t.Error("the canary repaired nothing")
	}

	// The service goes: its set goes too.
	st.Services = st.Services[1:]
	mustSync(t, d, st)
	k.mu.Lock()
	_, ok := k.sets["hoc-web"]
	k.mu.Unlock()
	if ok {
		t.Error("hoc-web outlived its service")
	}
}

// TestDispatchTooManyBackends checks that a service with more backends
// than the mark field numbers is refused, with a narrow mask too.
func TestDispatchTooManyBackends(t *testing.T) {
	d, _ := newFakeDataplane(Options{MarkMask: 0xf0})
	if err := d.Sync(context.Background(), dataplane.State{Services: []dataplane.Service{wideService(14)}}); err != nil {
		t.Fatalf("14 backends in 4 bits: %v", err)
	}
	err := d.Sync(context.Background(), dataplane.State{Services: []dataplane.Service{wideService(15)}})
	if err == nil || !strings.Contains(err.Error(), "at most 14") {
		t.Errorf("15 backends in 4 bits: %v, want an error", err)
	}
}

func TestMarkLayout(t *testing.T) {
	for _, c := range []struct {
		mask uint32
		err  string
		max  uint32
	}{
		{DefaultMarkMask, "", 4094},
		{0xf, "", 14},
		{0xff00, "", 254},
		{0, "is 0", 0},
		{0x7, "at least 4 bits", 0},
		{0xf0f0, "contiguous", 0},
	} {
		l, err := newMarkLayout(c.mask)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("newMarkLayout(%#x) = %v, want %q", c.mask, err, c.err)
			}
			continue
		}
		if err != nil || l.maxSlot() != c.max {
			t.Errorf("newMarkLayout(%#x) = %+v (max %d), %v; want max %d", c.mask, l, l.maxSlot(), err, c.max)
		}
	}
	l, _ := newMarkLayout(DefaultMarkMask)
	for opt, want := range map[string]uint32{
		"0x3e800000/0xfff00000": 1000,
		"0x100000/0xfff00000":   1,
		"0x100000/0xff000000":   0, // another mask: a tree node's, or another layout's
		"0x100001/0xfff00000":   0,
		"junk":                  0,
	} {
		if got := l.slotOf(opt); got != want {
			t.Errorf("slotOf(%q) = %d, want %d", opt, got, want)
		}
	}
}

// TestSlotsStable checks that a backend keeps its slot, and so its pinned
// clients, while others come and go, and that a slot freed and given to
// a new backend does not send the old backend's clients to it.
func TestSlotsStable(t *testing.T) {
	d, k := newFakeDataplane(Options{})
	st := dataplane.State{Services: []dataplane.Service{wideService(3)}}
	mustSync(t, d, st)
	c1, c2 := netip.MustParseAddr("198.18.0.11"), netip.MustParseAddr("198.18.0.12")
	mustPin(t, d, dataplane.Pin{Service: "web", Backend: "b1", Client: c1})
	mustPin(t, d, dataplane.Pin{Service: "web", Backend: "b2", Client: c2})

	// b1 goes; a new backend takes its slot; b2 stays where it was.
	st.Services[0].Backends = slices.Delete(st.Services[0].Backends, 1, 2)
	st.Services[0].Backends = append(st.Services[0].Backends, dataplane.Backend{Name: "new", Address: netip.MustParseAddrPort("198.19.9.9:8080")})
	mustSync(t, d, st)
	if got := d.slots["web"]; got["b2"] != 3 || got["new"] != 2 {
		t.Errorf("slots %v, want b2 kept at 3 and new at b1's freed 2", got)
	}
	if to, ok, err := k.synLands(c2, webVIP); err != nil || !ok || to.Port() != 8080 || to.Addr() != netip.MustParseAddr("198.19.0.3") {
		t.Errorf("b2's client lands at %v, %v, %v", to, ok, err)
	}
	if to, ok, err := k.synLands(c1, webVIP); ok || err != nil {
		t.Errorf("the removed b1's client landed at %v (%v): its stale index entry must miss the new backend's set", to, err)
	}
}

// TestRefreshKeepsIndex checks that in-kernel refreshes of a pin leave its
// index entry (the kernel's SET --add-set --exist resets an entry's mark,
// so the refresh must never touch the index).
func TestRefreshKeepsIndex(t *testing.T) {
	d, k := newFakeDataplane(Options{})
	mustSync(t, d, dataplane.State{Services: []dataplane.Service{wideService(20)}})
	c := netip.MustParseAddr("198.18.0.11")
	mustPin(t, d, dataplane.Pin{Service: "web", Backend: "b19", Client: c})
	for i := range 3 {
		if to, ok, err := k.synLands(c, webVIP); err != nil || !ok || to.Addr() != netip.MustParseAddr("198.19.0.20") {
			t.Fatalf("connection %d lands at %v, %v, %v", i, to, ok, err)
		}
	}
	if m := k.sets["hoi-web"].members[c].mark; m != defaultLayout.mark(20) {
		t.Errorf("index entry mark %+v after refreshes, want slot 20's", m)
	}
}

// TestRestartLearnsSlots checks that a new Dataplane on a kernel that a
// previous one set up learns the slots from its rules: it indexes nothing
// again, and the pinned clients land where they did.
func TestRestartLearnsSlots(t *testing.T) {
	d, k := newFakeDataplane(Options{})
	st := dataplane.State{Services: []dataplane.Service{wideService(40)}}
	// Slots not in list order: backends added over time.
	mustSync(t, d, dataplane.State{Services: []dataplane.Service{wideService(1)}})
	st2 := st
	st2.Services = []dataplane.Service{wideService(40)}
	st2.Services[0].Backends = append(st2.Services[0].Backends[39:], st2.Services[0].Backends[:39]...)
	mustSync(t, d, st2)
	c := netip.MustParseAddr("198.18.0.11")
	mustPin(t, d, dataplane.Pin{Service: "web", Backend: "b39", Client: c})
	want := d.slots["web"]["b39"]

	d2 := newDataplane(Options{Logger: quietLogger()}, fakeSets{k}, fakeFlows{k}, [2]iptables{fakeTables{k, ipv4}, fakeTables{k, ipv6}})
	batches := k.batches
	mustSync(t, d2, st)
	if got := d2.slots["web"]["b39"]; got != want {
		t.Errorf("after restart b39 has slot %d, want %d", got, want)
	}
	if k.batches != batches {
		t.Errorf("the restart indexed pins again (%d batches)", k.batches-batches)
	}
	if to, ok, err := k.synLands(c, webVIP); err != nil || !ok || to.Addr() != netip.MustParseAddr("198.19.0.40") {
		t.Errorf("after restart the client lands at %v, %v, %v", to, ok, err)
	}
}

// TestUpgradeFromPerBackendChains checks that the first Sync on a kernel
// set up by handoff before the index (per-backend sets walked one by one
// from HO-SVC-<svc>) keeps every pin and its backend: the pins are
// indexed before the rules switch.
func TestUpgradeFromPerBackendChains(t *testing.T) {
	k := newFakeKernel()
	sets := fakeSets{k}
	st := dataplane.State{Services: []dataplane.Service{wideService(3)}}
	old := "*nat\n:HANDOFF-PREROUTING - [0:0]\n:HO-SVC-web - [0:0]\n" +
		"-I PREROUTING 1 -m comment --comment \"handoff jump\" -j HANDOFF-PREROUTING\n" +
		"-A HANDOFF-PREROUTING -d 198.18.1.1/32 -p tcp -m tcp --dport 80 -m comment --comment \"handoff web service\" -j HO-SVC-web\n"
	clients := map[netip.Addr]int{}
	for i, b := range st.Services[0].Backends {
		set := dataplane.SetName("web", b.Name, false)
		if err := sets.create(set, setSpec{family: ipv4, timeout: 3600, maxelem: 1000}); err != nil {
			t.Fatal(err)
		}
		for j := range 5 {
			c := netip.AddrFrom4([4]byte{198, 18, byte(i + 1), byte(j + 1)})
			if err := sets.add(set, c, 0, 600, "src="+c.String(), false); err != nil {
				t.Fatal(err)
			}
			clients[c] = i
		}
		old += fmt.Sprintf("-A HO-SVC-web -p tcp -m set --match-set %s src -m comment --comment \"handoff web/%s dnat\" -j DNAT --to-destination %s\n", set, b.Name, b.Address)
	}
	if err := (fakeTables{k, ipv4}).restore(context.Background(), []byte(old+"COMMIT\n")); err != nil {
		t.Fatal(err)
	}
	for c, i := range clients {
		if to, ok, err := k.synLands(c, webVIP); err != nil || !ok || to != st.Services[0].Backends[i].Address {
			t.Fatalf("before the upgrade %s lands at %v, %v, %v", c, to, ok, err)
		}
	}

	d := newDataplane(Options{Logger: quietLogger()}, sets, fakeFlows{k}, [2]iptables{fakeTables{k, ipv4}, fakeTables{k, ipv6}})
	mustSync(t, d, st)
	for c, i := range clients {
		if to, ok, err := k.synLands(c, webVIP); err != nil || !ok || to != st.Services[0].Backends[i].Address {
			t.Errorf("after the upgrade %s lands at %v, %v, %v; want b%d", c, to, ok, err, i)
		}
		m := k.sets[dataplane.SetName("web", fmt.Sprintf("b%d", i), false)].members[c]
		if m.comment != "src="+c.String() || m.timeout == 0 { // the walks refreshed it
			t.Errorf("after the upgrade the pin of %s is %+v", c, m)
		}
	}
	if n := len(k.sets["hoi-web"].members); n != len(clients) {
		t.Errorf("index holds %d entries, want %d", n, len(clients))
	}
}

// TestFillSkipsNewerPins checks that indexing a backend's pins leaves the
// entry of a client pinned elsewhere during the listing alone.
func TestFillSkipsNewerPins(t *testing.T) {
	d, k := newFakeDataplane(Options{})
	st := dataplane.State{Services: []dataplane.Service{wideService(2)}}
	mustSync(t, d, st)
	c := netip.MustParseAddr("198.18.0.11")
	mustPin(t, d, dataplane.Pin{Service: "web", Backend: "b0", Client: c})
	// b0's slot is forgotten (as after an upgrade), so the next Sync
	// indexes its pins; meanwhile the client moves to b1.
	delete(d.slots["web"], "b0")
	k.onList = func() {
		mustPin(t, d, dataplane.Pin{Service: "web", Backend: "b1", Client: c})
		if err := d.Unpin(context.Background(), "web", "b0", c); err != nil {
			t.Error(err)
		}
	}
	mustSync(t, d, st)
	if to, ok, err := k.synLands(c, webVIP); err != nil || !ok || to.Addr() != netip.MustParseAddr("198.19.0.2") {
		t.Errorf("the moved client lands at %v, %v, %v; want b1", to, ok, err)
	}
}

// TestCollectIndexes checks that the entries of pins gone from their sets
// are collected once they outnumber the threshold, and that live ones
// stay.
func TestCollectIndexes(t *testing.T) {
	d, k := newFakeDataplane(Options{})
	mustSync(t, d, dataplane.State{Services: []dataplane.Service{wideService(2)}})
	var pins []dataplane.Pin
	for i := range gcMinStale + 100 {
		pins = append(pins, dataplane.Pin{Service: "web", Backend: fmt.Sprintf("b%d", i%2), Client: netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})})
	}
	if err := d.PinBatch(context.Background(), pins); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// Expire a few: below the threshold nothing is collected.
	for _, p := range pins[:10] {
		delete(k.sets[dataplane.SetName("web", p.Backend, false)].members, p.Client)
	}
	d.collectIndexes(ctx)
	if n := len(k.sets["hoi-web"].members); n != len(pins) {
		t.Fatalf("collected below the threshold: %d entries", n)
	}
	// Expire all but the last 50 (and one moved to the other backend
	// behind the index's back, whose entry is stale too).
	for _, p := range pins[10 : len(pins)-50] {
		delete(k.sets[dataplane.SetName("web", p.Backend, false)].members, p.Client)
	}
	moved := pins[len(pins)-1]
	other := map[string]string{"b0": "b1", "b1": "b0"}[moved.Backend]
	delete(k.sets[dataplane.SetName("web", moved.Backend, false)].members, moved.Client)
	k.sets[dataplane.SetName("web", other, false)].members[moved.Client] = member{ip: moved.Client}
	d.collectIndexes(ctx)
	if n := len(k.sets["hoi-web"].members); n != 49 {
		t.Errorf("index holds %d entries after collection, want the 49 live ones", n)
	}
	for _, p := range pins[len(pins)-50 : len(pins)-1] {
		if _, ok, err := k.synLands(p.Client, webVIP); !ok || err != nil {
			t.Fatalf("live pin of %s no longer lands (%v)", p.Client, err)
		}
	}
}

// TestHoldRule checks that the SYN of an unpinned client of a service that
// holds SYNs goes to the queue, and that a pinned client's does not.
func TestHoldRule(t *testing.T) {
	d, k := newFakeDataplane(Options{})
	s := wideService(20)
	s.HoldSYN = true
	other := svc("api", "198.18.1.2:443", time.Hour, false, "x", "198.19.1.13:443")
	mustSync(t, d, dataplane.State{Services: []dataplane.Service{s, other}})
	c := netip.MustParseAddr("198.18.0.11")
	if _, ok, err := k.synLands(c, webVIP); ok || err != nil || !k.lastWalk.held {
		t.Errorf("unpinned client of web: landed %v, held %v, %v; want held", ok, k.lastWalk.held, err)
	}
	if _, ok, err := k.synLands(c, netip.MustParseAddrPort("198.18.1.2:443")); ok || err != nil || k.lastWalk.held {
		t.Errorf("unpinned client of api (no hold): landed %v, held %v, %v; want the listener", ok, k.lastWalk.held, err)
	}
	mustPin(t, d, dataplane.Pin{Service: "web", Backend: "b19", Client: c})
	if to, ok, err := k.synLands(c, webVIP); !ok || err != nil || k.lastWalk.held || to.Addr() != netip.MustParseAddr("198.19.0.20") {
		t.Errorf("pinned client of web: %v, %v, held %v, %v", to, ok, k.lastWalk.held, err)
	}
	if !strings.Contains(k.tableText(ipv4, mangleTable), "-j NFQUEUE --queue-num 18511 --queue-bypass") {
		t.Errorf("mangle:\n%s", k.tableText(ipv4, mangleTable))
	}
}
