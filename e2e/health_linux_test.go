package e2e

// Scenarios of health checks and migration (issue 5): backends that are
// real processes killed with SIGKILL, and the kernel state read back with
// ipset and conntrack.

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Health timing of every scenario: interval 200ms, rise 2, fall 2. A
// transition must be complete within rise|fall × interval + 1s (the issue's
// bound).
const (
	checkInterval = 200 * time.Millisecond
	checkRise     = 2
	checkFall     = 2
	downBound     = checkFall*checkInterval + time.Second
	upBound       = checkRise*checkInterval + time.Second
)

// tcpHealth is the health block of the kill scenarios.
var tcpHealth = fmt.Sprintf("health: {check: tcp, interval: %s, timeout: %s, rise: %d, fall: %d}", checkInterval, checkInterval, checkRise, checkFall)

// pinAll gives every client its backend and returns it. In kernel mode
// (the services classify by source) the first SYN is held until the client
// is pinned, and the first connection reaches a backend in-kernel, seeing
// the client's own address.
func (l *lab) pinAll(t *testing.T, d *daemon, clients []netip.Addr, vip netip.AddrPort, kernel bool) map[netip.Addr]string {
	t.Helper()
	home := map[netip.Addr]string{}
	for _, c := range clients {
		g, err := l.greet(c, vip)
		if err != nil {
			t.Fatalf("client %s: %v\n%s", c, err, d.log())
		}
		if kernel && g.seen != c.String() {
			t.Fatalf("client %s: %s, want the client's address (in-kernel)", c, g)
		}
		home[c] = g.backend
	}
	return home
}

// clientsOf returns the clients whose home is backend, in address order.
func clientsOf(home map[netip.Addr]string, backend string) []netip.Addr {
	var cs []netip.Addr
	for c, b := range home {
		if b == backend {
			cs = append(cs, c)
		}
	}
	slices.SortFunc(cs, netip.Addr.Compare)
	return cs
}

// transition waits (at most within after start) for the balancer's log
// line of a health transition, the one carrying the outcome field (moved or
// moved_back), and checks that it is logged once, with a reason and a
// duration.
func (d *daemon) transition(t *testing.T, start time.Time, within time.Duration, msg, outcome string, want ...string) map[string]string {
	t.Helper()
	waitUntil(t, start, within, fmt.Sprintf("log %q %v", msg, want), func() bool { return len(d.lines(msg, want...)) > 0 })
	evs := d.waitLines(0, 1, msg, want...)
	if len(evs) != 1 || evs[0][outcome] == "" {
		t.Fatalf("%q %v logged %d times with %s, want once:\n%v", msg, want, len(evs), outcome, evs)
	}
	ev := evs[0]
	for _, k := range []string{"service", "backend", "reason", outcome, "took"} {
		if ev[k] == "" {
			t.Errorf("%q %v: no %s in %v", msg, want, k, ev)
		}
	}
	return ev
}

// down and up are transition for a backend of web going down and up.
func (d *daemon) down(t *testing.T, start time.Time, backend string) map[string]string {
	t.Helper()
	return d.transition(t, start, downBound, "backend down", "moved", "service", "web", "backend", backend)
}

func (d *daemon) up(t *testing.T, start time.Time, backend string) map[string]string {
	t.Helper()
	return d.transition(t, start, upBound, "backend up", "moved_back", "service", "web", "backend", backend)
}

// wantNoFlows checks that no conntrack entry of a flow to vip points at be:
// a dead backend's flows are cut at once.
func (l *lab) wantNoFlows(t *testing.T, vip netip.AddrPort, be backend) {
	t.Helper()
	if f := flowsTo(t, l.LB, vip, be.addr); len(f) != 0 {
		t.Errorf("conntrack entries still point at %s:\n%s", be.name, strings.Join(f, "\n"))
	}
}

// wantCount checks the numeric field k of a transition's log line.
func wantCount(t *testing.T, ev map[string]string, k string, want int) {
	t.Helper()
	if n := intField(t, ev, k); n != want {
		t.Errorf("%s: %s=%d, want %d", ev["msg"], k, n, want)
	}
}

