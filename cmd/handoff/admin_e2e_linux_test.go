package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/internal/nstest"
)

// admClient talks HTTP to the admin API of a daemon inside ns.
type admClient struct {
	t     *testing.T
	ns    *nstest.NS
	base  string
	token string
	hc    *http.Client
}

func newAdmClient(t *testing.T, ns *nstest.NS, listen, token string) *admClient {
	return &admClient{t: t, ns: ns, base: "http://" + listen, token: token, hc: &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return ns.Dial(ctx, network, addr)
		}},
	}}
}

// do sends a request and returns the status and body.
func (c *admClient) do(method, path string, body any) (int, []byte) {
	c.t.Helper()
	code, b, err := c.try(method, path, body)
	if err != nil {
		c.t.Fatal(err)
	}
	return code, b
}

// try is do for any goroutine: it returns errors instead of failing.
func (c *admClient) try(method, path string, body any) (int, []byte, error) {
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, r)
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, fmt.Errorf("%s %s: reading the body: %w", method, path, err)
	}
	return resp.StatusCode, b, nil
}

// must sends a request that must answer want; it decodes the body into out.
func (c *admClient) must(want int, method, path string, body, out any) {
	c.t.Helper()
	code, b := c.do(method, path, body)
	if code != want {
		c.t.Fatalf("%s %s: status %d, want %d: %s", method, path, code, want, b)
	}
	if want >= 400 {
		var e struct{ Error string }
		if err := json.Unmarshal(b, &e); err != nil || e.Error == "" {
			c.t.Fatalf("%s %s: error body %q is not {\"error\": ...}", method, path, b)
		}
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			c.t.Fatalf("%s %s: %v: %s", method, path, err, b)
		}
	}
}

func (c *admClient) status() balancer.Status {
	c.t.Helper()
	var st balancer.Status
	c.must(200, "GET", "/api/v1/status", nil, &st)
	return st
}

func admBackend(t *testing.T, st balancer.Status, svc, name string) (balancer.BackendStatus, bool) {
	t.Helper()
	for _, s := range st.Services {
		if s.Name == svc {
			for _, b := range s.Backends {
				if b.Name == name {
					return b, true
				}
			}
		}
	}
	return balancer.BackendStatus{}, false
}

// metrics scrapes /metrics and parses it with Prometheus' text parser.
func (c *admClient) metrics() map[string]*dto.MetricFamily {
	c.t.Helper()
	code, b := c.do("GET", "/metrics", nil)
	if code != 200 {
		c.t.Fatalf("/metrics: %d %s", code, b)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(b))
	if err != nil {
		c.t.Fatalf("/metrics does not parse: %v", err)
	}
	return fams
}

// admValue returns the value of the series of family name whose labels
// include want.
func admValue(t *testing.T, fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	t.Helper()
	f := fams[name]
	if f == nil {
		t.Fatalf("/metrics has no %s", name)
	}
next:
	for _, m := range f.GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if got[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue()
		case m.Gauge != nil:
			return m.GetGauge().GetValue()
		case m.Untyped != nil:
			return m.GetUntyped().GetValue()
		}
	}
	t.Fatalf("/metrics has no %s%v", name, want)
	return 0
}

// admCLI runs a handoff subcommand inside ns and returns its stdout,
// stderr and exit code.
func admCLI(t *testing.T, ns *nstest.NS, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name, binary(t)}, args...)...)
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return o.String(), e.String(), code
}

// admSetMembers counts the members of each set in ns.
func admSetMembers(t *testing.T, ns *nstest.NS) map[string]int {
	out := map[string]int{}
	for name, ms := range members(t, ns) {
		out[name] = len(ms)
	}
	return out
}

const admConfig = `
mode: kernel
log: {level: debug}
admin: {listen: "127.0.0.1:9900"}
state_dir: STATE_DIR
services:
  - name: web
    listen: VIP
    first_connection: proxy
    client_ttl: 10m
    health: {check: tcp, interval: 200ms, timeout: 200ms, rise: 1, fall: 2}
    pools:
      - name: default
        balance: maglev
        backends:
          - {name: be1, address: BE1}
          - {name: be2, address: BE2}
`

