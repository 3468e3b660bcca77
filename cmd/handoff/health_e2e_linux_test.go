package main

// End-to-end tests of health checks and migration (issue 5): the real
// binary in the balancer namespace of a fresh lab, backends that are real
// processes killed with SIGKILL, and the kernel state read back with ipset
// and conntrack. They need root; see nstest.RequireRoot.
//
// Helper names start with hc: other files add tests to this package.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/internal/nstest"
)

// Health timing of every test: interval 200ms, rise 2, fall 2. A transition
// must be complete within rise|fall × interval + 1s (the bound).
const (
	hcInterval = 200 * time.Millisecond
	hcRise     = 2
	hcFall     = 2
	hcBound    = hcFall*hcInterval + time.Second
)

// hcHealthTCP is the health block of the kill tests.
var hcHealthTCP = fmt.Sprintf("{check: tcp, interval: %s, timeout: %s, rise: %d, fall: %d}", hcInterval, hcInterval, hcRise, hcFall)

// Environment of the helper process (TestHCHelperProcess).
const (
	hcEnvAddr = "HANDOFF_HC_HELPER_ADDR"
	hcEnvName = "HANDOFF_HC_HELPER_NAME"
)

// TestHCHelperProcess is not a test: started by hcStartProc with hcEnvAddr
// set, it is a backend server process (see hcServer) that runs until it is
// killed or its stdin closes. Without the variable it does nothing.
func TestHCHelperProcess(*testing.T) {
	addr := os.Getenv(hcEnvAddr)
	if addr == "" {
		return
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	s := &hcServer{name: os.Getenv(hcEnvName)}
	go s.serve(ln)
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin) // the test closed it, or died
	os.Exit(0)
}

// Modes of an hcServer's answers to health checks.
const (
	hcGood int32 = iota // greet everyone
	hcBad               // answer "sick" to every check
	hcFlap              // answer "sick" to every second check
)

// hcServer is a backend: it greets "NAME CLIENT-IP\n" and echoes until the
// client half-closes, as greeter does. Connections from the balancer's
// backend-side address (health checks) get "sick\n" instead when mode says
// so; a send-expect check expecting that address then fails.
type hcServer struct {
	name   string
	mode   atomic.Int32
	fromLB atomic.Int64 // connections from the balancer
	bad    atomic.Int64 // "sick" answers given

	mu    sync.Mutex
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

// hcServe runs an hcServer in ns on addr until the test ends.
func hcServe(t *testing.T, ns *nstest.NS, name string, addr netip.AddrPort) *hcServer {
	t.Helper()
	s := &hcServer{name: name}
	ln := ns.Listen(t, "tcp", addr.String())
	go s.serve(ln)
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *hcServer) serve(ln net.Listener) {
	s.wg.Add(1)
	defer s.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handle(c)
		}()
	}
}

func (s *hcServer) handle(c net.Conn) {
	defer c.Close()
	ra := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
	if ra == nstest.LBBack4 || ra == nstest.LBBack6 {
		n := s.fromLB.Add(1)
		if m := s.mode.Load(); m == hcBad || (m == hcFlap && n%2 == 0) {
			s.bad.Add(1)
			io.WriteString(c, "sick\n")
			return
		}
	}
	s.mu.Lock()
	if s.conns == nil {
		s.conns = map[net.Conn]bool{}
	}
	s.conns[c] = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}()
	fmt.Fprintf(c, "%s %s\n", s.name, ra)
	io.Copy(c, c)
	c.(*net.TCPConn).CloseWrite()
}

// hcProc is a backend server running as its own process in a backend
// namespace, so that it can be killed like a crashed server.
type hcProc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// hcStartProc starts an hcServer process named name on addr in ns and waits
// until it listens. It is killed when the test ends.
func hcStartProc(t *testing.T, ns *nstest.NS, name string, addr netip.AddrPort) *hcProc {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// ip netns exec execs the command itself: the PID is the server's.
	cmd := exec.Command("ip", "netns", "exec", ns.Name, exe, "-test.run=^TestHCHelperProcess$")
	cmd.Env = append(os.Environ(), hcEnvAddr+"="+addr.String(), hcEnvName+"="+name)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &hcProc{cmd: cmd, done: make(chan struct{})}
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err == nil && line != "ready\n" {
			err = fmt.Errorf("said %q", line)
		}
		ready <- err
	}()
	select {
	case err = <-ready:
	case <-time.After(10 * time.Second):
		err = fmt.Errorf("not ready after 10s")
	}
	go func() { cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		stdin.Close()
		p.kill()
	})
	if err != nil {
		p.kill()
		t.Fatalf("backend process %s on %s: %v\n%s", name, addr, err, stderr.String())
	}
	if exe2, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", cmd.Process.Pid)); exe2 != exe {
		t.Fatalf("backend process %s: PID %d runs %q, want the test binary", name, cmd.Process.Pid, exe2)
	}
	return p
}