// intField parses a numeric log field.
func intField(t *testing.T, ev map[string]string, k string) int {
	t.Helper()
	n, err := strconv.Atoi(ev[k])
	if err != nil {
		t.Fatalf("log field %s=%q: %v", k, ev[k], err)
	}
	return n
}

// TestHealthKillRehash: kill -9 one backend's server process of three.
// Within fall × interval + 1s its set is empty; its clients are in the sets
// of the healthy backends and reach them in-kernel (the listener does not
// see them again); the conntrack entries of its long-lived flows are gone;
// the other clients did not move; the transition is logged once.
func TestHealthKillRehash(t *testing.T) {
	l := newLab(t, 3, 30)
	vip, bes := ipv4.at(80), backends(ipv4, 80, "be1", "be2", "be3")
	p1 := startBackendProc(t, l.Backends[0], "be1", bes[0].addr)
	serveGreeter(t, l.Backends[1], "be2", bes[1].addr)
	serveGreeter(t, l.Backends[2], "be3", bes[2].addr)
	cfg := webConfig("kernel", vip, bes, "first_connection: reset", "on_backend_down: rehash", tcpHealth, "balance: maglev")
	d := startDaemon(t, l.LB, writeConfig(t, cfg), vip, "--mode", "kernel")

	home := l.pinAll(t, d, l.clients(ipv4), vip, true)
	movers := clientsOf(home, "be1")
	if len(movers) < 2 {
		t.Fatalf("be1 has %d clients of %d (%v); the test needs at least 2", len(movers), l.n, home)
	}
	for _, c := range movers {
		l.hold(t, c, vip, answer{"be1", c.String()})
	}
	if f := flowsTo(t, l.LB, vip, bes[0].addr); len(f) < len(movers) {
		t.Fatalf("%d conntrack entries to be1 before the kill, want ≥ %d:\n%s", len(f), len(movers), strings.Join(f, "\n"))
	}
	before := readSets(t, l.LB)
	pinned := len(d.lines("pinned"))

	killed := p1.kill()
	took := waitUntil(t, killed, downBound, "ho-web-be1 empty after the kill", func() bool {
		return len(readSets(t, l.LB).members("ho-web-be1")) == 0
	})
	ev := d.down(t, killed, "be1")
	t.Logf("be1 killed: set empty after %s; event: moved=%s flows_cut=%s took=%s reason=%q",
		took.Round(time.Millisecond), ev["moved"], ev["flows_cut"], ev["took"], ev["reason"])
	wantCount(t, ev, "moved", len(movers))
	if n := intField(t, ev, "flows_cut"); n < len(movers) {
		t.Errorf("flows_cut=%d, want ≥ %d (one long-lived flow per client)", n, len(movers))
	}
	l.wantNoFlows(t, vip, bes[0])

	after := readSets(t, l.LB)
	landed := map[string]int{}
	for _, c := range movers {
		in := after.setsOf(c)
		if len(in) != 1 || in[0] == "ho-web-be1" {
			t.Errorf("be1's client %s is in sets %v, want one healthy backend's", c, in)
			continue
		}
		g, err := l.greet(c, vip)
		if err != nil || "ho-web-"+g.backend != in[0] || g.seen != c.String() {
			t.Errorf("be1's client %s (in %v): got %s, %v; want that backend, in-kernel", c, in, g, err)
		}
		landed[g.backend]++
	}
	t.Logf("be1's %d clients landed on %v", len(movers), landed)
	for c, b := range home {
		if b == "be1" {
			continue
		}
		if was, is := before.setsOf(c), after.setsOf(c); !slices.Equal(was, is) {
			t.Errorf("client %s of %s moved: sets %v -> %v", c, b, was, is)
		}
		if g, err := l.greet(c, vip); err != nil || g.backend != b {
			t.Errorf("client %s of %s now reaches %s, %v", c, b, g, err)
		}
	}
	if n := len(d.waitLines(0, 0, "pinned")); n != pinned {
		t.Errorf("the listener pinned %d clients after the kill; migrated clients must go in-kernel", n-pinned)
	}
	for _, b := range []string{"be2", "be3"} {
		if evs := d.lines("backend down", "backend", b); len(evs) != 0 {
			t.Errorf("%s went down: %v", b, evs)
		}
	}
}

