package main

// End-to-end tests: the real binary, run inside the balancer namespace of a
// fresh lab (internal/nstest), real clients and backends in their own
// namespaces. They need root; see nstest.RequireRoot.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/internal/nstest"
)

// greeter serves in a backend namespace: it writes "NAME CLIENT-IP\n" and
// then echoes until the client half-closes.
func greeter(t *testing.T, ns *nstest.NS, name string, addr netip.AddrPort) {
	t.Helper()
	nstest.Serve(t, ns.Listen(t, "tcp", addr.String()), func(c net.Conn) {
		ra := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
		fmt.Fprintf(c, "%s %s\n", name, ra)
		io.Copy(c, c)
		c.(*net.TCPConn).CloseWrite()
	})
}

// daemon is a running `handoff run` inside a namespace.
type daemon struct {
	cmd  *exec.Cmd
	logs *bytes.Buffer
	mu   *sync.Mutex
	done chan struct{}
}

type syncBuf struct {
	mu  *sync.Mutex
	buf *bytes.Buffer
}

func (s syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (d *daemon) log() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.logs.String()
}

// startDaemon runs handoff in ns and waits until it listens on vip and
// logged "serving": the listeners open before the data plane is synced and
// the services are registered with the engine, so a listening socket alone
// does not mean that the API shows them yet.
func startDaemon(t *testing.T, ns *nstest.NS, cfgPath string, vip netip.AddrPort, args ...string) *daemon {
	t.Helper()
	argv := append([]string{"netns", "exec", ns.Name, binary(t), "run", "-c", cfgPath}, args...)
	d := &daemon{cmd: exec.Command("ip", argv...), logs: &bytes.Buffer{}, mu: &sync.Mutex{}, done: make(chan struct{})}
	w := syncBuf{d.mu, d.logs}
	d.cmd.Stdout, d.cmd.Stderr = w, w
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		d.stop(syscall.SIGTERM)
		if t.Failed() {
			t.Logf("handoff log:\n%s", d.log())
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-d.done:
			t.Fatalf("handoff exited early:\n%s", d.log())
		default:
		}
		out, _ := ns.RunErr("ss", "-Hltn", "src", vip.String())
		if logs := d.log(); strings.Contains(out, "LISTEN") &&
			(strings.Contains(logs, "msg=serving") || strings.Contains(logs, `"msg":"serving"`)) {
			return d
		}
		if time.Now().After(deadline) {
			t.Fatalf("handoff never listened on %s:\n%s", vip, d.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (d *daemon) stop(sig syscall.Signal) {
	select {
	case <-d.done:
		return
	default:
	}
	d.cmd.Process.Signal(sig)
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		d.cmd.Process.Kill()
		<-d.done
	}
}

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	dir := t.TempDir()
	p := filepath.Join(dir, "handoff.yaml")
	body = strings.ReplaceAll(body, "STATE_DIR", filepath.Join(dir, "state"))
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// greet connects from src to vip and returns the backend's greeting, or an
// error (a reset first connection).
func greet(ns *nstest.NS, src netip.Addr, vip netip.AddrPort) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, err := ns.DialFrom(ctx, src, "tcp", vip.String())
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(line), nil
}

// members parses `ipset list` in ns into pin set name -> members; the
// dispatch index sets (hoi-, hoi6-) are left out.
func members(t *testing.T, ns *nstest.NS) map[string][]string {
	t.Helper()
	out := ns.Run(t, "ipset", "list")
	sets := map[string][]string{}
	var cur string
	inMembers := false
	for _, l := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(l, "Name: "):
			cur, inMembers = strings.TrimPrefix(l, "Name: "), false
			if !strings.HasPrefix(cur, "hoi") {
				sets[cur] = nil
			}
		case strings.HasPrefix(l, "Members:"):
			inMembers = !strings.HasPrefix(cur, "hoi")
		case inMembers && strings.TrimSpace(l) != "":
			sets[cur] = append(sets[cur], strings.Fields(l)[0])
		}
	}
	return sets
}

// memberLine is the line of an ipset listing for member m.
func memberLine(list, m string) string {
	for _, l := range strings.Split(list, "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == m {
			return strings.TrimSpace(l)
		}
	}
	return ""
}