func admLab(t *testing.T, clients int) (tp *nstest.Topology, v4 []netip.Addr, vip netip.AddrPort, be []netip.AddrPort, cfgPath string) {
	t.Helper()
	tp, v4, _ = lab3(t, clients)
	vip = netip.AddrPortFrom(nstest.LBClient4, 80)
	for i := range 3 {
		be = append(be, netip.AddrPortFrom(nstest.Backend4(i), 80))
		greeter(t, tp.Backends[i], fmt.Sprintf("be%d", i+1), be[i])
	}
	cfg := strings.NewReplacer("VIP", strconv.Quote(vip.String()), "BE1", strconv.Quote(be[0].String()), "BE2", strconv.Quote(be[1].String())).Replace(admConfig)
	return tp, v4, vip, be, writeConfig(t, cfg)
}

// lab3 is lab with three backends.
func lab3(t *testing.T, clients int) (*nstest.Topology, []netip.Addr, []netip.Addr) {
	t.Helper()
	nstest.RequireRoot(t)
	tp := nstest.NewTopology(t, 3)
	v4, v6 := tp.AddClients(t, clients-1)
	return tp, append([]netip.Addr{nstest.Client4}, v4...), append([]netip.Addr{nstest.Client6}, v6...)
}

func admGreetName(t *testing.T, ns *nstest.NS, src netip.Addr, vip netip.AddrPort) string {
	t.Helper()
	var last error
	for range 3 {
		g, err := greet(ns, src, vip)
		if err == nil {
			name, _, _ := strings.Cut(g, " ")
			return name
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
	tp, clients, vip, be, cfgPath := admLab(t, 12)
	d := startDaemon(t, tp.LB, cfgPath, vip)
	api := newAdmClient(t, tp.LB, "127.0.0.1:9900", "")
	c0 := clients[0].String()

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
	api.must(200, "POST", "/api/v1/services/web/pins", map[string]string{"client": c0, "backend": "be2"}, nil)
	if got := setsOf(members(t, tp.LB), c0); len(got) != 1 || got[0] != "ho-web-be2" {
		t.Fatalf("pinned by hand to be2, client is in %v", got)
	}
	if got := admGreetName(t, tp.Client, clients[0], vip); got != "be2" {
		t.Fatalf("client pinned to be2 reached %s", got)
	}
	var pins []balancer.ClientPin
	api.must(200, "GET", "/api/v1/services/web/clients?backend=be2", nil, &pins)
	if len(pins) != 1 || pins[0].Client != c0 || pins[0].Key != balancer.ManualKey {
		t.Fatalf("clients of be2: %+v", pins)
	}
	api.must(200, "DELETE", "/api/v1/services/web/pins/"+c0, nil, nil)
	if got := setsOf(members(t, tp.LB), c0); len(got) != 0 {
		t.Fatalf("unpinned client still in %v", got)
	}

	// Error cases name the problem with the right status.
	for _, c := range []struct {
		method, path string
		body         any
		want         int
	}{
		{"GET", "/api/v1/services/nope/clients", nil, 404},
		{"POST", "/api/v1/services/nope/pins", map[string]string{"client": c0, "backend": "be1"}, 404},
		{"POST", "/api/v1/services/web/pins", map[string]string{"client": "not-an-ip", "backend": "be1"}, 400},
		{"POST", "/api/v1/services/web/pins", map[string]string{"client": c0, "backend": "nope"}, 404},
		{"DELETE", "/api/v1/services/web/pins/999.1.1.1", nil, 400},
		{"POST", "/api/v1/services/web/backends", map[string]string{"name": "be1", "address": be[0].String()}, 409},
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
	api.must(200, "POST", "/api/v1/services/web/backends", map[string]any{"name": "be3", "address": be[2].String(), "ttl": "1500ms"}, nil)
	if took := time.Since(start); took > time.Second {
		t.Errorf("registration took %v, want ≤ 1s", took)
	}
	if _, ok := members(t, tp.LB)["ho-web-be3"]; !ok {
		t.Fatal("registered backend has no set")
	}
	if rules := tp.LB.Run(t, "iptables", "-t", "nat", "-S", "HO-SVC-web"); !strings.Contains(rules, "--to-destination "+be[2].String()) {
		t.Fatalf("registered backend has no DNAT rule:\n%s", rules)
	}
	home := map[netip.Addr]string{}
	for _, c := range clients[1:] {
		home[c] = admGreetName(t, tp.Client, c, vip)
	}
	onBe3 := 0
	for _, name := range home {
		if name == "be3" {
			onBe3++
		}
	}
	if onBe3 == 0 {
		t.Fatalf("no new client reached the registered backend: %v", home)
	}
	// Heartbeats (here with ttl in seconds) keep it up past its TTL, until
	// the restart below.
	beat := func() (int, []byte, error) {
		return api.try("POST", "/api/v1/services/web/backends", map[string]any{"name": "be3", "address": be[2].String(), "ttl": 1.5})
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
	if b, _ := admBackend(t, api.status(), "web", "be3"); b.Health != "up" || !b.Registered || b.ExpiresIn <= 0 {
		t.Fatalf("heartbeating backend: %+v", b)
	}

	// Metrics match the kernel: pins against ipset, forwarded packets
	// against the DNAT rules' counters. No traffic runs meanwhile.
	fams := api.metrics()
	sets := admSetMembers(t, tp.LB)
	for _, b := range []string{"be1", "be2", "be3"} {
		if got, want := admValue(t, fams, "handoff_pins", map[string]string{"service": "web", "backend": b}), float64(sets["ho-web-"+b]); got != want {
			t.Errorf("handoff_pins{backend=%s} = %v, ipset list has %v", b, got, want)
		}
	}
	counters := admDNATCounters(t, tp.LB)
	for i, b := range []string{"be1", "be2", "be3"} {
		got := admValue(t, fams, "handoff_forwarded_packets_total", map[string]string{"service": "web", "backend": b})
		if want := counters[be[i].String()]; got != float64(want) {
			t.Errorf("handoff_forwarded_packets_total{backend=%s} = %v, iptables -L -v -x says %d", b, got, want)
		}
	}
	if v := admValue(t, fams, "handoff_backend_up", map[string]string{"service": "web", "backend": "be3"}); v != 1 {
		t.Errorf("handoff_backend_up{be3} = %v", v)
	}

	// Drain be1: no new clients; with migrate its clients move now. A live
	// kernel-forwarded flow to be1 is left alone throughout.
	var onBe1Client netip.Addr
	for c, name := range home {
		if name == "be1" {
			onBe1Client = c
		}
	}
	if !onBe1Client.IsValid() {
		t.Fatalf("no client on be1: %v", home)
	}
	live := admOpenFlow(t, tp, onBe1Client, vip, "be1")
	api.must(200, "POST", "/api/v1/services/web/backends/be1/drain", nil, nil)
	fresh, _ := tp.AddClients(t, 6)
	for _, c := range fresh {
		if got := admGreetName(t, tp.Client, c, vip); got == "be1" {
			t.Fatalf("new client %s went to draining be1", c)
		}
	}
	var moved struct{ Moved int }
	api.must(200, "POST", "/api/v1/services/web/backends/be1/drain?migrate=1", nil, &moved)
	if n := len(members(t, tp.LB)["ho-web-be1"]); n != 0 {
		t.Fatalf("drain --migrate left %d clients on be1", n)
	}
	onBe1 := 0
	for _, name := range home {
		if name == "be1" {
			onBe1++
		}
	}
	if moved.Moved != onBe1 {
		t.Errorf("drain --migrate moved %d, be1 had %d clients", moved.Moved, onBe1)
	}
	live("after drain --migrate")
	if got := admGreetName(t, tp.Client, onBe1Client, vip); got == "be1" {
		t.Error("a migrated client's next connection still reaches be1")
	}

	// Close stops the listener; open brings it back.
	api.must(200, "POST", "/api/v1/services/web/close", nil, nil)
	if out := tp.LB.Run(t, "ss", "-Hltn", "src", vip.String()); strings.Contains(out, "LISTEN") {
		t.Fatal("closed service still listens")
	}
	api.must(200, "POST", "/api/v1/services/web/open", nil, nil)
	if out := tp.LB.Run(t, "ss", "-Hltn", "src", vip.String()); !strings.Contains(out, "LISTEN") {
		t.Fatal("opened service does not listen")
	}

	// Pins, registrations and drains survive a restart.
	close(stopBeats)
	if failed := <-beatsDone; failed > 0 {
		t.Errorf("%d heartbeats failed", failed)
	}
	before := members(t, tp.LB)
	d.stop(syscall.SIGTERM)
	startDaemon(t, tp.LB, cfgPath, vip)
	st = api.status()
	if b, ok := admBackend(t, st, "web", "be3"); !ok || !b.Registered {
		t.Fatalf("registration lost on restart: %+v", st)
	}
	if b, _ := admBackend(t, st, "web", "be1"); !b.Draining {
		t.Fatal("drain lost on restart")
	}
	after := members(t, tp.LB)
	for _, set := range []string{"ho-web-be1", "ho-web-be2", "ho-web-be3"} {
		if len(before[set]) != len(after[set]) {
			t.Errorf("restart changed %s: %d → %d members", set, len(before[set]), len(after[set]))
		}
	}
	api.must(200, "POST", "/api/v1/services/web/backends/be1/drain?undo=1", nil, nil)
	admCLIChecks(t, tp, clients[0])

	// Without heartbeats be3 expires: its clients migrate and its set empties.
	onBe3 = len(after["ho-web-be3"])
	if onBe3 == 0 {
		t.Fatal("be3 has no clients to migrate")
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(members(t, tp.LB)["ho-web-be3"]) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("expired backend's set never emptied")
		}
		time.Sleep(100 * time.Millisecond)
	}
	for c, name := range home {
		if name != "be3" {
			continue
		}
		if got := admGreetName(t, tp.Client, c, vip); got == "be3" {
			t.Fatalf("client %s of expired be3 still reaches it", c)
		}
	}
	if b, _ := admBackend(t, api.status(), "web", "be3"); b.Health != "down" {
		t.Fatalf("expired backend: %+v", b)
	}

	// Deregistration removes its set and rule.
	api.must(200, "DELETE", "/api/v1/services/web/backends/be3", nil, nil)
	if _, ok := members(t, tp.LB)["ho-web-be3"]; ok {
		t.Fatal("deregistered backend's set remains")
	}
	if strings.Contains(d.log(), "panic") {
		t.Fatalf("daemon panicked:\n%s", d.log())
	}
}

// admCLIChecks drives the CLI against the daemon in tp.LB: tables for
// people, JSON for scripts, one line and exit 1 for errors, and the kernel
// state each command changes.
func admCLIChecks(t *testing.T, tp *nstest.Topology, client netip.Addr) {
	t.Helper()
	c := client.String()
	out, errOut, code := admCLI(t, tp.LB, "status")
	if code != 0 {
		t.Fatalf("handoff status: exit %d: %s", code, errOut)
	}
	// One header row per table, and every backend's row with aligned columns.
	for _, want := range []string{"mode", "kernel", "SERVICE", "web", "be1", "be2", "be3", "HEALTH"} {
		if !strings.Contains(out, want) {
			t.Errorf("handoff status lacks %q:\n%s", want, out)
		}
	}
	header := ""
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "BACKEND") {
			header = l
		}
		if header != "" && strings.HasPrefix(l, "web ") && strings.Index(l, "be") != strings.Index(header, "BACKEND") {
			t.Errorf("status table not aligned:\n%s", out)
		}
	}

	if _, errOut, code := admCLI(t, tp.LB, "pin", "--service", "web", c, "be2"); code != 0 {
		t.Fatalf("handoff pin: exit %d: %s", code, errOut)
	}
	if got := setsOf(members(t, tp.LB), c); len(got) != 1 || got[0] != "ho-web-be2" {
		t.Fatalf("after handoff pin the client is in %v", got)
	}
	out, errOut, code = admCLI(t, tp.LB, "clients", "--service", "web", "--backend", "be2", "--json")
	var pins []balancer.ClientPin
	if code != 0 || json.Unmarshal([]byte(out), &pins) != nil {
		t.Fatalf("handoff clients --json: exit %d: %s%s", code, out, errOut)
	}
	found := false
	for _, p := range pins {
		found = found || p.Client == c && p.Key == balancer.ManualKey
	}
	if !found {
		t.Errorf("handoff clients --json lacks the manual pin of %s: %s", c, out)
	}
	if out, _, _ := admCLI(t, tp.LB, "clients", "--service", "web"); !strings.Contains(out, "CLIENT") || !strings.Contains(out, c) {
		t.Errorf("handoff clients table:\n%s", out)
	}
	if _, errOut, code := admCLI(t, tp.LB, "unpin", "--service", "web", c); code != 0 {
		t.Fatalf("handoff unpin: exit %d: %s", code, errOut)
	}
	if got := setsOf(members(t, tp.LB), c); len(got) != 0 {
		t.Fatalf("after handoff unpin the client is in %v", got)
	}
	if _, errOut, code := admCLI(t, tp.LB, "drain", "--service", "web", "be2"); code != 0 {
		t.Fatalf("handoff drain: exit %d: %s", code, errOut)
	}
	if _, errOut, code := admCLI(t, tp.LB, "drain", "--service", "web", "be2", "--undo"); code != 0 {
		t.Fatalf("handoff drain --undo: exit %d: %s", code, errOut)
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
		_, errOut, code := admCLI(t, tp.LB, tc.args...)
		lines := strings.Split(strings.TrimSpace(errOut), "\n")
		if code != 1 || len(lines) != 1 || !strings.Contains(errOut, tc.want) {
			t.Errorf("handoff %s: exit %d, stderr %q; want exit 1 and one line naming %q", strings.Join(tc.args, " "), code, errOut, tc.want)
		}
	}
}

// admOpenFlow opens a connection from src to vip that must reach backend
// want, and returns a check that it still echoes.
func admOpenFlow(t *testing.T, tp *nstest.Topology, src netip.Addr, vip netip.AddrPort, want string) func(when string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, err := tp.Client.DialFrom(ctx, src, "tcp", vip.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	r := bufio.NewReader(c)
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if g, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(g, want+" ") {
		t.Fatalf("flow from %s: greeting %q, %v; want %s", src, g, err, want)
	}
	return func(when string) {
		t.Helper()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		msg := "ping " + when + "\n"
		if _, err := io.WriteString(c, msg); err != nil {
			t.Fatalf("live flow %s: %v", when, err)
		}
		if got, err := r.ReadString('\n'); err != nil || got != msg {
			t.Fatalf("live flow %s: %q, %v", when, got, err)
		}
	}
}

// admDNATCounters reads the packet counters of the DNAT rules of
// HO-SVC-web, keyed by destination, from iptables -L -v -x.
func admDNATCounters(t *testing.T, ns *nstest.NS) map[string]uint64 {
	t.Helper()
	out := ns.Run(t, "iptables", "-t", "nat", "-L", "HO-SVC-web", "-v", "-x", "-n")
	re := regexp.MustCompile(`^\s*(\d+)\s+\d+\s+DNAT\b.*to:(\S+)`)
	m := map[string]uint64{}
	for _, l := range strings.Split(out, "\n") {
		if s := re.FindStringSubmatch(l); s != nil {
			n, _ := strconv.ParseUint(s[1], 10, 64)
			m[s[2]] += n
		}
	}
	return m
}

// TestAdminToken: a non-loopback admin address needs a token file; without
// the right bearer token the API answers 401, with it 200.
func TestAdminToken(t *testing.T) {
	tp, _, vip, be, _ := admLab(t, 1)
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	os.WriteFile(tokenFile, []byte("s3cret-token\n"), 0o600)
	cfg := strings.NewReplacer("VIP", strconv.Quote(vip.String()), "BE1", strconv.Quote(be[0].String()), "BE2", strconv.Quote(be[1].String()),
		`admin: {listen: "127.0.0.1:9900"}`, `admin: {listen: "198.18.0.1:9900", token_file: `+strconv.Quote(tokenFile)+`}`).Replace(admConfig)

	// Without the token file the daemon refuses to start.
	noToken := writeConfig(t, strings.Replace(cfg, `, token_file: `+strconv.Quote(tokenFile), "", 1))
	if out, err := exec.Command("ip", "netns", "exec", tp.LB.Name, binary(t), "run", "-c", noToken).CombinedOutput(); err == nil || !strings.Contains(string(out), "token_file") {
		t.Fatalf("non-loopback admin without a token: %v\n%s", err, out)
	}

	startDaemon(t, tp.LB, writeConfig(t, cfg), vip)
	for _, c := range []struct {
		token string
		want  int
	}{{"", 401}, {"wrong", 401}, {"s3cret-token", 200}} {
		api := newAdmClient(t, tp.Client, "198.18.0.1:9900", c.token)
		api.must(c.want, "GET", "/api/v1/status", nil, nil)
	}
	// /healthz answers liveness probes without a token.
	if code, _ := newAdmClient(t, tp.Client, "198.18.0.1:9900", "").do("GET", "/healthz", nil); code != 200 {
		t.Fatalf("/healthz without a token: %d", code)
	}
}