// TestHealthHotStandby: every client sits on the primary; they move to the
// standby when the primary is killed and back when it returns (after rise
// checks). The standby's conntrack entries survive the failback: a live
// flow to the standby keeps working.
func TestHealthHotStandby(t *testing.T) {
	l := newLab(t, 2, 5)
	clients := l.clients(ipv4)
	vip, bes := ipv4.at(80), backends(ipv4, 80, "primary", "standby")
	primary := startBackendProc(t, l.Backends[0], "primary", bes[0].addr)
	serveGreeter(t, l.Backends[1], "standby", bes[1].addr)
	cfg := webConfig("kernel", vip, bes, tcpHealth, "balance: hot-standby")
	d := startDaemon(t, l.LB, writeConfig(t, cfg), vip, "--mode", "kernel")

	home := l.pinAll(t, d, clients, vip, true)
	if got := clientsOf(home, "primary"); len(got) != len(clients) {
		t.Fatalf("clients on the primary: %v, want all: %v", got, home)
	}
	l.hold(t, clients[0], vip, answer{"primary", clients[0].String()})
	// allOn tells whether every client is pinned to backend, none to other.
	allOn := func(backend, other string) func() bool {
		return func() bool {
			sets := readSets(t, l.LB)
			return len(sets["ho-web-"+other]) == 0 && len(sets["ho-web-"+backend]) == len(clients)
		}
	}

	killed := primary.kill()
	took := waitUntil(t, killed, downBound, "all clients on the standby", allOn("standby", "primary"))
	down := d.down(t, killed, "primary")
	t.Logf("primary killed: clients on the standby after %s; event: moved=%s flows_cut=%s took=%s", took.Round(time.Millisecond), down["moved"], down["flows_cut"], down["took"])
	wantCount(t, down, "moved", len(clients))
	l.wantNoFlows(t, vip, bes[0])
	for _, c := range clients {
		if g, err := l.greet(c, vip); err != nil || g != (answer{"standby", c.String()}) {
			t.Errorf("client %s while the primary is down: %s, %v; want the standby, in-kernel", c, g, err)
		}
	}
	live := l.hold(t, clients[1], vip, answer{"standby", clients[1].String()})
	if f := flowsTo(t, l.LB, vip, bes[1].addr); len(f) == 0 {
		t.Fatal("no conntrack entry to the standby for the live flow")
	}

	startBackendProc(t, l.Backends[0], "primary", bes[0].addr)
	back := time.Now()
	took = waitUntil(t, back, upBound, "all clients back on the primary", allOn("primary", "standby"))
	up := d.up(t, back, "primary")
	t.Logf("primary restarted: clients back after %s; event: moved_back=%s took=%s reason=%q", took.Round(time.Millisecond), up["moved_back"], up["took"], up["reason"])
	wantCount(t, up, "moved_back", len(clients))
	if want := fmt.Sprintf("rise %d/%d", checkRise, checkRise); up["reason"] != want {
		t.Errorf("failback reason %q, want %q", up["reason"], want)
	}
	if f := flowsTo(t, l.LB, vip, bes[1].addr); len(f) == 0 {
		t.Error("failback deleted the standby's conntrack entries")
	}
	live.echo(t, "after failback")
	for _, c := range clients {
		if g, err := l.greet(c, vip); err != nil || g != (answer{"primary", c.String()}) {
			t.Errorf("client %s after failback: %s, %v; want the primary, in-kernel", c, g, err)
		}
	}
	if evs := d.lines("backend down", "backend", "standby"); len(evs) != 0 {
		t.Errorf("the standby went down: %v", evs)
	}
}

