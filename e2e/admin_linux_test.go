package e2e

// Scenarios of the admin API and the CLI that talks to it, against a
// kernel-mode daemon.

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/balancer"
)

// adminListen is where the daemons of these scenarios serve the admin API
// (the default, inside the balancer namespace).
const adminListen = "127.0.0.1:9900"

// adminLab is a lab of three greeters, be1 to be3, and the config of a
// kernel-mode daemon whose service web (first connections proxied, tcp
// health checks) has be1 and be2; be3 is there to be registered.
func adminLab(t *testing.T, clients int) (l *lab, vip netip.AddrPort, bes []backend, cfg daemonConfig) {
	t.Helper()
	l = newLab(t, 3, clients)
	vip, bes = ipv4.at(80), backends(ipv4, 80, "be1", "be2", "be3")
	l.greeters(t, bes)
	cfg = webConfig("kernel", vip, bes[:2], "first_connection: proxy",
		"health: {check: tcp, interval: 200ms, timeout: 200ms, rise: 1, fall: 2}", "balance: maglev")
	return l, vip, bes, cfg
}

// reach is the backend that answers src at vip, trying three times: a
// connection may meet a listener that the API just closed and reopened.
func (l *lab) reach(t *testing.T, src netip.Addr, vip netip.AddrPort) string {
	t.Helper()
	var last error
	for range 3 {
		g, err := l.greet(src, vip)
		if err == nil {
			return g.backend
		}
		last = err
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("client %s: %v", src, last)
	return ""
}

// TestAdminAPI drives every endpoint of DESIGN §6 against a kernel-mode
// daemon and checks what they did in the kernel: pins by hand, backend
// registration with heartbeats and expiry, drain, close/open, metrics that
// match ipset and iptables, and that the changes survive a restart.
func TestAdminAPI(t *testing.T) {
	l, vip, bes, cfg := adminLab(t, 12)
	cfgPath := writeConfig(t, cfg)
	clients := l.clients(ipv4)
	d := startDaemon(t, l.LB, cfgPath, vip)
	api := newAdminAPI(t, l.LB, adminListen, "")
	c0 := clients[0]

	// Liveness and status.
	if code, body := api.do("GET", "/healthz", nil); code != 200 {
		t.Fatalf("/healthz: %d %s", code, body)
	}
	if code, body := api.do("GET", "/readyz", nil); code != 200 || string(body) != "serving\n" {
		t.Fatalf("/readyz after the serving line: %d %q", code, body)
	}
	st := api.status()
	if st.Mode != "kernel" || st.State != "serving" || len(st.Services) != 1 || len(st.Services[0].Backends) != 2 {
		t.Fatalf("status: %+v", st)
	}

	// Pin by hand: the client lands in be2's set and on be2.
	api.must(200, "POST", "/api/v1/services/web/pins", map[string]string{"client": c0.String(), "backend": "be2"}, nil)
	if got := readSets(t, l.LB).setsOf(c0); !slices.Equal(got, []string{"ho-web-be2"}) {
		t.Fatalf("pinned by hand to be2, client is in %v", got)
	}
	if got := l.reach(t, c0, vip); got != "be2" {
		t.Fatalf("client pinned to be2 reached %s", got)
	}
	var pins []balancer.ClientPin
	api.must(200, "GET", "/api/v1/services/web/clients?backend=be2", nil, &pins)
	if len(pins) != 1 || pins[0].Client != c0.String() || pins[0].Key != balancer.ManualKey {
		t.Fatalf("clients of be2: %+v", pins)
	}
	api.must(200, "DELETE", "/api/v1/services/web/pins/"+c0.String(), nil, nil)
	if got := readSets(t, l.LB).setsOf(c0); len(got) != 0 {
		t.Fatalf("unpinned client still in %v", got)
	}

	// Error cases name the problem with the right status.
	for _, c := range []struct {
		method, path string
		body         any
		want         int
	}{
		{"GET", "/api/v1/services/nope/clients", nil, 404},
		{"POST", "/api/v1/services/nope/pins", map[string]string{"client": c0.String(), "backend": "be1"}, 404},
		{"POST", "/api/v1/services/web/pins", map[string]string{"client": "not-an-ip", "backend": "be1"}, 400},
		{"POST", "/api/v1/services/web/pins", map[string]string{"client": c0.String(), "backend": "nope"}, 404},
		{"DELETE", "/api/v1/services/web/pins/999.1.1.1", nil, 400},
		{"POST", "/api/v1/services/web/backends", map[string]string{"name": "be1", "address": bes[0].addr.String()}, 409},
		{"POST", "/api/v1/services/web/backends", map[string]string{"name": "bex", "address": "nowhere"}, 400},
		{"DELETE", "/api/v1/services/web/backends/be1", nil, 409},
		{"DELETE", "/api/v1/services/web/backends/nope", nil, 404},
		{"POST", "/api/v1/services/web/backends/nope/drain", nil, 404},
		{"POST", "/api/v1/services/nope/open", nil, 404},
		{"GET", "/api/v1/reload", nil, 405},
	} {
		api.must(c.want, c.method, c.path, c.body, nil)
	}

	// Register be3 with a TTL: its set and DNAT rule exist within 1 s and it
	// takes clients.
	start := time.Now()
	api.must(200, "POST", "/api/v1/services/web/backends", map[string]any{"name": "be3", "address": bes[2].addr.String(), "ttl": "1500ms"}, nil)
	if took := time.Since(start); took > time.Second {
		t.Errorf("registration took %v, want ≤ 1s", took)
	}
	if _, ok := readSets(t, l.LB)["ho-web-be3"]; !ok {
		t.Fatal("registered backend has no set")
	}
	if rules := l.LB.Run(t, "iptables", "-t", "nat", "-S", "HO-SVC-web"); !strings.Contains(rules, "--to-destination "+bes[2].addr.String()) {
		t.Fatalf("registered backend has no DNAT rule:\n%s", rules)
	}
	home := map[netip.Addr]string{}
	for _, c := range clients[1:] {
		home[c] = l.reach(t, c, vip)
	}
	if len(clientsOf(home, "be3")) == 0 {
		t.Fatalf("no new client reached the registered backend: %v", home)
	}
	// A pinned client's later connection is kernel-forwarded: its bytes,
	// both ways, are its backend's forwarded bytes below.
	heavy, heavyBe := clients[1], home[clients[1]]
	heavyFlow := l.hold(t, heavy, vip, answer{backend: heavyBe, seen: heavy.String()})
	heavyFlow.transfer(t, forwardPayload)
	heavyFlow.c.Close()
	// Heartbeats (here with ttl in seconds) keep it up past its TTL, until
	// the restart below.
	beat := func() (int, []byte, error) {
		return api.try("POST", "/api/v1/services/web/backends", map[string]any{"name": "be3", "address": bes[2].addr.String(), "ttl": 1.5})
	}
	stopBeats, beatsDone := make(chan struct{}), make(chan int)
	go func() {
		failed := 0
		for {
			select {
			case <-stopBeats:
				beatsDone <- failed
				return
			case <-time.After(300 * time.Millisecond):
				if code, _, _ := beat(); code != 200 {
					failed++
				}
			}
		}
	}()
	time.Sleep(2 * time.Second)
	if b, _ := backendStatus(api.status(), "web", "be3"); b.Health != "up" || !b.Registered || b.ExpiresIn <= 0 {
		t.Fatalf("heartbeating backend: %+v", b)
	}

	// Metrics match the kernel: pins against ipset, forwarded packets
	// against the DNAT rules' counters, forwarded bytes against the
	// counting set's entries; the transfer's backend has its bytes. No
	// traffic runs meanwhile.
	fams := api.metrics()
	sets := readSets(t, l.LB)
	counters := dnatPackets(t, l.LB, "HO-SVC-web")
	fwdBytes := forwardBytes(t, l.LB, "hoc-web")
	if got := metricValue(t, fams, "handoff_forwarded_bytes_total", map[string]string{"service": "web", "backend": heavyBe}); got < 2*forwardPayload {
		t.Errorf("handoff_forwarded_bytes_total{backend=%s} = %v after a kernel-forwarded connection moved %d bytes each way", heavyBe, got, forwardPayload)
	}
	if b, _ := backendStatus(api.status(), "web", heavyBe); b.ForwardBytes < 2*forwardPayload {
		t.Errorf("status: %s forwarded %d bytes after a kernel-forwarded connection moved %d bytes each way", heavyBe, b.ForwardBytes, forwardPayload)
	}
	for _, be := range bes {
		labels := map[string]string{"service": "web", "backend": be.name}
		if got, want := metricValue(t, fams, "handoff_pins", labels), float64(len(sets["ho-web-"+be.name])); got != want {
			t.Errorf("handoff_pins{backend=%s} = %v, ipset list has %v", be.name, got, want)
		}
		if got, want := metricValue(t, fams, "handoff_forwarded_packets_total", labels), counters[be.addr.String()]; got != float64(want) {
			t.Errorf("handoff_forwarded_packets_total{backend=%s} = %v, iptables -L -v -x says %d", be.name, got, want)
		}
		if got, want := metricValue(t, fams, "handoff_forwarded_bytes_total", labels), fwdBytes[be.addr.String()]; got != float64(want) {
			t.Errorf("handoff_forwarded_bytes_total{backend=%s} = %v, ipset list says %d", be.name, got, want)
		}
	}
	if v := metricValue(t, fams, "handoff_backend_up", map[string]string{"service": "web", "backend": "be3"}); v != 1 {
		t.Errorf("handoff_backend_up{be3} = %v", v)
	}

	// Drain be1: no new clients; with migrate its clients move now. A live
	// kernel-forwarded flow to be1 is left alone throughout.
	onBe1 := clientsOf(home, "be1")
	if len(onBe1) == 0 {
		t.Fatalf("no client on be1: %v", home)
	}
	live := l.hold(t, onBe1[0], vip, answer{backend: "be1"})
	api.must(200, "POST", "/api/v1/services/web/backends/be1/drain", nil, nil)
	for _, c := range l.addClients(t, ipv4, 6) {
		if got := l.reach(t, c, vip); got == "be1" {
			t.Fatalf("new client %s went to draining be1", c)
		}
	}
	var moved struct{ Moved int }
	api.must(200, "POST", "/api/v1/services/web/backends/be1/drain?migrate=1", nil, &moved)
	if n := len(readSets(t, l.LB)["ho-web-be1"]); n != 0 {
		t.Fatalf("drain --migrate left %d clients on be1", n)
	}
	if moved.Moved != len(onBe1) {
		t.Errorf("drain --migrate moved %d, be1 had %d clients", moved.Moved, len(onBe1))
	}
	live.echo(t, "after drain --migrate")
	if got := l.reach(t, onBe1[0], vip); got == "be1" {
		t.Error("a migrated client's next connection still reaches be1")
	}

	// Close stops the listener; open brings it back.
	api.must(200, "POST", "/api/v1/services/web/close", nil, nil)
	if listening(l.LB, vip) {
		t.Fatal("closed service still listens")
	}
	api.must(200, "POST", "/api/v1/services/web/open", nil, nil)
	if !listening(l.LB, vip) {
		t.Fatal("opened service does not listen")
	}

	// Pins, registrations and drains survive a restart.
	close(stopBeats)
	if failed := <-beatsDone; failed > 0 {
		t.Errorf("%d heartbeats failed", failed)
	}
	before := readSets(t, l.LB)
	d.stop(syscall.SIGTERM)
	d = startDaemon(t, l.LB, cfgPath, vip)
	st = api.status()
	if b, ok := backendStatus(st, "web", "be3"); !ok || !b.Registered {
		t.Fatalf("registration lost on restart: %+v", st)
	}
	if b, _ := backendStatus(st, "web", "be1"); !b.Draining {
		t.Fatal("drain lost on restart")
	}
	after := readSets(t, l.LB)
	for _, set := range []string{"ho-web-be1", "ho-web-be2", "ho-web-be3"} {
		if len(before[set]) != len(after[set]) {
			t.Errorf("restart changed %s: %d → %d members", set, len(before[set]), len(after[set]))
		}
	}
	api.must(200, "POST", "/api/v1/services/web/backends/be1/drain?undo=1", nil, nil)
	checkCLI(t, l, c0)

	// Without heartbeats be3 expires: its clients migrate and its set empties.
	if len(after["ho-web-be3"]) == 0 {
		t.Fatal("be3 has no clients to migrate")
	}
	waitUntil(t, time.Now(), 5*time.Second, "the expired backend's set empty", func() bool {
		return len(readSets(t, l.LB)["ho-web-be3"]) == 0
	})
	for _, c := range clientsOf(home, "be3") {
		if got := l.reach(t, c, vip); got == "be3" {
			t.Fatalf("client %s of expired be3 still reaches it", c)
		}
	}
	if b, _ := backendStatus(api.status(), "web", "be3"); b.Health != "down" {
		t.Fatalf("expired backend: %+v", b)
	}

	// Deregistration removes its set and rule.
	api.must(200, "DELETE", "/api/v1/services/web/backends/be3", nil, nil)
	if _, ok := readSets(t, l.LB)["ho-web-be3"]; ok {
		t.Fatal("deregistered backend's set remains")
	}
	if strings.Contains(d.log(), "panic") {
		t.Fatalf("daemon panicked:\n%s", d.log())
	}
}

// checkCLI drives the CLI against the daemon in l.LB: tables for people,
// JSON for scripts, one line and exit 1 for errors, and the kernel state
// each command changes.
func checkCLI(t *testing.T, l *lab, client netip.Addr) {
	t.Helper()
	c := client.String()
	cli := func(args ...string) result { t.Helper(); return handoff(t, l.LB, args...) }
	r := cli("status")
	if r.code != 0 {
		t.Fatalf("handoff status: exit %d: %s", r.code, r.stderr)
	}
	// One header row per table, and every backend's row with aligned columns.
	for _, want := range []string{"mode", "kernel", "SERVICE", "web", "be1", "be2", "be3", "HEALTH"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("handoff status lacks %q:\n%s", want, r.stdout)
		}
	}
	header := ""
	for _, line := range strings.Split(r.stdout, "\n") {
		if strings.Contains(line, "BACKEND") {
			header = line
		}
		if header != "" && strings.HasPrefix(line, "web ") && strings.Index(line, "be") != strings.Index(header, "BACKEND") {
			t.Errorf("status table not aligned:\n%s", r.stdout)
		}
	}

	if r := cli("pin", "--service", "web", c, "be2"); r.code != 0 {
		t.Fatalf("handoff pin: exit %d: %s", r.code, r.stderr)
	}
	if got := readSets(t, l.LB).setsOf(client); !slices.Equal(got, []string{"ho-web-be2"}) {
		t.Fatalf("after handoff pin the client is in %v", got)
	}
	r = cli("clients", "--service", "web", "--backend", "be2", "--json")
	var pins []balancer.ClientPin
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &pins) != nil {
		t.Fatalf("handoff clients --json: exit %d: %s%s", r.code, r.stdout, r.stderr)
	}
	if !slices.ContainsFunc(pins, func(p balancer.ClientPin) bool { return p.Client == c && p.Key == balancer.ManualKey }) {
		t.Errorf("handoff clients --json lacks the manual pin of %s: %s", c, r.stdout)
	}
	if r := cli("clients", "--service", "web"); !strings.Contains(r.stdout, "CLIENT") || !strings.Contains(r.stdout, c) {
		t.Errorf("handoff clients table:\n%s", r.stdout)
	}
	if r := cli("unpin", "--service", "web", c); r.code != 0 {
		t.Fatalf("handoff unpin: exit %d: %s", r.code, r.stderr)
	}
	if got := readSets(t, l.LB).setsOf(client); len(got) != 0 {
		t.Fatalf("after handoff unpin the client is in %v", got)
	}
	if r := cli("drain", "--service", "web", "be2"); r.code != 0 {
		t.Fatalf("handoff drain: exit %d: %s", r.code, r.stderr)
	}
	if r := cli("drain", "--service", "web", "be2", "--undo"); r.code != 0 {
		t.Fatalf("handoff drain --undo: exit %d: %s", r.code, r.stderr)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"pin", "--service", "nope", c, "be1"}, "not found"},
		{[]string{"pin", "--service", "web", "300.1.1.1", "be1"}, "300.1.1.1"},
		{[]string{"pin", "--service", "web", c, "nope"}, "nope"},
		{[]string{"drain", "--service", "web", "be1", "--migrate", "--undo"}, "--undo"},
		{[]string{"status", "--admin", "127.0.0.1:1"}, "cannot reach the admin API"},
	} {
		r := cli(tc.args...)
		if lines := strings.Split(strings.TrimSpace(r.stderr), "\n"); r.code != 1 || len(lines) != 1 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("handoff %s: exit %d, stderr %q; want exit 1 and one line naming %q", strings.Join(tc.args, " "), r.code, r.stderr, tc.want)
		}
	}
}