func setsOf(sets map[string][]string, client string) []string {
	var in []string
	for name, ms := range sets {
		for _, m := range ms {
			if m == client {
				in = append(in, name)
			}
		}
	}
	return in
}

const twoBackendConfig = `
mode: kernel
log: {level: debug}
admin: {listen: 127.0.0.1:9900}
state_dir: STATE_DIR
services:
  - name: web
    listen: VIP
    first_connection: FIRST
    client_ttl: 10m
    health: {check: none}
    balance: maglev
    backends:
      - {name: be1, address: BE1}
      - {name: be2, address: BE2}
`

func labConfig(first string, v6 bool) (cfg string, vip netip.AddrPort, be [2]netip.AddrPort) {
	if v6 {
		vip = netip.AddrPortFrom(nstest.LBClient6, 80)
		be = [2]netip.AddrPort{netip.AddrPortFrom(nstest.Backend6(0), 80), netip.AddrPortFrom(nstest.Backend6(1), 80)}
	} else {
		vip = netip.AddrPortFrom(nstest.LBClient4, 80)
		be = [2]netip.AddrPort{netip.AddrPortFrom(nstest.Backend4(0), 80), netip.AddrPortFrom(nstest.Backend4(1), 80)}
	}
	r := strings.NewReplacer("VIP", fmt.Sprintf("%q", vip.String()), "FIRST", first,
		"BE1", fmt.Sprintf("%q", be[0].String()), "BE2", fmt.Sprintf("%q", be[1].String()))
	return r.Replace(twoBackendConfig), vip, be
}

func lab(t *testing.T, clients int) (*nstest.Topology, []netip.Addr, []netip.Addr) {
	t.Helper()
	nstest.RequireRoot(t)
	tp := nstest.NewTopology(t, 2)
	v4, v6 := tp.AddClients(t, clients-1)
	v4 = append([]netip.Addr{nstest.Client4}, v4...)
	v6 = append([]netip.Addr{nstest.Client6}, v6...)
	return tp, v4, v6
}

// TestKernelResetMode: a new client's first connection is reset, its retry
// reaches a backend in-kernel that sees the client's own address, and the
// client is in exactly that backend's set. Ten clients stick, both backends
// are used.
func TestKernelResetMode(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		t.Run(map[bool]string{false: "ipv4", true: "ipv6"}[v6], func(t *testing.T) {
			tp, v4c, v6c := lab(t, 10)
			clients := v4c
			if v6 {
				clients = v6c
			}
			cfg, vip, be := labConfig("reset", v6)
			greeter(t, tp.Backends[0], "be1", be[0])
			greeter(t, tp.Backends[1], "be2", be[1])
			d := startDaemon(t, tp.LB, writeConfig(t, cfg), vip, "--mode", "kernel")

			used := map[string]bool{}
			for _, c := range clients {
				if g, err := greet(tp.Client, c, vip); err == nil {
					t.Fatalf("client %s: first connection answered %q, want a reset", c, g)
				}
				g, err := greet(tp.Client, c, vip)
				if err != nil {
					t.Fatalf("client %s: retry failed: %v\n%s", c, err, d.log())
				}
				name, seen, _ := strings.Cut(g, " ")
				if seen != c.String() {
					t.Errorf("client %s: backend saw %s, want the client's own address", c, seen)
				}
				for i := 0; i < 3; i++ {
					if g2, err := greet(tp.Client, c, vip); err != nil || g2 != g {
						t.Fatalf("client %s: connection %d got %q, %v; first was %q", c, i+3, g2, err, g)
					}
				}
				prefix := "ho-web-"
				if v6 {
					prefix = "ho6-web-"
				}
				if in := setsOf(members(t, tp.LB), c.String()); len(in) != 1 || in[0] != prefix+name {
					t.Errorf("client %s answered by %s is in sets %v, want exactly [%s%s]", c, name, in, prefix, name)
				}
				// The refresh rule (SET --exist) ran on each in-kernel
				// connection: the pin keeps its classification key.
				if line := memberLine(tp.LB.Run(t, "ipset", "list", prefix+name), c.String()); !strings.Contains(line, `comment "src=`+c.String()+`"`) {
					t.Errorf("client %s after in-kernel connections: member %q, want its key comment", c, line)
				}
				used[name] = true
			}
			if len(used) != 2 {
				t.Errorf("10 clients used %v, want both backends", used)
			}
			// Userspace met each client once: the later connections were in-kernel.
			if n := strings.Count(d.log(), "msg=pinned"); n != len(clients) {
				t.Errorf("the listener pinned %d times for %d clients", n, len(clients))
			}
		})
	}
}