// TestHealthReclassify: with on_backend_down: reclassify the killed
// backend's clients are unpinned (in no set), its conntrack entries are
// gone, and each client's next connection meets the listener again, is
// classified, and lands on the healthy backend.
func TestHealthReclassify(t *testing.T) {
	l := newLab(t, 2, 8)
	vip, bes := ipv4.at(80), backends(ipv4, 80, "be1", "be2")
	p1 := startBackendProc(t, l.Backends[0], "be1", bes[0].addr)
	serveGreeter(t, l.Backends[1], "be2", bes[1].addr)
	cfg := webConfig("kernel", vip, bes, "first_connection: reset", "on_backend_down: reclassify", tcpHealth, "balance: maglev")
	d := startDaemon(t, l.LB, writeConfig(t, cfg), vip, "--mode", "kernel")

	home := l.pinAll(t, d, l.clients(ipv4), vip, true)
	movers := clientsOf(home, "be1")
	if len(movers) == 0 {
		t.Fatalf("be1 has no client: %v", home)
	}
	for _, c := range movers {
		l.hold(t, c, vip, answer{"be1", c.String()})
	}
	before := readSets(t, l.LB)

	killed := p1.kill()
	took := waitUntil(t, killed, downBound, "ho-web-be1 empty after the kill", func() bool {
		return len(readSets(t, l.LB).members("ho-web-be1")) == 0
	})
	ev := d.down(t, killed, "be1")
	t.Logf("be1 killed: set empty after %s; event: moved=%s flows_cut=%s took=%s", took.Round(time.Millisecond), ev["moved"], ev["flows_cut"], ev["took"])
	wantCount(t, ev, "moved", len(movers))
	l.wantNoFlows(t, vip, bes[0])
	after := readSets(t, l.LB)
	for _, c := range movers {
		if in := after.setsOf(c); len(in) != 0 {
			t.Errorf("be1's client %s is still pinned in %v; reclassify unpins", c, in)
		}
	}
	for c, b := range home {
		if b != "be1" && !slices.Equal(before.setsOf(c), after.setsOf(c)) {
			t.Errorf("client %s of %s moved", c, b)
		}
	}
	for _, c := range movers {
		n := len(d.lines("pinned", "client", c.String()))
		if g, err := l.greet(c, vip); err == nil {
			t.Errorf("be1's client %s: next connection answered by %s; want it to meet the listener (reset)", c, g)
		}
		pins := d.waitLines(time.Second, n+1, "pinned", "client", c.String())
		if len(pins) != n+1 || pins[len(pins)-1]["backend"] != "be2" {
			t.Errorf("be1's client %s was not classified again onto be2: %v", c, pins)
		}
		if g, err := l.greet(c, vip); err != nil || g != (answer{"be2", c.String()}) {
			t.Errorf("be1's client %s after reclassification: %s, %v; want be2, in-kernel", c, g, err)
		}
		if in := readSets(t, l.LB).setsOf(c); !slices.Equal(in, []string{"ho-web-be2"}) {
			t.Errorf("be1's client %s is in %v, want [ho-web-be2]", c, in)
		}
	}
}