// TestAdminToken: a non-loopback admin address needs a token file; without
// the right bearer token the API answers 401, with it 200.
func TestAdminToken(t *testing.T) {
	l, vip, _, cfg := adminLab(t, 1)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("s3cret-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	listen := ipv4.vip.String() + ":9900"

	// Without the token file the daemon refuses to start.
	cfg.admin = "{listen: " + strconv.Quote(listen) + "}"
	noToken := writeConfig(t, cfg)
	if r := handoff(t, l.LB, "run", "-c", noToken); r.code == 0 || !strings.Contains(r.stdout+r.stderr, "token_file") {
		t.Fatalf("non-loopback admin without a token: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	cfg.admin = "{listen: " + strconv.Quote(listen) + ", token_file: " + strconv.Quote(tokenFile) + "}"
	startDaemon(t, l.LB, writeConfig(t, cfg), vip)
	for _, c := range []struct {
		token string
		want  int
	}{{"", 401}, {"wrong", 401}, {"s3cret-token", 200}} {
		newAdminAPI(t, l.Client, listen, c.token).must(c.want, "GET", "/api/v1/status", nil, nil)
	}
	// /healthz answers liveness probes without a token.
	if code, _ := newAdminAPI(t, l.Client, listen, "").do("GET", "/healthz", nil); code != 200 {
		t.Fatalf("/healthz without a token: %d", code)
	}
}
