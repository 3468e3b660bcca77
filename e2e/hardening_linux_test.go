package e2e

// Scenarios of issue 16: capacity and floods (16.3), black holes (16.4),
// overload (16.5), log floods (16.7) and hand-made pins (16.8).

import (
	"bufio"
	"cmp"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
	"github.com/vishvananda/netlink"

	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/internal/nstest"
)

// classifiedAs is the status's count of new clients of svc with result.
func classifiedAs(api *adminAPI, svc, result string) uint64 {
	for _, s := range api.status().Services {
		if s.Name == svc {
			return s.Classified[result]
		}
	}
	return 0
}

// TestFullSet: once a backend's set holds max_clients, a new client is
// served on every connection without a pin (on_full: proxy; from its own
// address in kernel mode) or reset (reject); the refusal is counted in
// the status and the metrics and logged, rate-limited.
func TestFullSet(t *testing.T) {
	for _, mode := range []string{"kernel", "userspace"} {
		t.Run(mode, func(t *testing.T) {
			l := newLab(t, 1, 8)
			bes := backends(ipv4, 80, "be1")
			l.greeters(t, bes)
			proxyVIP, rejectVIP := ipv4.at(80), ipv4.at(81)
			cfg := daemonConfig{mode: mode, logLevel: "info", services: []service{
				{"web", proxyVIP, []string{"first_connection: proxy", "health: {check: none}", "max_clients: 3", "on_full: proxy"}, bes},
				{"rej", rejectVIP, []string{"first_connection: proxy", "health: {check: none}", "max_clients: 1", "on_full: reject"}, bes},
			}}
			d := startDaemon(t, l.LB, writeConfig(t, cfg), proxyVIP)
			api := newAdminAPI(t, l.LB, adminListen, "")
			cs := l.clients(ipv4)
			// Clients of a full set are served, in kernel mode from their own
			// address (transparent).
			l.greetTwice(t, cs, proxyVIP, mode == "kernel")
			var pins []balancer.ClientPin
			api.must(200, "GET", "/api/v1/services/web/clients", nil, &pins)
			if len(pins) != 3 {
				t.Errorf("%d pins, want max_clients (3): %v", len(pins), pins)
			}
			if mode == "kernel" {
				if n := len(readSets(t, l.LB).members(ipv4.set("web", "be1"))); n != 3 {
					t.Errorf("the set holds %d clients, want 3", n)
				}
			}
			if n := classifiedAs(api, "web", balancer.ResultFull); n != 10 {
				t.Errorf("status: %d connections of clients over max_clients counted full, want 10 (5 clients × 2)", n)
			}
			if v := metricValue(t, api.metrics(), "handoff_classifications_total", map[string]string{"service": "web", "result": "full"}); v != 10 {
				t.Errorf("metric full = %v, want 10", v)
			}
			if n := len(d.waitLines(2*time.Second, 1, "pin refused: the backend's client table is full (raise max_clients)", "service", "web")); n == 0 || n > 11 {
				t.Errorf("%d warnings about the full set, want between 1 and 11 (rate-limited)", n)
			}
			// reject: the first client is pinned, the others are reset.
			if _, err := l.greet(cs[0], rejectVIP); err != nil {
				t.Fatal(err)
			}
			for _, c := range cs[1:4] {
				if a, err := l.greet(c, rejectVIP); err == nil {
					t.Errorf("on_full: reject served client %s: %v", c, a)
				}
			}
			if n := classifiedAs(api, "rej", balancer.ResultFull); n != 3 {
				t.Errorf("rej: %d counted full, want 3", n)
			}
			out := handoff(t, l.LB, "status").stdout
			if !strings.Contains(out, "NOT PINNED") || !regexpFields(out, "web", "10", "0", "proxy") {
				t.Errorf("handoff status does not show the refused pins:\n%s", out)
			}
		})
	}
}