// TestHealthFlapping: a backend that fails and passes checks alternately
// never reaches fall (2) or rise (2), so nothing moves: not while it is up,
// and not while it is down. Only real transitions (all checks failing, all
// passing) move the clients, each logged once.
func TestHealthFlapping(t *testing.T) {
	l := newLab(t, 2, 4)
	clients := l.clients(ipv4)
	vip, bes := ipv4.at(80), backends(ipv4, 80, "primary", "standby")
	primary := l.greeters(t, bes)[0]
	primary.mode.Store(flapping)
	health := fmt.Sprintf("health: {check: send-expect, expect: %q, interval: %s, timeout: %s, rise: %d, fall: %d}",
		ipv4.lbBack.String(), checkInterval, checkInterval, checkRise, checkFall)
	cfg := webConfig("kernel", vip, bes, health, "balance: hot-standby")
	d := startDaemon(t, l.LB, writeConfig(t, cfg), vip, "--mode", "kernel")
	home := l.pinAll(t, d, clients, vip, true)
	if got := clientsOf(home, "primary"); len(got) != len(clients) {
		t.Fatalf("clients on the primary: %v, want all", home)
	}

	// steady watches the sets for n intervals and fails if they change.
	steady := func(phase string, n int) {
		t.Helper()
		want := readSets(t, l.LB)
		bad := primary.sick.Load()
		for end := time.Now().Add(time.Duration(n) * checkInterval); time.Now().Before(end); time.Sleep(checkInterval / 2) {
			if got := readSets(t, l.LB); !slices.Equal(got.members("ho-web-primary"), want.members("ho-web-primary")) ||
				!slices.Equal(got.members("ho-web-standby"), want.members("ho-web-standby")) {
				t.Fatalf("%s: sets changed: %v -> %v", phase, want, got)
			}
		}
		if failed := primary.sick.Load() - bad; failed < int64(n)/3 {
			t.Fatalf("%s: only %d failed checks in %d intervals; the backend did not flap", phase, failed, n)
		}
		t.Logf("%s: %d failed checks in %d intervals, no set changed", phase, primary.sick.Load()-bad, n)
	}

	steady("up, flapping", 10)
	if evs := d.lines("backend down"); len(evs) != 0 {
		t.Fatalf("a flapping backend went down: %v", evs)
	}
	if n := len(d.lines("health check failed", "backend", "primary")); n < 3 {
		t.Errorf("the daemon logged %d failed checks of the flapping primary, want ≥ 3", n)
	}

	// move sets the primary's mode and waits until every client is in set
	// `to` and the transition is logged (transition: d.down or d.up).
	move := func(mode int32, to string, bound time.Duration, transition func(*testing.T, time.Time, string) map[string]string) {
		t.Helper()
		primary.mode.Store(mode)
		since := time.Now()
		waitUntil(t, since, bound, "every client in "+to, func() bool { return len(readSets(t, l.LB).members(to)) == len(clients) })
		transition(t, since, "primary")
	}

	move(sick, "ho-web-standby", downBound, d.down) // every check fails
	primary.mode.Store(flapping)
	steady("down, flapping", 10)
	if evs := d.lines("backend up"); len(evs) != 0 {
		t.Fatalf("a flapping backend came up: %v", evs)
	}
	move(healthy, "ho-web-primary", upBound, d.up) // every check passes
}

// TestHealthNoHealthyBackend: when the only backend of the pool dies its
// pins stay (and work again when it returns), new clients are reset and not
// pinned, and each is logged once. Its conntrack entries go all the same.
func TestHealthNoHealthyBackend(t *testing.T) {
	l := newLab(t, 1, 6)
	clients := l.clients(ipv4)
	vip, bes := ipv4.at(80), backends(ipv4, 80, "be1")
	p1 := startBackendProc(t, l.Backends[0], "be1", bes[0].addr)
	cfg := webConfig("kernel", vip, bes, tcpHealth, "balance: maglev")
	d := startDaemon(t, l.LB, writeConfig(t, cfg), vip, "--mode", "kernel")

	old, fresh := clients[:3], clients[3:]
	l.pinAll(t, d, old, vip, true)
	l.hold(t, old[0], vip, answer{"be1", old[0].String()})
	pins := readSets(t, l.LB).members("ho-web-be1")

	killed := p1.kill()
	ev := d.down(t, killed, "be1")
	t.Logf("be1 killed: event after %s: moved=%s kept=%s flows_cut=%s", time.Since(killed).Round(time.Millisecond), ev["moved"], ev["kept"], ev["flows_cut"])
	if ev["moved"] != "0" || ev["kept"] != strconv.Itoa(len(old)) {
		t.Errorf("moved=%s kept=%s, want 0 and %d", ev["moved"], ev["kept"], len(old))
	}
	if got := readSets(t, l.LB).members("ho-web-be1"); !slices.Equal(got, pins) {
		t.Errorf("pins of a pool without a usable backend changed: %v -> %v", pins, got)
	}
	l.wantNoFlows(t, vip, bes[0])
	if evs := d.waitLines(time.Second, 1, "pool has no usable backend: its pins stay; new clients are reset", "service", "web"); len(evs) != 1 || evs[0]["clients"] != strconv.Itoa(len(old)) {
		t.Errorf("pool without a usable backend logged %v, want once with clients=%d", evs, len(old))
	}
	for _, c := range fresh {
		for i := range 2 {
			if g, err := l.greet(c, vip); err == nil {
				t.Errorf("new client %s, connection %d: answered by %s, want a reset", c, i+1, g)
			}
		}
		if in := readSets(t, l.LB).setsOf(c); len(in) != 0 {
			t.Errorf("new client %s was pinned in %v without a usable backend", c, in)
		}
	}
	if evs := d.waitLines(time.Second, 1, "no usable backend: new clients are reset and not pinned", "service", "web"); len(evs) != 1 {
		t.Errorf("%d new connections without a usable backend logged %d times, want once", 2*len(fresh), len(evs))
	}
	if got := readSets(t, l.LB).members("ho-web-be1"); !slices.Equal(got, pins) {
		t.Errorf("pins changed while no backend was usable: %v -> %v", pins, got)
	}

	startBackendProc(t, l.Backends[0], "be1", bes[0].addr)
	d.up(t, time.Now(), "be1")
	for _, c := range old {
		if g, err := l.greet(c, vip); err != nil || g != (answer{"be1", c.String()}) {
			t.Errorf("kept client %s after be1 returned: %s, %v; want be1, in-kernel", c, g, err)
		}
	}
	l.pinAll(t, d, fresh[:1], vip, true)
	if evs := d.waitLines(time.Second, 1, "a usable backend is back: new clients are pinned again", "service", "web"); len(evs) != 1 {
		t.Errorf("the return of a usable backend logged %d times, want once", len(evs))
	}
}