// TestKernelProxyMode: the first connection is spliced to the backend
// (half-closed echo included); the next one is in-kernel to the same backend.
func TestKernelProxyMode(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		t.Run(map[bool]string{false: "ipv4", true: "ipv6"}[v6], func(t *testing.T) {
			tp, v4c, v6c := lab(t, 1)
			c := v4c[0]
			if v6 {
				c = v6c[0]
			}
			cfg, vip, be := labConfig("proxy", v6)
			greeter(t, tp.Backends[0], "be1", be[0])
			greeter(t, tp.Backends[1], "be2", be[1])
			startDaemon(t, tp.LB, writeConfig(t, cfg), vip, "--mode", "kernel")

			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			conn, err := tp.Client.DialFrom(ctx, c, "tcp", vip.String())
			if err != nil {
				t.Fatal(err)
			}
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			msg := strings.Repeat("x", 100000)
			go func() {
				io.WriteString(conn, msg)
				conn.(*net.TCPConn).CloseWrite()
			}()
			all, err := io.ReadAll(conn)
			conn.Close()
			if err != nil {
				t.Fatalf("proxied first connection: %v", err)
			}
			first, rest, _ := strings.Cut(string(all), "\n")
			if rest != msg {
				t.Fatalf("half-closed echo returned %d bytes, want %d", len(rest), len(msg))
			}
			name, seen, _ := strings.Cut(first, " ")
			if seen == c.String() {
				t.Errorf("first (proxied) connection came from the client address; want the balancer's")
			}
			g, err := greet(tp.Client, c, vip)
			if err != nil {
				t.Fatal(err)
			}
			if n2, seen2, _ := strings.Cut(g, " "); n2 != name || seen2 != c.String() {
				t.Errorf("second connection: %q, want %s seeing %s (in-kernel)", g, name, c)
			}
		})
	}
}

// TestKillAndRestart: after kill -9 a pinned client still reaches its
// backend and an unknown one does not; a restart keeps every pin.
func TestKillAndRestart(t *testing.T) {
	tp, clients, _ := lab(t, 4)
	cfg, vip, be := labConfig("reset", false)
	greeter(t, tp.Backends[0], "be1", be[0])
	greeter(t, tp.Backends[1], "be2", be[1])
	path := writeConfig(t, cfg)
	d := startDaemon(t, tp.LB, path, vip, "--mode", "kernel")

	pinned, stranger := clients[:3], clients[3]
	home := map[netip.Addr]string{}
	for _, c := range pinned {
		greet(tp.Client, c, vip) // reset
		g, err := greet(tp.Client, c, vip)
		if err != nil {
			t.Fatal(err)
		}
		home[c] = g
	}
	before := members(t, tp.LB)
	d.stop(syscall.SIGKILL)

	for _, c := range pinned {
		if g, err := greet(tp.Client, c, vip); err != nil || g != home[c] {
			t.Errorf("after kill -9, client %s got %q, %v; want %q", c, g, err, home[c])
		}
	}
	if g, err := greet(tp.Client, stranger, vip); err == nil {
		t.Errorf("after kill -9, an unknown client was answered: %q", g)
	}

	startDaemon(t, tp.LB, path, vip, "--mode", "kernel")
	after := members(t, tp.LB)
	for _, set := range []string{"ho-web-be1", "ho-web-be2"} {
		if strings.Join(before[set], ",") != strings.Join(after[set], ",") {
			t.Errorf("set %s changed across a restart: %v -> %v", set, before[set], after[set])
		}
	}
	for _, c := range pinned {
		if g, err := greet(tp.Client, c, vip); err != nil || g != home[c] {
			t.Errorf("after restart, client %s got %q, %v; want %q", c, g, err, home[c])
		}
	}
}