// regexpFields reports whether a line of out starts with the fields want.
func regexpFields(out string, want ...string) bool {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= len(want) && strings.Join(f[:len(want)], " ") == strings.Join(want, " ") {
			return true
		}
	}
	return false
}

// TestPinBudget: the clients of one network that spent its pin budget are
// served without a pin, and another network's new clients are pinned as
// usual: one network cannot fill a set and lock the others out.
func TestPinBudget(t *testing.T) {
	// Clients 0..13 are 198.18.0.2-15 (198.18.0.0/28), 14..16 are
	// 198.18.0.16-18 (the next /28).
	l := newLab(t, 1, 17)
	bes := backends(ipv4, 80, "be1")
	l.greeters(t, bes)
	vip := ipv4.at(80)
	d := startDaemon(t, l.LB, writeConfig(t, webConfig("kernel", vip, bes, "first_connection: proxy", "health: {check: none}",
		"pin_budget: {per_prefix: 3, ipv4_prefix: 28}")), vip)
	api := newAdminAPI(t, l.LB, adminListen, "")
	cs := l.clients(ipv4)
	for _, c := range cs[:14] {
		if _, err := l.greet(c, vip); err != nil {
			t.Fatalf("client %s over its network's budget not served: %v", c, err)
		}
	}
	for _, c := range cs[14:] {
		if _, err := l.greet(c, vip); err != nil {
			t.Fatalf("client %s of another network not served: %v", c, err)
		}
	}
	set := readSets(t, l.LB).members(ipv4.set("web", "be1"))
	first, second := 0, 0
	for _, m := range set {
		a := netip.MustParseAddr(m)
		if netip.MustParsePrefix("198.18.0.0/28").Contains(a) {
			first++
		} else {
			second++
		}
	}
	if first != 3 || second != 3 {
		t.Errorf("pinned %d of the flooding /28 and %d of the other, want 3 and 3: %v", first, second, set)
	}
	if n := classifiedAs(api, "web", balancer.ResultOverBudget); n != 11 {
		t.Errorf("over-budget %d, want 11", n)
	}
	if len(d.waitLines(2*time.Second, 1, "pin refused: the client's network made its pin budget of new pins within client_ttl", "network", "198.18.0.0/28")) == 0 {
		t.Error("no warning names the network over budget")
	}
}