// TestHealthUserspace: in userspace mode a killed backend's clients are
// re-picked on their next connection (even before the health check
// notices, through the dial fallback): they reach the healthy backend, and
// under failback: keep stay there, also once the killed one is back
// (maglev's default, rehash, moves them back: TestMaglevFailback).
func TestHealthUserspace(t *testing.T) {
	l := newLab(t, 2, 12)
	vip, bes := ipv4.at(80), backends(ipv4, 80, "be1", "be2")
	p1 := startBackendProc(t, l.Backends[0], "be1", bes[0].addr)
	serveGreeter(t, l.Backends[1], "be2", bes[1].addr)
	cfg := webConfig("userspace", vip, bes, tcpHealth, "balance: maglev", "failback: keep")
	d := startDaemon(t, l.LB, writeConfig(t, cfg), vip, "--mode", "userspace")

	home := l.pinAll(t, d, l.clients(ipv4), vip, false)
	for c, b := range home {
		if g, err := l.greet(c, vip); err != nil || g.backend != b {
			t.Fatalf("client %s of %s: second connection reached %s, %v", c, b, g, err)
		}
	}
	movers := clientsOf(home, "be1")
	if len(movers) < 2 {
		t.Fatalf("be1 has %d clients: %v; the test needs at least 2", len(movers), home)
	}

	killed := p1.kill()
	// The first mover connects at once: its dial to be1 fails and the
	// connection falls over to be2.
	if g, err := l.greet(movers[0], vip); err != nil || g.backend != "be2" {
		t.Errorf("be1's client %s right after the kill: %s, %v; want be2", movers[0], g, err)
	}
	ev := d.down(t, killed, "be1")
	t.Logf("be1 killed: event after %s: moved=%s of %d clients, took=%s reason=%q", time.Since(killed).Round(time.Millisecond), ev["moved"], len(movers), ev["took"], ev["reason"])
	if n := intField(t, ev, "moved"); n != len(movers) && n != len(movers)-1 {
		t.Errorf("moved=%d, want %d (or %d if the first mover was re-pinned by its dial)", n, len(movers), len(movers)-1)
	}
	check := func(phase string) {
		t.Helper()
		for c, b := range home {
			want := b
			if b == "be1" {
				want = "be2"
			}
			for range 2 {
				if g, err := l.greet(c, vip); err != nil || g.backend != want {
					t.Errorf("%s: client %s (was on %s) reached %s, %v; want %s", phase, c, b, g, err, want)
				}
			}
		}
	}
	check("be1 down")

	startBackendProc(t, l.Backends[0], "be1", bes[0].addr)
	d.up(t, time.Now(), "be1")
	check("be1 back")
}