// TestCleanup: cleanup removes every handoff object, leaves foreign ones,
// and is idempotent.
func TestCleanup(t *testing.T) {
	tp, clients, _ := lab(t, 1)
	cfg, vip, be := labConfig("reset", false)
	greeter(t, tp.Backends[0], "be1", be[0])
	d := startDaemon(t, tp.LB, writeConfig(t, cfg), vip, "--mode", "kernel")
	greet(tp.Client, clients[0], vip)
	d.stop(syscall.SIGTERM)

	tp.LB.Run(t, "ipset", "create", "foreign", "hash:ip")
	tp.LB.Run(t, "iptables", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "9", "-m", "comment", "--comment", "foreign", "-j", "ACCEPT")
	if !strings.Contains(tp.LB.Run(t, "iptables", "-t", "nat", "-S"), "HANDOFF-PREROUTING") {
		t.Fatal("no handoff chains before cleanup")
	}
	for i := 0; i < 2; i++ {
		out, err := exec.Command("ip", "netns", "exec", tp.LB.Name, binary(t), "cleanup").CombinedOutput()
		if err != nil {
			t.Fatalf("cleanup #%d: %v\n%s", i+1, err, out)
		}
		state := tp.LB.Run(t, "iptables-save") + tp.LB.Run(t, "ip6tables-save") + tp.LB.Run(t, "ipset", "list", "-n")
		if regexp.MustCompile(`(?i)handoff|HO-SVC|\bho6?-`).MatchString(state) {
			t.Errorf("cleanup #%d left handoff objects:\n%s", i+1, state)
		}
		if !strings.Contains(state, "foreign") || !strings.Contains(tp.LB.Run(t, "iptables", "-t", "nat", "-S", "PREROUTING"), `--comment foreign`) {
			t.Errorf("cleanup #%d touched the foreign rule or set:\n%s", i+1, state)
		}
	}
}