// TestNoBlackHoles: kernel mode refuses backends it cannot forward to, in
// the config and through the API; a hand-made pin to a down or draining
// backend is a conflict.
func TestNoBlackHoles(t *testing.T) {
	bad := writeConfig(t, webConfig("kernel", ipv4.at(80), []backend{{"lo", netip.MustParseAddrPort("127.0.0.1:8080")}}))
	r := handoff(t, nil, "validate", "-c", bad)
	if r.code != 1 || !strings.Contains(r.stdout+r.stderr, bad+":") || !strings.Contains(r.stdout+r.stderr, "is a loopback address") {
		t.Fatalf("validate of a kernel config with a loopback backend: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	ok := writeConfig(t, webConfig("userspace", ipv4.at(80), []backend{{"lo", netip.MustParseAddrPort("127.0.0.1:8080")}}))
	if r := handoff(t, nil, "validate", "-c", ok); r.code != 0 {
		t.Fatalf("validate of a userspace config with a loopback backend: exit %d\n%s", r.code, r.stderr)
	}

	l := newLab(t, 3, 2)
	vip, bes := ipv4.at(80), backends(ipv4, 80, "be1", "be2", "be3")
	gs := l.greeters(t, bes)
	d := startDaemon(t, l.LB, writeConfig(t, webConfig("kernel", vip, bes[:2], "first_connection: proxy",
		"health: {check: tcp, interval: 200ms, timeout: 200ms, rise: 1, fall: 2}")), vip)
	api := newAdminAPI(t, l.LB, adminListen, "")
	for _, a := range []string{"127.0.0.1:80", "169.254.0.9:80", "224.0.0.9:80", vip.Addr().String() + ":8080"} {
		api.must(400, "POST", "/api/v1/services/web/backends", map[string]any{"name": "x", "address": a}, nil)
	}
	api.must(200, "POST", "/api/v1/services/web/backends", map[string]any{"name": "be3", "address": bes[2].addr.String()}, nil)

	client := ipv4.client(1).String()
	api.must(200, "POST", "/api/v1/services/web/backends/be1/drain", nil, nil)
	api.must(409, "POST", "/api/v1/services/web/pins", map[string]string{"client": client, "backend": "be1"}, nil)
	api.must(200, "POST", "/api/v1/services/web/backends/be1/drain?undo=1", nil, nil)
	api.must(200, "POST", "/api/v1/services/web/pins", map[string]string{"client": client, "backend": "be1"}, nil)

	// be2 goes down: a pin to it would black-hole the client.
	gs[1].stop()
	d.down(t, time.Now(), "be2")
	api.must(409, "POST", "/api/v1/services/web/pins", map[string]string{"client": client, "backend": "be2"}, nil)
	if got := l.reach(t, ipv4.client(1), vip); got != "be1" {
		t.Errorf("after a refused pin the client went to %s, want its pin be1", got)
	}
}

// proxyCounter is a backend that requires a PROXY header on every
// connection and counts the connections without one: what a backend with
// accept-proxy logs as errors. It counts apart the connections closed
// before any byte: a check whose connect timed out just as the handshake
// completed.
type proxyCounter struct {
	missing, local, empty atomic.Int64
}

func serveProxyCounter(t *testing.T, ns *nstest.NS, addr netip.AddrPort) *proxyCounter {
	t.Helper()
	pc := &proxyCounter{}
	nstest.Serve(t, ns.Listen(t, "tcp", addr.String()), func(c net.Conn) {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		r := bufio.NewReader(c)
		if _, err := r.Peek(1); err != nil {
			pc.empty.Add(1)
			return
		}
		h, err := proxyproto.Read(r)
		if err != nil {
			pc.missing.Add(1)
			return
		}
		if h.Command == proxyproto.LOCAL || h.TransportProtocol == proxyproto.UNSPEC {
			pc.local.Add(1)
			if line, _ := r.ReadString('\n'); line == "PING\n" {
				io.WriteString(c, "PONG\n")
			}
			return
		}
		fmt.Fprintf(c, "be1 %s\n", h.SourceAddr.(*net.TCPAddr).IP)
	})
	return pc
}

// TestProxyProtocolHealthChecks: the health checks of a service whose
// backends expect a PROXY header send one (a LOCAL one), so such a
// backend sees no connection without a header, and stays up.
func TestProxyProtocolHealthChecks(t *testing.T) {
	l := newLab(t, 1, 1)
	addr := netip.AddrPortFrom(ipv4.backend(0), 80)
	pc := serveProxyCounter(t, l.Backends[0], addr)
	vip := ipv4.at(80)
	for _, check := range []string{"{check: tcp, interval: 100ms, timeout: 100ms, rise: 1, fall: 2}", "{check: send-expect, send: \"PING\\n\", expect: PONG, interval: 100ms, timeout: 100ms}"} {
		pc.empty.Store(0)
		cfg := writeConfig(t, webConfig("userspace", vip, []backend{{"be1", addr}}, "proxy_protocol: v2", "health: "+check))
		d := startDaemon(t, l.LB, cfg, vip)
		time.Sleep(time.Second)
		if a, err := l.greet(ipv4.client(0), vip); err != nil || a.seen != ipv4.client(0).String() {
			t.Fatalf("a client through the PROXY header: %v, %v", a, err)
		}
		if n := pc.missing.Load(); n != 0 {
			t.Fatalf("health %s: the backend saw %d connections without a PROXY header", check, n)
		}
		// An empty connection is a check that gave up (the machine is
		// loaded): never more of them than failed checks.
		if e, failed := pc.empty.Load(), len(d.lines("health check failed")); e > int64(failed) {
			t.Fatalf("health %s: the backend saw %d connections closed before any byte, and only %d checks failed", check, e, failed)
		}
		if pc.local.Load() < 5 {
			t.Fatalf("health %s: %d checks with a LOCAL header in a second at a 100ms interval", check, pc.local.Load())
		}
		if len(d.lines("backend down")) > 0 {
			t.Fatalf("health %s: the backend went down", check)
		}
		d.stop(9)
	}
}

// TestOverloadIsNotFailure: health checks that fail because the balancer
// cannot open connections (its descriptors exhausted; its conntrack
// table 95% full) do not take backends down, and the status counts them.
func TestOverloadIsNotFailure(t *testing.T) {
	t.Run("descriptors", func(t *testing.T) {
		l := newLab(t, 1, 1)
		bes := backends(ipv4, 80, "be1")
		l.greeters(t, bes)
		vip := ipv4.at(80)
		d := startDaemon(t, l.LB, writeConfig(t, webConfig("userspace", vip, bes, "health: {check: tcp, interval: 100ms, timeout: 100ms, rise: 1, fall: 2}")), vip)
		pid := strconv.Itoa(d.cmd.Process.Pid)
		fds, err := os.ReadDir(filepath.Join("/proc", pid, "fd"))
		if err != nil {
			t.Fatal(err)
		}
		limit := strconv.Itoa(len(fds) + 6)
		run(t, nil, "prlimit", "--pid", pid, "--nofile="+limit+":"+limit)
		// Proxied connections take two descriptors each: these exhaust them.
		var conns []net.Conn
		for range 10 {
			if c, err := l.Client.DialFrom(t.Context(), ipv4.client(0), "tcp", vip.String()); err == nil {
				conns = append(conns, c)
			}
		}
		time.Sleep(1500 * time.Millisecond) // 15 check intervals; fall is 2
		for _, c := range conns {
			c.Close()
		}
		run(t, nil, "prlimit", "--pid", pid, "--nofile=65536:65536")
		if down := d.lines("backend down"); len(down) > 0 {
			t.Fatalf("the backend went down while the balancer had no descriptors: %v", down)
		}
		if len(d.lines("health check failed because this host cannot open connections: not counted against the backend")) == 0 {
			t.Error("no warning about the inconclusive checks")
		}
		api := newAdminAPI(t, l.LB, adminListen, "")
		if st := api.status(); st.InconclusiveChecks == 0 {
			t.Error("status: no inconclusive check counted")
		}
	})

	t.Run("conntrack", func(t *testing.T) {
		l := newLab(t, 1, 1)
		bes := backends(ipv4, 80, "be1")
		gs := l.greeters(t, bes)
		vip := ipv4.at(80)
		d := startDaemon(t, l.LB, writeConfig(t, webConfig("kernel", vip, bes, "health: {check: tcp, interval: 100ms, timeout: 100ms, rise: 1, fall: 2}")), vip)
		api := newAdminAPI(t, l.LB, adminListen, "")
		fillConntrack(t, l.LB, 0.96)
		waitUntil(t, time.Now(), 5*time.Second, "the status shows the conntrack table full", func() bool {
			c := api.status().Conntrack
			return c != nil && c.Fill >= 0.95
		})
		if len(d.waitLines(2*time.Second, 1, "conntrack table near full: new connections, health checks among them, may be dropped; failed checks are not counted against backends from 95% (raise net.netfilter.nf_conntrack_max)")) != 1 {
			t.Error("no warning about the near-full conntrack table")
		}
		// Checks now fail: while the table is full they say nothing.
		gs[0].stop()
		time.Sleep(time.Second)
		if down := d.lines("backend down"); len(down) > 0 {
			t.Fatalf("the backend went down while conntrack was full: %v", down)
		}
		if api.status().InconclusiveChecks == 0 {
			t.Error("no inconclusive check counted")
		}
		if v := metricValue(t, api.metrics(), "handoff_conntrack_entries", nil); v < 0.95*float64(api.status().Conntrack.Max) {
			t.Errorf("metric handoff_conntrack_entries %v", v)
		}
		// The control: with the table emptied, the same failures count.
		h, err := netlink.NewHandleAt(l.LB.Handle())
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		if err := h.ConntrackTableFlush(netlink.ConntrackTable); err != nil {
			t.Fatal(err)
		}
		d.down(t, time.Now(), "be1")
	})
}

// fillConntrack fills ns's conntrack table to fill of its limit with UDP
// entries that nothing uses (they time out in ten minutes, or go with the
// namespace).
func fillConntrack(t *testing.T, ns *nstest.NS, fill float64) {
	t.Helper()
	h, err := netlink.NewHandleAt(ns.Handle())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	max, err := strconv.Atoi(strings.TrimSpace(ns.Run(t, "cat", "/proc/sys/net/netfilter/nf_conntrack_max")))
	if err != nil {
		t.Fatal(err)
	}
	want := int(fill * float64(max))
	const workers = 4
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			h, err := netlink.NewHandleAt(ns.Handle())
			if err != nil {
				errs <- err
				return
			}
			defer h.Close()
			for i := w; i < want; i += workers {
				// 4-byte addresses: netlink encodes the first four bytes
				// of what it is given (a 16-byte net.IPv4 made 0.0.0.0,
				// and every entry one of 256).
				src := net.IPv4(198, 19, 200+byte(i>>16&3), byte(i>>8)).To4()
				dst := net.IPv4(198, 19, 210, 1).To4()
				f := &netlink.ConntrackFlow{FamilyType: netlink.FAMILY_V4, TimeOut: 600,
					Forward: netlink.IPTuple{Protocol: 17, SrcIP: src, DstIP: dst, SrcPort: uint16(1024 + i&0xff), DstPort: 9},
					Reverse: netlink.IPTuple{Protocol: 17, SrcIP: dst, DstIP: src, SrcPort: 9, DstPort: uint16(1024 + i&0xff)}}
				if err := h.ConntrackCreate(netlink.ConntrackTable, netlink.FAMILY_V4, f); err != nil {
					errs <- fmt.Errorf("conntrack entry %d: %w", i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	count, _ := strconv.Atoi(strings.TrimSpace(ns.Run(t, "cat", "/proc/sys/net/netfilter/nf_conntrack_count")))
	t.Logf("conntrack: %d entries made, the table holds %d of %d", want, count, max)
	if count < want {
		t.Fatalf("conntrack: %d entries made, the table holds %d", want, count)
	}
}

// TestMaglevFailback: under maglev (failback: rehash by default) a
// backend that comes back takes back the clients that moved off it.
func TestMaglevFailback(t *testing.T) {
	l := newLab(t, 3, 24)
	bes := backends(ipv4, 80, "be1", "be2", "be3")
	gs := l.greeters(t, bes)
	vip := ipv4.at(80)
	d := startDaemon(t, l.LB, writeConfig(t, webConfig("kernel", vip, bes, "first_connection: proxy",
		"health: {check: tcp, interval: 100ms, timeout: 100ms, rise: 1, fall: 2}")), vip)
	home := map[netip.Addr]string{}
	for _, c := range l.clients(ipv4) {
		home[c] = l.reach(t, c, vip)
	}
	moved := clientsOf(home, "be1")
	if len(moved) == 0 {
		t.Fatal("maglev put no client on be1")
	}
	gs[0].stop()
	d.down(t, time.Now(), "be1")
	for _, c := range moved {
		if got := l.reach(t, c, vip); got == "be1" {
			t.Fatalf("client %s still on be1 while it is down", c)
		}
	}
	gs[0] = serveGreeter(t, l.Backends[0], "be1", bes[0].addr)
	ev := d.up(t, time.Now(), "be1")
	if ev["moved_back"] != strconv.Itoa(len(moved)) {
		t.Errorf("moved back %s clients, want the %d that moved off", ev["moved_back"], len(moved))
	}
	for c, want := range home {
		if got := l.reach(t, c, vip); got != want {
			t.Errorf("client %s on %s after failback, want %s", c, got, want)
		}
	}
}

// TestPinFailureLogsRateLimited: with handoff's sets gone (cleanup
// --force under a running daemon), a flood of new connections logs a few
// "pin failed" lines, not one each, and a later line counts the others.
func TestPinFailureLogsRateLimited(t *testing.T) {
	l := newLab(t, 1, 50)
	bes := backends(ipv4, 80, "be1")
	l.greeters(t, bes)
	vip := ipv4.at(80)
	d := startDaemon(t, l.LB, writeConfig(t, webConfig("kernel", vip, bes, "first_connection: proxy", "health: {check: none}")), vip)
	if r := handoff(t, l.LB, "cleanup", "--force"); r.code != 0 {
		t.Fatalf("cleanup --force: %s", r.stderr)
	}
	start := time.Now()
	var wg sync.WaitGroup
	var attempts atomic.Int64
	for _, c := range l.clients(ipv4) {
		wg.Go(func() {
			for range 60 {
				attempts.Add(1)
				l.greet(c, vip)
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	lines := len(d.waitLines(0, 0, "pin failed: reset"))
	if lines == 0 {
		t.Fatal("no pin failure was logged: the scenario did not fail pins")
	}
	if limit := 10 + int(took/time.Second) + 2; lines > limit {
		t.Fatalf("%d connections logged %d pin failures in %v, want at most %d", attempts.Load(), lines, took.Round(time.Millisecond), limit)
	}
	// Past the burst, a line says how many were held back before it.
	if all := d.lines("pin failed: reset"); len(all) > 10 {
		found := false
		for _, f := range all[10:] {
			found = found || f["suppressed"] != ""
		}
		if !found {
			t.Error("no pin failure line after the burst says how many were suppressed")
		}
	}
}

// TestHandPinsPersistAcrossFlushAndReboot: a pin made by hand is made
// again when its set is flushed, and after a reboot (the sets gone) when
// the daemon starts.
func TestHandPinsPersistAcrossFlushAndReboot(t *testing.T) {
	l := newLab(t, 2, 2)
	bes := backends(ipv4, 80, "be1", "be2")
	l.greeters(t, bes)
	vip := ipv4.at(80)
	cfgPath := writeConfig(t, webConfig("kernel", vip, bes, "first_connection: proxy", "health: {check: none}"))
	d := startDaemon(t, l.LB, cfgPath, vip)
	api := newAdminAPI(t, l.LB, adminListen, "")
	client := ipv4.client(1)
	api.must(200, "POST", "/api/v1/services/web/pins", map[string]string{"client": client.String(), "backend": "be2"}, nil)
	hasPin := func() bool {
		return strings.Contains(strings.Join(readSets(t, l.LB).members(ipv4.set("web", "be2")), " "), client.String())
	}
	if !hasPin() {
		t.Fatal("the hand-made pin is not in the set")
	}
	l.LB.Run(t, "ipset", "flush", ipv4.set("web", "be2"))
	waitUntil(t, time.Now(), 3*balancer.HandPinsEvery, "the flushed hand-made pin is made again", hasPin)
	if got := l.reach(t, client, vip); got != "be2" {
		t.Errorf("client answered by %s, want its hand-made pin be2", got)
	}

	// A reboot: the daemon stops, the kernel's sets and rules are gone.
	d.stop(15)
	if r := handoff(t, l.LB, "cleanup"); r.code != 0 {
		t.Fatalf("cleanup: %s", r.stderr)
	}
	startDaemon(t, l.LB, cfgPath, vip)
	waitUntil(t, time.Now(), 2*time.Second, "the hand-made pin is made again at start", hasPin)
}

// TestIPv6NetworkPins: with ipv6_pin_prefix a client's whole network is
// one client, in both modes. An IPv6 client that rotates addresses within
// its /64 keeps the backend its first address was given (in kernel mode its
// other addresses go in-kernel from their first connection, and the set
// holds one hash:net entry), and a pin made by hand for any address moves
// the network. Without it (the control service, round-robin like it)
// every address is a client of its own.
func TestIPv6NetworkPins(t *testing.T) {
	for _, mode := range []string{"kernel", "userspace"} {
		t.Run(mode, func(t *testing.T) { testIPv6NetworkPins(t, mode) })
	}
}

func testIPv6NetworkPins(t *testing.T, mode string) {
	l := newLab(t, 2, 6)
	bes := backends(ipv6, 80, "be1", "be2")
	l.greeters(t, bes)
	netVIP, addrVIP := ipv6.at(80), ipv6.at(81)
	fields := []string{"first_connection: proxy", "health: {check: none}", "balance: round-robin"}
	cfg := daemonConfig{mode: mode, services: []service{
		{"net", netVIP, append([]string{"ipv6_pin_prefix: 64"}, fields...), bes},
		{"addr", addrVIP, fields, bes},
	}}
	startDaemon(t, l.LB, writeConfig(t, cfg), netVIP)
	api := newAdminAPI(t, l.LB, adminListen, "")
	cs := l.clients(ipv6) // 2001:2:0:1::2 to ::7, one /64
	network := netip.MustParsePrefix("2001:2:0:1::/64")

	got := map[string]int{}
	first := ""
	for _, a := range l.greetTwice(t, cs, netVIP, mode == "kernel") {
		first = cmp.Or(first, a.backend)
		got[a.backend]++
	}
	if got[first] != 2*len(cs) {
		t.Errorf("the addresses of one /64 went to %v, want all to %s", got, first)
	}
	if mode == "kernel" {
		sets := readSets(t, l.LB)
		if ms := sets.members("hn6-net-" + first); len(ms) != 1 || ms[0] != network.String() {
			t.Errorf("set hn6-net-%s holds %v, want the one network %s", first, ms, network)
		}
		if _, ok := sets["ho6-net-"+first]; ok {
			t.Errorf("a service pinning networks has the per-address set ho6-net-%s", first)
		}
	}
	var pins []balancer.ClientPin
	api.must(200, "GET", "/api/v1/services/net/clients", nil, &pins)
	if len(pins) != 1 || pins[0].Client != network.Addr().String() || pins[0].Backend != first {
		t.Errorf("clients of net: %+v, want %s on %s", pins, network.Addr(), first)
	}
	if n := classifiedAs(api, "net", balancer.ResultPinned); n != 1 {
		t.Errorf("net: %d new clients pinned, want 1 (the network)", n)
	}

	// A pin made by hand for one address moves them all.
	other := map[string]string{"be1": "be2", "be2": "be1"}[first]
	api.must(200, "POST", "/api/v1/services/net/pins", map[string]string{"client": cs[4].String(), "backend": other}, nil)
	for _, c := range cs {
		if a, err := l.greet(c, netVIP); err != nil || a.backend != other {
			t.Errorf("after the network was pinned by hand to %s, client %s got %v, %v", other, c, a, err)
		}
	}

	// The control: each address a client, round-robin over both.
	got = map[string]int{}
	for _, c := range cs {
		a, err := l.greet(c, addrVIP)
		if err != nil {
			t.Fatalf("client %s of addr: %v", c, err)
		}
		got[a.backend]++
	}
	if len(got) != 2 {
		t.Errorf("the control service sent the /64's addresses to %v, want both backends", got)
	}
	if n := classifiedAs(api, "addr", balancer.ResultPinned); n != uint64(len(cs)) {
		t.Errorf("addr: %d new clients pinned, want %d", n, len(cs))
	}
}