// kill sends SIGKILL and waits until the process is gone (its sockets
// closed). It returns when the signal was sent.
func (p *hcProc) kill() time.Time {
	at := time.Now()
	select {
	case <-p.done:
		return at
	default:
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
	return at
}

// hcLab builds a lab with n backends and clients client addresses.
func hcLab(t *testing.T, n, clients int) (*nstest.Topology, []netip.Addr) {
	t.Helper()
	nstest.RequireRoot(t)
	tp := nstest.NewTopology(t, n)
	v4, _ := tp.AddClients(t, clients-1)
	return tp, append([]netip.Addr{nstest.Client4}, v4...)
}

// hcBackendAddrs returns the addresses of n backends on port 80.
func hcBackendAddrs(n int) []netip.AddrPort {
	var as []netip.AddrPort
	for i := range n {
		as = append(as, netip.AddrPortFrom(nstest.Backend4(i), 80))
	}
	return as
}

// hcConfig renders a one-service config. extra holds the service's other
// fields (indented four spaces); backend i is names[i] at addrs[i].
func hcConfig(mode string, vip netip.AddrPort, extra string, names []string, addrs []netip.AddrPort) string {
	var b strings.Builder
	fmt.Fprintf(&b, "mode: %s\nlog: {level: debug}\nstate_dir: STATE_DIR\nservices:\n  - name: web\n    listen: %q\n    client_ttl: 10m\n", mode, vip.String())
	b.WriteString(extra)
	b.WriteString("    backends:\n")
	for i, n := range names {
		fmt.Fprintf(&b, "      - {name: %s, address: %q}\n", n, addrs[i].String())
	}
	return b.String()
}

// hcGreet connects from client to vip and returns the answering backend's
// name and the client address it saw.
func hcGreet(tp *nstest.Topology, client netip.Addr, vip netip.AddrPort) (name, seen string, err error) {
	g, err := greet(tp.Client, client, vip)
	if err != nil {
		return "", "", err
	}
	name, seen, _ = strings.Cut(g, " ")
	return name, seen, nil
}

// hcPinAll gives every client its backend and returns it. In kernel mode
// (reset) the first connection must be reset and the retry must reach a
// backend in-kernel, seeing the client's own address.
func hcPinAll(t *testing.T, tp *nstest.Topology, d *daemon, clients []netip.Addr, vip netip.AddrPort, kernel bool) map[netip.Addr]string {
	t.Helper()
	home := map[netip.Addr]string{}
	for _, c := range clients {
		if kernel {
			if g, err := greet(tp.Client, c, vip); err == nil {
				t.Fatalf("client %s: first connection answered %q, want a reset", c, g)
			}
		}
		name, seen, err := hcGreet(tp, c, vip)
		if err != nil {
			t.Fatalf("client %s: %v\n%s", c, err, d.log())
		}
		if kernel && seen != c.String() {
			t.Fatalf("client %s: %s saw %s, want the client's address (in-kernel)", c, name, seen)
		}
		home[c] = name
	}
	return home
}

// hcClientsOf returns the clients whose home is backend, in address order.
func hcClientsOf(home map[netip.Addr]string, backend string) []netip.Addr {
	var cs []netip.Addr
	for c, b := range home {
		if b == backend {
			cs = append(cs, c)
		}
	}
	slices.SortFunc(cs, netip.Addr.Compare)
	return cs
}

// hcHold opens a kernel-forwarded connection from client that stays open
// until the test ends, and checks that backend answered it.
func hcHold(t *testing.T, tp *nstest.Topology, client netip.Addr, vip netip.AddrPort, backend string) *bufio.ReadWriter {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, err := tp.Client.DialFrom(ctx, client, "tcp", vip.String())
	if err != nil {
		t.Fatalf("client %s: long-lived connection: %v", client, err)
	}
	t.Cleanup(func() { c.Close() })
	rw := bufio.NewReadWriter(bufio.NewReader(c), bufio.NewWriter(c))
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	line, err := rw.ReadString('\n')
	c.SetReadDeadline(time.Time{})
	if err != nil || !strings.HasPrefix(line, backend+" "+client.String()) {
		t.Fatalf("client %s: long-lived connection got %q, %v; want %s seeing the client", client, line, err, backend)
	}
	return rw
}

// hcSet returns the members of one ipset in ns.
func hcSet(t *testing.T, ns *nstest.NS, set string) []string {
	t.Helper()
	return members(t, ns)[set]
}

// hcFlows returns the conntrack entries in ns of flows to vip that were
// DNATed to be.
func hcFlows(t *testing.T, ns *nstest.NS, vip, be netip.AddrPort) []string {
	t.Helper()
	out, err := ns.RunErr("conntrack", "-L", "-p", "tcp",
		"--orig-dst", vip.Addr().String(), "--orig-port-dst", strconv.Itoa(int(vip.Port())),
		"--reply-src", be.Addr().String(), "--reply-port-src", strconv.Itoa(int(be.Port())))
	if err != nil {
		t.Fatalf("conntrack -L: %v\n%s", err, out)
	}
	var flows []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "tcp") {
			flows = append(flows, l)
		}
	}
	return flows
}