// TestBadConfig: every error is listed with its position, and a run with a
// bad config exits 1 without touching the kernel.
func TestBadConfig(t *testing.T) {
	bad := writeConfig(t, `
mode: kernel
services:
  - name: Web
    listen: 198.18.0.1
    client_ttl: 10 minutes
    bogus: 1
    backends:
      - {name: be1, address: 198.19.1.11:80}
      - {name: be1, address: 198.19.1.12:80}
`)
	out, err := exec.Command(binary(t), "validate", "-c", bad).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("validate: %v, want exit 1\n%s", err, out)
	}
	for _, line := range []string{":4:", ":5:", ":6:", ":7:", ":10:"} {
		if !strings.Contains(string(out), bad+line) {
			t.Errorf("validate output lacks an error at %s%s:\n%s", bad, line, out)
		}
	}

	tp, _, _ := lab(t, 1)
	before := tp.LB.Run(t, "iptables-save") + tp.LB.Run(t, "ipset", "list", "-n")
	run := exec.Command("ip", "netns", "exec", tp.LB.Name, binary(t), "run", "-c", bad)
	out, err = run.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("run with a bad config: %v, want exit 1\n%s", err, out)
	}
	if after := tp.LB.Run(t, "iptables-save") + tp.LB.Run(t, "ipset", "list", "-n"); after != before {
		t.Errorf("a bad config changed the kernel:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// TestModeWithoutNetAdmin: without CAP_NET_ADMIN, --mode kernel exits 1
// with the reason; auto falls back to userspace and serves.
func TestModeWithoutNetAdmin(t *testing.T) {
	tp, clients, _ := lab(t, 1)
	cfg, vip, be := labConfig("reset", false)
	cfg = strings.Replace(cfg, "mode: kernel", "mode: auto", 1)
	greeter(t, tp.Backends[0], "be1", be[0])
	greeter(t, tp.Backends[1], "be2", be[1])
	path := writeConfig(t, cfg)
	noCap := []string{"setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin", "--"}

	checkFallback(t, tp, noCap, path, clients[0], vip, "without CAP_NET_ADMIN")
	if state := tp.LB.Run(t, "iptables-save") + tp.LB.Run(t, "ipset", "list", "-n"); strings.Contains(state, "HANDOFF") {
		t.Errorf("userspace fallback touched the kernel tables:\n%s", state)
	}
}

// TestModeAutoWithoutIP6Tables: with an IPv6 service on a host whose
// ip6tables does not work, auto mode falls back to userspace (it probes
// ip6tables, not only iptables) and serves over IPv6; --mode kernel exits 1
// with the reason.
func TestModeAutoWithoutIP6Tables(t *testing.T) {
	tp, _, clients := lab(t, 1)
	cfg, vip, be := labConfig("reset", true)
	cfg = strings.Replace(cfg, "mode: kernel", "mode: auto", 1)
	greeter(t, tp.Backends[0], "be1", be[0])
	greeter(t, tp.Backends[1], "be2", be[1])
	path := writeConfig(t, cfg)
	// ip6tables, ip6tables-restore and ip6tables-save that fail, ahead of
	// the real ones in $PATH; iptables is untouched.
	shims := t.TempDir()
	for _, n := range []string{"ip6tables", "ip6tables-restore", "ip6tables-save", "ip6tables-nft", "ip6tables-legacy"} {
		if err := os.WriteFile(filepath.Join(shims, n), []byte("#!/bin/sh\necho \"ip6tables: broken on purpose\" >&2\nexit 3\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	env := []string{"env", "PATH=" + shims + ":" + os.Getenv("PATH")}
	checkFallback(t, tp, env, path, clients[0], vip, "with a broken ip6tables")
	rules, sets := tp.LB.Run(t, "iptables-save"), tp.LB.Run(t, "ipset", "list", "-n")
	if strings.Contains(rules, "HANDOFF") || strings.Contains(sets, "ho-") || strings.Contains(sets, "ho6-") {
		t.Errorf("the fallback left kernel state behind:\n%s\n%s", rules, sets)
	}
}

// checkFallback runs the daemon with config path in the balancer namespace,
// under the command prefix wrap (what takes the kernel path away), twice:
// --mode kernel must exit 1 with a one-line "kernel mode unavailable"
// reason, and auto mode (the config's) must fall back to userspace and
// serve vip to client. how says what wrap does, for the messages.
func checkFallback(t *testing.T, tp *nstest.Topology, wrap []string, path string, client netip.Addr, vip netip.AddrPort, how string) {
	t.Helper()
	args := append([]string{"netns", "exec", tp.LB.Name}, wrap...)
	out, err := exec.Command("ip", append(args, binary(t), "run", "-c", path, "--mode", "kernel")...).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("--mode kernel %s: %v, want exit 1\n%s", how, err, out)
	}
	if lines := strings.Split(strings.TrimSpace(string(out)), "\n"); !strings.Contains(lines[len(lines)-1], "kernel mode unavailable") {
		t.Errorf("want a one-line reason, got:\n%s", out)
	}

	d := &daemon{logs: &bytes.Buffer{}, mu: &sync.Mutex{}, done: make(chan struct{})}
	d.cmd = exec.Command("ip", append(args, binary(t), "run", "-c", path)...)
	d.cmd.Stdout, d.cmd.Stderr = syncBuf{d.mu, d.logs}, syncBuf{d.mu, d.logs}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.cmd.Wait(); close(d.done) }()
	t.Cleanup(func() { d.stop(syscall.SIGTERM) })
	var g string
	for i := 0; i < 100; i++ {
		if g, err = greet(tp.Client, client, vip); err == nil {
			break
		}
		select {
		case <-d.done:
			t.Fatalf("auto mode %s exited instead of falling back:\n%s", how, d.log())
		case <-time.After(50 * time.Millisecond):
		}
	}
	if err != nil {
		t.Fatalf("auto mode %s did not serve: %v\n%s", how, err, d.log())
	}
	if !strings.HasPrefix(g, "be") || !strings.Contains(d.log(), "running in userspace mode") {
		t.Errorf("greeting %q; log:\n%s", g, d.log())
	}
}