// hcWaitSince waits until cond holds, at most within after start, and
// returns how long after start it held.
func hcWaitSince(t *testing.T, start time.Time, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	for {
		if cond() {
			return time.Since(start)
		}
		if time.Since(start) > within {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// hcLogField matches one key=value of logrus' text format.
var hcLogField = regexp.MustCompile(`(\w+)=("(?:[^"\\]|\\.)*"|\S*)`)

// hcLogs returns the daemon's log lines with message msg whose fields
// include every pair of want (a value "*": any), as field maps.
func hcLogs(d *daemon, msg string, want ...string) []map[string]string {
	var out []map[string]string
	for _, line := range strings.Split(d.log(), "\n") {
		f := map[string]string{}
		for _, m := range hcLogField.FindAllStringSubmatch(line, -1) {
			v := m[2]
			if u, err := strconv.Unquote(v); err == nil {
				v = u
			}
			f[m[1]] = v
		}
		if f["msg"] != msg {
			continue
		}
		match := true
		for i := 0; i+1 < len(want); i += 2 {
			if v, has := f[want[i]]; !has || (want[i+1] != "*" && v != want[i+1]) {
				match = false
			}
		}
		if match {
			out = append(out, f)
		}
	}
	return out
}

// hcSettle is how long a line the daemon wrote may take to reach its
// captured log (a pipe and a copying goroutine) after the test saw its
// effect, such as a reset; tests wait that long before counting lines.
const hcSettle = 100 * time.Millisecond

// hcLogWait waits up to within for n lines matching msg and want (see
// hcLogs), then hcSettle more so that a duplicate would show, and returns
// the matching lines.
func hcLogWait(d *daemon, within time.Duration, n int, msg string, want ...string) []map[string]string {
	for deadline := time.Now().Add(within); len(hcLogs(d, msg, want...)) < n && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(hcSettle)
	return hcLogs(d, msg, want...)
}

// hcEvent waits (at most within after start) for the balancer's log line of
// a transition, the one carrying the outcome field (moved or moved_back),
// and checks that it is logged once, with a reason and a duration.
func hcEvent(t *testing.T, d *daemon, start time.Time, within time.Duration, msg, outcome string, want ...string) map[string]string {
	t.Helper()
	hcWaitSince(t, start, within, fmt.Sprintf("log %q %v", msg, want), func() bool { return len(hcLogs(d, msg, want...)) > 0 })
	evs := hcLogWait(d, 0, 1, msg, want...)
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

// hcInt parses a numeric log field.
func hcInt(t *testing.T, ev map[string]string, k string) int {
	t.Helper()
	n, err := strconv.Atoi(ev[k])
	if err != nil {
		t.Fatalf("log field %s=%q: %v", k, ev[k], err)
	}
	return n
}

// TestHCKillRehash: kill -9 one backend's server process of three. Within
// fall × interval + 1s its set is empty; its clients are in the sets of the
// healthy backends and reach them in-kernel (the listener does not see them
// again); the conntrack entries of its long-lived flows are gone; the other
// clients did not move; the transition is logged once.
func TestHCKillRehash(t *testing.T) {
	tp, clients := hcLab(t, 3, 30)
	vip := netip.AddrPortFrom(nstest.LBClient4, 80)
	be := hcBackendAddrs(3)
	p1 := hcStartProc(t, tp.Backends[0], "be1", be[0])
	hcServe(t, tp.Backends[1], "be2", be[1])
	hcServe(t, tp.Backends[2], "be3", be[2])
	cfg := hcConfig("kernel", vip, "    first_connection: reset\n    on_backend_down: rehash\n    health: "+hcHealthTCP+"\n    balance: maglev\n",
		[]string{"be1", "be2", "be3"}, be)
	d := startDaemon(t, tp.LB, writeConfig(t, cfg), vip, "--mode", "kernel")

	home := hcPinAll(t, tp, d, clients, vip, true)
	movers := hcClientsOf(home, "be1")
	if len(movers) < 2 {
		t.Fatalf("be1 has %d clients of %d (%v); the test needs at least 2", len(movers), len(clients), home)
	}
	for _, c := range movers {
		hcHold(t, tp, c, vip, "be1")
	}
	if f := hcFlows(t, tp.LB, vip, be[0]); len(f) < len(movers) {
		t.Fatalf("%d conntrack entries to be1 before the kill, want ≥ %d:\n%s", len(f), len(movers), strings.Join(f, "\n"))
	}
	before := members(t, tp.LB)
	pinned := len(hcLogs(d, "pinned"))

	killed := p1.kill()
	took := hcWaitSince(t, killed, hcBound, "ho-web-be1 empty after the kill", func() bool {
		return len(hcSet(t, tp.LB, "ho-web-be1")) == 0
	})
	ev := hcEvent(t, d, killed, hcBound, "backend down", "moved", "service", "web", "backend", "be1")
	t.Logf("be1 killed: set empty after %s; event: moved=%s flows_cut=%s took=%s reason=%q",
		took.Round(time.Millisecond), ev["moved"], ev["flows_cut"], ev["took"], ev["reason"])
	if n := hcInt(t, ev, "moved"); n != len(movers) {
		t.Errorf("moved=%d, want %d", n, len(movers))
	}
	if n := hcInt(t, ev, "flows_cut"); n < len(movers) {
		t.Errorf("flows_cut=%d, want ≥ %d (one long-lived flow per client)", n, len(movers))
	}
	if f := hcFlows(t, tp.LB, vip, be[0]); len(f) != 0 {
		t.Errorf("conntrack entries still point at be1:\n%s", strings.Join(f, "\n"))
	}

	after := members(t, tp.LB)
	landed := map[string]int{}
	for _, c := range movers {
		in := setsOf(after, c.String())
		if len(in) != 1 || in[0] == "ho-web-be1" {
			t.Errorf("be1's client %s is in sets %v, want one healthy backend's", c, in)
			continue
		}
		name, seen, err := hcGreet(tp, c, vip)
		if err != nil || "ho-web-"+name != in[0] || seen != c.String() {
			t.Errorf("be1's client %s (in %v): got %s seeing %s, %v; want that backend, in-kernel", c, in, name, seen, err)
		}
		landed[name]++
	}
	t.Logf("be1's %d clients landed on %v", len(movers), landed)
	for c, b := range home {
		if b == "be1" {
			continue
		}
		if was, is := setsOf(before, c.String()), setsOf(after, c.String()); !slices.Equal(was, is) {
			t.Errorf("client %s of %s moved: sets %v -> %v", c, b, was, is)
		}
		if name, _, err := hcGreet(tp, c, vip); err != nil || name != b {
			t.Errorf("client %s of %s now reaches %q, %v", c, b, name, err)
		}
	}
	if n := len(hcLogWait(d, 0, 0, "pinned")); n != pinned {
		t.Errorf("the listener pinned %d clients after the kill; migrated clients must go in-kernel", n-pinned)
	}
	for _, b := range []string{"be2", "be3"} {
		if evs := hcLogs(d, "backend down", "backend", b); len(evs) != 0 {
			t.Errorf("%s went down: %v", b, evs)
		}
	}
}

// TestHCHotStandby: every client sits on the primary; they move to the
// standby when the primary is killed and back when it returns (after rise
// checks). The standby's conntrack entries survive the failback: a live
// flow to the standby keeps working.
func TestHCHotStandby(t *testing.T) {
	tp, clients := hcLab(t, 2, 5)
	vip := netip.AddrPortFrom(nstest.LBClient4, 80)
	be := hcBackendAddrs(2)
	primary := hcStartProc(t, tp.Backends[0], "primary", be[0])
	hcServe(t, tp.Backends[1], "standby", be[1])
	cfg := hcConfig("kernel", vip, "    health: "+hcHealthTCP+"\n    balance: hot-standby\n", []string{"primary", "standby"}, be)
	d := startDaemon(t, tp.LB, writeConfig(t, cfg), vip, "--mode", "kernel")

	home := hcPinAll(t, tp, d, clients, vip, true)
	if got := hcClientsOf(home, "primary"); len(got) != len(clients) {
		t.Fatalf("clients on the primary: %v, want all: %v", got, home)
	}
	hcHold(t, tp, clients[0], vip, "primary")

	killed := primary.kill()
	took := hcWaitSince(t, killed, hcBound, "all clients on the standby", func() bool {
		sets := members(t, tp.LB)
		return len(sets["ho-web-primary"]) == 0 && len(sets["ho-web-standby"]) == len(clients)
	})
	down := hcEvent(t, d, killed, hcBound, "backend down", "moved", "service", "web", "backend", "primary")
	t.Logf("primary killed: clients on the standby after %s; event: moved=%s flows_cut=%s took=%s", took.Round(time.Millisecond), down["moved"], down["flows_cut"], down["took"])
	if n := hcInt(t, down, "moved"); n != len(clients) {
		t.Errorf("moved=%d, want %d", n, len(clients))
	}
	if f := hcFlows(t, tp.LB, vip, be[0]); len(f) != 0 {
		t.Errorf("conntrack entries still point at the primary:\n%s", strings.Join(f, "\n"))
	}
	for _, c := range clients {
		if name, seen, err := hcGreet(tp, c, vip); err != nil || name != "standby" || seen != c.String() {
			t.Errorf("client %s while the primary is down: %s seeing %s, %v; want the standby, in-kernel", c, name, seen, err)
		}
	}
	live := hcHold(t, tp, clients[1], vip, "standby")
	if f := hcFlows(t, tp.LB, vip, be[1]); len(f) == 0 {
		t.Fatal("no conntrack entry to the standby for the live flow")
	}

	hcStartProc(t, tp.Backends[0], "primary", be[0])
	back := time.Now()
	took = hcWaitSince(t, back, hcRise*hcInterval+time.Second, "all clients back on the primary", func() bool {
		sets := members(t, tp.LB)
		return len(sets["ho-web-standby"]) == 0 && len(sets["ho-web-primary"]) == len(clients)
	})
	up := hcEvent(t, d, back, hcBound, "backend up", "moved_back", "service", "web", "backend", "primary")
	t.Logf("primary restarted: clients back after %s; event: moved_back=%s took=%s reason=%q", took.Round(time.Millisecond), up["moved_back"], up["took"], up["reason"])
	if n := hcInt(t, up, "moved_back"); n != len(clients) {
		t.Errorf("moved_back=%d, want %d", n, len(clients))
	}
	if want := fmt.Sprintf("rise %d/%d", hcRise, hcRise); up["reason"] != want {
		t.Errorf("failback reason %q, want %q", up["reason"], want)
	}
	if f := hcFlows(t, tp.LB, vip, be[1]); len(f) == 0 {
		t.Error("failback deleted the standby's conntrack entries")
	}
	live.WriteString("still here\n")
	if err := live.Flush(); err != nil {
		t.Errorf("live flow to the standby after failback: write: %v", err)
	}
	echo := make(chan string, 1)
	go func() { l, _ := live.ReadString('\n'); echo <- l }()
	select {
	case l := <-echo:
		if l != "still here\n" {
			t.Errorf("live flow to the standby after failback echoed %q", l)
		}
	case <-time.After(3 * time.Second):
		t.Error("live flow to the standby is dead after failback")
	}
	for _, c := range clients {
		if name, seen, err := hcGreet(tp, c, vip); err != nil || name != "primary" || seen != c.String() {
			t.Errorf("client %s after failback: %s seeing %s, %v; want the primary, in-kernel", c, name, seen, err)
		}
	}
	if evs := hcLogs(d, "backend down", "backend", "standby"); len(evs) != 0 {
		t.Errorf("the standby went down: %v", evs)
	}
}

// TestHCReclassify: with on_backend_down: reclassify the killed backend's
// clients are unpinned (in no set), its conntrack entries are gone, and each
// client's next connection meets the listener again, is classified, and
// lands on the healthy backend.
func TestHCReclassify(t *testing.T) {
	tp, clients := hcLab(t, 2, 8)
	vip := netip.AddrPortFrom(nstest.LBClient4, 80)
	be := hcBackendAddrs(2)
	p1 := hcStartProc(t, tp.Backends[0], "be1", be[0])
	hcServe(t, tp.Backends[1], "be2", be[1])
	cfg := hcConfig("kernel", vip, "    first_connection: reset\n    on_backend_down: reclassify\n    health: "+hcHealthTCP+"\n    balance: maglev\n",
		[]string{"be1", "be2"}, be)
	d := startDaemon(t, tp.LB, writeConfig(t, cfg), vip, "--mode", "kernel")

	home := hcPinAll(t, tp, d, clients, vip, true)
	movers := hcClientsOf(home, "be1")
	if len(movers) == 0 {
		t.Fatalf("be1 has no client: %v", home)
	}
	for _, c := range movers {
		hcHold(t, tp, c, vip, "be1")
	}
	before := members(t, tp.LB)

	killed := p1.kill()
	took := hcWaitSince(t, killed, hcBound, "ho-web-be1 empty after the kill", func() bool {
		return len(hcSet(t, tp.LB, "ho-web-be1")) == 0
	})
	ev := hcEvent(t, d, killed, hcBound, "backend down", "moved", "service", "web", "backend", "be1")
	t.Logf("be1 killed: set empty after %s; event: moved=%s flows_cut=%s took=%s", took.Round(time.Millisecond), ev["moved"], ev["flows_cut"], ev["took"])
	if n := hcInt(t, ev, "moved"); n != len(movers) {
		t.Errorf("moved=%d (unpinned), want %d", n, len(movers))
	}
	if f := hcFlows(t, tp.LB, vip, be[0]); len(f) != 0 {
		t.Errorf("conntrack entries still point at be1:\n%s", strings.Join(f, "\n"))
	}
	after := members(t, tp.LB)
	for _, c := range movers {
		if in := setsOf(after, c.String()); len(in) != 0 {
			t.Errorf("be1's client %s is still pinned in %v; reclassify unpins", c, in)
		}
	}
	for c, b := range home {
		if b != "be1" && !slices.Equal(setsOf(before, c.String()), setsOf(after, c.String())) {
			t.Errorf("client %s of %s moved", c, b)
		}
	}
	for _, c := range movers {
		n := len(hcLogs(d, "pinned", "client", c.String()))
		if g, err := greet(tp.Client, c, vip); err == nil {
			t.Errorf("be1's client %s: next connection answered %q; want it to meet the listener (reset)", c, g)
		}
		pins := hcLogWait(d, time.Second, n+1, "pinned", "client", c.String())
		if len(pins) != n+1 || pins[len(pins)-1]["backend"] != "be2" {
			t.Errorf("be1's client %s was not classified again onto be2: %v", c, pins)
		}
		if name, seen, err := hcGreet(tp, c, vip); err != nil || name != "be2" || seen != c.String() {
			t.Errorf("be1's client %s after reclassification: %s seeing %s, %v; want be2, in-kernel", c, name, seen, err)
		}
		if in := setsOf(members(t, tp.LB), c.String()); !slices.Equal(in, []string{"ho-web-be2"}) {
			t.Errorf("be1's client %s is in %v, want [ho-web-be2]", c, in)
		}
	}
}

// TestHCFlapping: a backend that fails and passes checks alternately never
// reaches fall (2) or rise (2), so nothing moves: not while it is up, and
// not while it is down. Only real transitions (all checks failing, all
// passing) move the clients, each logged once.
func TestHCFlapping(t *testing.T) {
	tp, clients := hcLab(t, 2, 4)
	vip := netip.AddrPortFrom(nstest.LBClient4, 80)
	be := hcBackendAddrs(2)
	primary := hcServe(t, tp.Backends[0], "primary", be[0])
	primary.mode.Store(hcFlap)
	hcServe(t, tp.Backends[1], "standby", be[1])
	health := fmt.Sprintf("{check: send-expect, expect: %q, interval: %s, timeout: %s, rise: %d, fall: %d}",
		nstest.LBBack4.String(), hcInterval, hcInterval, hcRise, hcFall)
	cfg := hcConfig("kernel", vip, "    health: "+health+"\n    balance: hot-standby\n", []string{"primary", "standby"}, be)
	d := startDaemon(t, tp.LB, writeConfig(t, cfg), vip, "--mode", "kernel")
	home := hcPinAll(t, tp, d, clients, vip, true)
	if got := hcClientsOf(home, "primary"); len(got) != len(clients) {
		t.Fatalf("clients on the primary: %v, want all", home)
	}

	// steady watches the sets for n intervals and fails if they change.
	steady := func(phase string, n int) {
		t.Helper()
		want := members(t, tp.LB)
		bad := primary.bad.Load()
		for end := time.Now().Add(time.Duration(n) * hcInterval); time.Now().Before(end); time.Sleep(hcInterval / 2) {
			if got := members(t, tp.LB); !slices.Equal(got["ho-web-primary"], want["ho-web-primary"]) || !slices.Equal(got["ho-web-standby"], want["ho-web-standby"]) {
				t.Fatalf("%s: sets changed: %v -> %v", phase, want, got)
			}
		}
		if failed := primary.bad.Load() - bad; failed < int64(n)/3 {
			t.Fatalf("%s: only %d failed checks in %d intervals; the backend did not flap", phase, failed, n)
		}
		t.Logf("%s: %d failed checks in %d intervals, no set changed", phase, primary.bad.Load()-bad, n)
	}

	steady("up, flapping", 10)
	if evs := hcLogs(d, "backend down"); len(evs) != 0 {
		t.Fatalf("a flapping backend went down: %v", evs)
	}
	if n := len(hcLogs(d, "health check failed", "backend", "primary")); n < 3 {
		t.Errorf("the daemon logged %d failed checks of the flapping primary, want ≥ 3", n)
	}

	primary.mode.Store(hcBad)
	sick := time.Now()
	hcWaitSince(t, sick, hcBound, "clients on the standby once every check fails", func() bool {
		return len(hcSet(t, tp.LB, "ho-web-standby")) == len(clients)
	})
	hcEvent(t, d, sick, hcBound, "backend down", "moved", "service", "web", "backend", "primary")

	primary.mode.Store(hcFlap)
	steady("down, flapping", 10)
	if evs := hcLogs(d, "backend up"); len(evs) != 0 {
		t.Fatalf("a flapping backend came up: %v", evs)
	}

	primary.mode.Store(hcGood)
	good := time.Now()
	hcWaitSince(t, good, hcRise*hcInterval+time.Second, "clients back on the primary once every check passes", func() bool {
		return len(hcSet(t, tp.LB, "ho-web-primary")) == len(clients)
	})
	hcEvent(t, d, good, hcBound, "backend up", "moved_back", "service", "web", "backend", "primary")
}

// TestHCNoHealthyBackend: when the only backend of the pool dies its pins
// stay (and work again when it returns), new clients are reset and not
// pinned, and each is logged once. Its conntrack entries go all the same.
func TestHCNoHealthyBackend(t *testing.T) {
	tp, clients := hcLab(t, 1, 6)
	vip := netip.AddrPortFrom(nstest.LBClient4, 80)
	be := hcBackendAddrs(1)
	p1 := hcStartProc(t, tp.Backends[0], "be1", be[0])
	cfg := hcConfig("kernel", vip, "    health: "+hcHealthTCP+"\n    balance: maglev\n", []string{"be1"}, be)
	d := startDaemon(t, tp.LB, writeConfig(t, cfg), vip, "--mode", "kernel")

	old, fresh := clients[:3], clients[3:]
	hcPinAll(t, tp, d, old, vip, true)
	hcHold(t, tp, old[0], vip, "be1")
	pins := hcSet(t, tp.LB, "ho-web-be1")

	killed := p1.kill()
	ev := hcEvent(t, d, killed, hcBound, "backend down", "moved", "service", "web", "backend", "be1")
	t.Logf("be1 killed: event after %s: moved=%s kept=%s flows_cut=%s", time.Since(killed).Round(time.Millisecond), ev["moved"], ev["kept"], ev["flows_cut"])
	if ev["moved"] != "0" || ev["kept"] != strconv.Itoa(len(old)) {
		t.Errorf("moved=%s kept=%s, want 0 and %d", ev["moved"], ev["kept"], len(old))
	}
	if got := hcSet(t, tp.LB, "ho-web-be1"); !slices.Equal(got, pins) {
		t.Errorf("pins of a pool without a usable backend changed: %v -> %v", pins, got)
	}
	if f := hcFlows(t, tp.LB, vip, be[0]); len(f) != 0 {
		t.Errorf("conntrack entries still point at be1:\n%s", strings.Join(f, "\n"))
	}
	if evs := hcLogWait(d, time.Second, 1, "pool has no usable backend: its pins stay; new clients are reset", "service", "web"); len(evs) != 1 || evs[0]["clients"] != strconv.Itoa(len(old)) {
		t.Errorf("pool without a usable backend logged %v, want once with clients=%d", evs, len(old))
	}
	for _, c := range fresh {
		for i := range 2 {
			if g, err := greet(tp.Client, c, vip); err == nil {
				t.Errorf("new client %s, connection %d: answered %q, want a reset", c, i+1, g)
			}
		}
		if in := setsOf(members(t, tp.LB), c.String()); len(in) != 0 {
			t.Errorf("new client %s was pinned in %v without a usable backend", c, in)
		}
	}
	if evs := hcLogWait(d, time.Second, 1, "no usable backend: new clients are reset and not pinned", "service", "web"); len(evs) != 1 {
		t.Errorf("%d new connections without a usable backend logged %d times, want once", 2*len(fresh), len(evs))
	}
	if got := hcSet(t, tp.LB, "ho-web-be1"); !slices.Equal(got, pins) {
		t.Errorf("pins changed while no backend was usable: %v -> %v", pins, got)
	}

	hcStartProc(t, tp.Backends[0], "be1", be[0])
	back := time.Now()
	hcEvent(t, d, back, hcRise*hcInterval+time.Second, "backend up", "moved_back", "service", "web", "backend", "be1")
	for _, c := range old {
		if name, seen, err := hcGreet(tp, c, vip); err != nil || name != "be1" || seen != c.String() {
			t.Errorf("kept client %s after be1 returned: %s seeing %s, %v; want be1, in-kernel", c, name, seen, err)
		}
	}
	hcPinAll(t, tp, d, fresh[:1], vip, true)
	if evs := hcLogWait(d, time.Second, 1, "a usable backend is back: new clients are pinned again", "service", "web"); len(evs) != 1 {
		t.Errorf("the return of a usable backend logged %d times, want once", len(evs))
	}
}

// TestHCUserspace: in userspace mode a killed backend's clients are
// re-picked on their next connection (even before the health check notices,
// through the dial fallback): they reach the healthy backend, and stay
// there, also once the killed one is back.
func TestHCUserspace(t *testing.T) {
	tp, clients := hcLab(t, 2, 12)
	vip := netip.AddrPortFrom(nstest.LBClient4, 80)
	be := hcBackendAddrs(2)
	p1 := hcStartProc(t, tp.Backends[0], "be1", be[0])
	hcServe(t, tp.Backends[1], "be2", be[1])
	cfg := hcConfig("userspace", vip, "    health: "+hcHealthTCP+"\n    balance: maglev\n", []string{"be1", "be2"}, be)
	d := startDaemon(t, tp.LB, writeConfig(t, cfg), vip, "--mode", "userspace")

	home := hcPinAll(t, tp, d, clients, vip, false)
	for c, b := range home {
		if name, _, err := hcGreet(tp, c, vip); err != nil || name != b {
			t.Fatalf("client %s of %s: second connection reached %q, %v", c, b, name, err)
		}
	}
	movers := hcClientsOf(home, "be1")
	if len(movers) < 2 {
		t.Fatalf("be1 has %d clients: %v; the test needs at least 2", len(movers), home)
	}

	killed := p1.kill()
	// The first mover connects at once: its dial to be1 fails and the
	// connection falls over to be2.
	if name, _, err := hcGreet(tp, movers[0], vip); err != nil || name != "be2" {
		t.Errorf("be1's client %s right after the kill: %q, %v; want be2", movers[0], name, err)
	}
	ev := hcEvent(t, d, killed, hcBound, "backend down", "moved", "service", "web", "backend", "be1")
	t.Logf("be1 killed: event after %s: moved=%s of %d clients, took=%s reason=%q", time.Since(killed).Round(time.Millisecond), ev["moved"], len(movers), ev["took"], ev["reason"])
	if n := hcInt(t, ev, "moved"); n != len(movers) && n != len(movers)-1 {
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
				if name, _, err := hcGreet(tp, c, vip); err != nil || name != want {
					t.Errorf("%s: client %s (was on %s) reached %q, %v; want %s", phase, c, b, name, err, want)
				}
			}
		}
	}
	check("be1 down")

	hcStartProc(t, tp.Backends[0], "be1", be[0])
	back := time.Now()
	hcEvent(t, d, back, hcRise*hcInterval+time.Second, "backend up", "moved_back", "service", "web", "backend", "be1")
	check("be1 back")
}
