package e2e

// Scenarios of kernel mode: the first connection, in-kernel forwarding of
// the later ones, a daemon killed and restarted, cleanup, and what makes the
// daemon give up the kernel path.

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// kernelConfig is a kernel-mode daemon whose service web on f's VIP, port
// 80, pins a client to be1 or be2 by maglev and meets it first as first
// says (reset or proxy).
func kernelConfig(f family, first string, fields ...string) (cfg daemonConfig, vip netip.AddrPort, bes []backend) {
	vip, bes = f.at(80), backends(f, 80, "be1", "be2")
	return webConfig("kernel", vip, bes, append([]string{"first_connection: " + first, "health: {check: none}", "balance: maglev"}, fields...)...), vip, bes
}

// startKernel starts greeters on the backends of kernelConfig(f, first,
// fields...) and a daemon in kernel mode on that config; it returns the
// daemon, the service's address and the config file's path.
func (l *lab) startKernel(t *testing.T, f family, first string, fields ...string) (*daemon, netip.AddrPort, string) {
	t.Helper()
	cfg, vip, bes := kernelConfig(f, first, fields...)
	l.greeters(t, bes)
	path := writeConfig(t, cfg)
	return startDaemon(t, l.LB, path, vip, "--mode", "kernel"), vip, path
}

// TestKernelHeldSYN: a new client of a source-classified service never
// meets the listener: its first SYN waits in the kernel until it is pinned
// and then reaches a backend in-kernel, which sees the client's own
// address on that first connection and every later one; the client is in
// exactly that backend's set, with its key as the comment. Ten clients
// stick, both backends are used, and every first connection is counted
// in-kernel.
func TestKernelHeldSYN(t *testing.T) {
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			l := newLab(t, 2, 10)
			d, vip, _ := l.startKernel(t, fam, "reset") // reset is never used: no SYN reaches the listener

			used := map[string]bool{}
			for _, c := range l.clients(fam) {
				g, err := l.greet(c, vip)
				if err != nil {
					t.Fatalf("client %s: first connection failed: %v\n%s", c, err, d.log())
				}
				if g.seen != c.String() {
					t.Errorf("client %s: backend saw %s on the first connection, want the client's own address", c, g.seen)
				}
				for i := range 3 {
					if g2, err := l.greet(c, vip); err != nil || g2 != g {
						t.Fatalf("client %s: connection %d got %s, %v; first was %s", c, i+2, g2, err, g)
					}
				}
				// The refresh rule (SET --exist) ran on each in-kernel
				// connection: the pin keeps its classification key.
				want := []string{fam.set("web", g.backend) + " src=" + c.String()}
				if got := readSets(t, l.LB).pins(c); !slices.Equal(got, want) {
					t.Errorf("client %s answered by %s after in-kernel connections: pins %q, want exactly %q", c, g.backend, got, want)
				}
				used[g.backend] = true
			}
			if len(used) != 2 {
				t.Errorf("10 clients used %v, want both backends", used)
			}
			st := newAdminAPI(t, l.LB, adminListen, "").status()
			if got := st.Services[0].FirstConnections; got["in-kernel"] != uint64(l.n) || got["reset"]+got["proxied"]+got["transparent"] != 0 {
				t.Errorf("first connections %v, want %d in-kernel and nothing else", got, l.n)
			}
		})
	}
}

// TestKernelResetMode: a new client of a service that reads its first
// bytes (payload) and resets its first connection: that connection is
// reset, the retry reaches a backend in-kernel that sees the client's own
// address, and only the connection that made the decision is reset.
func TestKernelResetMode(t *testing.T) {
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			l := newLab(t, 2, 3)
			d, vip, _ := l.startKernel(t, fam, "reset", payloadHello...)
			for _, c := range l.clients(fam) {
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				got, err := l.exchange(ctx, c, vip, "HELLO\n")
				cancel()
				if err == nil {
					t.Fatalf("client %s: first connection answered %q, want a reset", c, got)
				}
				ctx, cancel = context.WithTimeout(context.Background(), 3*time.Second)
				got, err = l.exchange(ctx, c, vip, "HELLO\n")
				cancel()
				if err != nil {
					t.Fatalf("client %s: retry failed: %v\n%s", c, err, d.log())
				}
				if line, _, _ := strings.Cut(got, "\n"); parseAnswer(line).seen != c.String() {
					t.Errorf("client %s: retry answered %q, want in-kernel, seeing the client", c, got)
				}
			}
		})
	}
}

// payloadHello classifies by a payload that starts with HELLO.
var payloadHello = []string{"classify: payload", `payload: {pattern: '^HELLO', max_bytes: 64, timeout: 2s}`}

// TestKernelProxyMode: a payload service proxies the first connection
// (half-closed echo included) from the client's own address (a
// transparent dial), so the backend sees the client on it too; the next
// one is in-kernel to the same backend.
func TestKernelProxyMode(t *testing.T) {
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			l := newLab(t, 2, 1)
			c := fam.client(0)
			_, vip, _ := l.startKernel(t, fam, "proxy", payloadHello...)

			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			conn, err := l.Client.DialFrom(ctx, c, "tcp", vip.String())
			if err != nil {
				t.Fatal(err)
			}
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			msg := "HELLO\n" + strings.Repeat("x", 100000)
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
			proxied := parseAnswer(first)
			if proxied.seen != c.String() {
				t.Errorf("first (proxied) connection came from %s; want the client's own %s", proxied.seen, c)
			}
			got, err := l.exchange(ctx, c, vip, "HELLO\n")
			line, _, _ := strings.Cut(got, "\n")
			if g := parseAnswer(line); err != nil || g != (answer{proxied.backend, c.String()}) {
				t.Errorf("second connection: %q, %v; want %s seeing %s (in-kernel)", got, err, proxied.backend, c)
			}
		})
	}
}

// TestKernelAfterProxiedSamePort: a client's kernel-forwarded connection
// from the very port its proxied first connection used still reaches the
// backend. The proxy's transparent dial from the client's address and
// port left a TIME_WAIT socket on the balancer, which the kernel's early
// demultiplexing tied the backend's SYN-ACK to, and forwarding drops such
// packets: the client was black-holed for a minute (found by
// scripts/soak.sh, whose busy clients reuse ports that soon).
func TestKernelAfterProxiedSamePort(t *testing.T) {
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			l := newLab(t, 2, 1)
			d, vip, _ := l.startKernel(t, fam, "proxy", payloadHello...)
			src := netip.AddrPortFrom(fam.client(0), 40123)
			for i, want := range []string{"proxied", "in-kernel"} {
				ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
				line, err := greetFrom(ctx, l, src, vip)
				cancel()
				if g := parseAnswer(line); err != nil || g.seen != src.Addr().String() {
					t.Fatalf("connection %d (%s) from %s: %q, %v; want an answer seeing the client\n%s", i+1, want, src, line, err, d.log())
				}
			}
		})
	}
}

// greetFrom connects from src, says HELLO, reads the greeting and resets
// the connection, so that src's port is free again at once (no TIME_WAIT
// on the client), as it is for a client that picks the port anew.
func greetFrom(ctx context.Context, l *lab, src, vip netip.AddrPort) (string, error) {
	c, err := l.Client.DialFromPort(ctx, src, "tcp", vip.String())
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.(*net.TCPConn).SetLinger(0)
	if d, ok := ctx.Deadline(); ok {
		c.SetDeadline(d)
	}
	if _, err := io.WriteString(c, "HELLO\n"); err != nil {
		return "", err
	}
	return bufio.NewReader(c).ReadString('\n')
}

// TestKillAndRestart: after kill -9 a pinned client still reaches its
// backend and an unknown one does not; a restart keeps every pin.
func TestKillAndRestart(t *testing.T) {
	l := newLab(t, 2, 4)
	d, vip, path := l.startKernel(t, ipv4, "reset")

	clients := l.clients(ipv4)
	pinned, stranger := clients[:3], clients[3]
	home := map[netip.Addr]answer{}
	for _, c := range pinned {
		l.greet(c, vip) // reset
		g, err := l.greet(c, vip)
		if err != nil {
			t.Fatal(err)
		}
		home[c] = g
	}
	before := readSets(t, l.LB)
	d.stop(syscall.SIGKILL)

	for _, c := range pinned {
		if g, err := l.greet(c, vip); err != nil || g != home[c] {
			t.Errorf("after kill -9, client %s got %s, %v; want %s", c, g, err, home[c])
		}
	}
	if g, err := l.greet(stranger, vip); err == nil {
		t.Errorf("after kill -9, an unknown client was answered by %s", g)
	}

	startDaemon(t, l.LB, path, vip, "--mode", "kernel")
	after := readSets(t, l.LB)
	for _, set := range []string{"ho-web-be1", "ho-web-be2"} {
		if !slices.Equal(before.members(set), after.members(set)) {
			t.Errorf("set %s changed across a restart: %v -> %v", set, before.members(set), after.members(set))
		}
	}
	for _, c := range pinned {
		if g, err := l.greet(c, vip); err != nil || g != home[c] {
			t.Errorf("after restart, client %s got %s, %v; want %s", c, g, err, home[c])
		}
	}
}

// TestCleanup: cleanup removes every handoff object, leaves foreign ones,
// and is idempotent.
func TestCleanup(t *testing.T) {
	l := newLab(t, 2, 1)
	cfg, vip, bes := kernelConfig(ipv4, "reset")
	l.greeters(t, bes[:1])
	d := startDaemon(t, l.LB, writeConfig(t, cfg), vip, "--mode", "kernel")
	l.greet(ipv4.client(0), vip)
	d.stop(syscall.SIGTERM)

	l.LB.Run(t, "ipset", "create", "foreign", "hash:ip")
	l.LB.Run(t, "iptables", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "9", "-m", "comment", "--comment", "foreign", "-j", "ACCEPT")
	if !strings.Contains(l.LB.Run(t, "iptables", "-t", "nat", "-S"), "HANDOFF-PREROUTING") {
		t.Fatal("no handoff chains before cleanup")
	}
	for i := range 2 {
		if r := handoff(t, l.LB, "cleanup"); r.code != 0 {
			t.Fatalf("cleanup #%d: exit %d\n%s%s", i+1, r.code, r.stdout, r.stderr)
		}
		state := tables(t, l.LB)
		if handoffObject.MatchString(state) {
			t.Errorf("cleanup #%d left handoff objects:\n%s", i+1, state)
		}
		if !strings.Contains(state, "foreign") || !strings.Contains(l.LB.Run(t, "iptables", "-t", "nat", "-S", "PREROUTING"), `--comment foreign`) {
			t.Errorf("cleanup #%d touched the foreign rule or set:\n%s", i+1, state)
		}
	}
}

// TestBadConfig: every error is listed with its position, and a run with a
// bad config exits 1 without touching the kernel.
func TestBadConfig(t *testing.T) {
	bad := writeConfig(t, yaml(`
mode: kernel
services:
  - name: Web
    listen: 198.18.0.1
    client_ttl: 10 minutes
    bogus: 1
    backends:
      - {name: be1, address: 198.19.1.11:80}
      - {name: be1, address: 198.19.1.12:80}
`))
	r := handoff(t, nil, "validate", "-c", bad)
	if r.code != 1 {
		t.Fatalf("validate: exit %d, want 1\n%s%s", r.code, r.stdout, r.stderr)
	}
	for _, line := range []string{":4:", ":5:", ":6:", ":7:", ":10:"} {
		if !strings.Contains(r.stdout+r.stderr, bad+line) {
			t.Errorf("validate output lacks an error at %s%s:\n%s%s", bad, line, r.stdout, r.stderr)
		}
	}

	l := newLab(t, 1, 1)
	before := tables(t, l.LB)
	if r := handoff(t, l.LB, "run", "-c", bad); r.code != 1 {
		t.Fatalf("run with a bad config: exit %d, want 1\n%s%s", r.code, r.stdout, r.stderr)
	}
	if after := tables(t, l.LB); after != before {
		t.Errorf("a bad config changed the kernel:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// TestModeWithoutNetAdmin: without CAP_NET_ADMIN, --mode kernel exits 1
// with the reason; auto falls back to userspace and serves.
func TestModeWithoutNetAdmin(t *testing.T) {
	noCap := []string{"setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin", "--"}
	checkFallback(t, ipv4, noCap, "without CAP_NET_ADMIN")
}

// TestModeAutoWithoutIP6Tables: with an IPv6 service on a host whose
// ip6tables does not work, auto mode falls back to userspace (it probes
// ip6tables, not only iptables) and serves over IPv6; --mode kernel exits 1
// with the reason.
func TestModeAutoWithoutIP6Tables(t *testing.T) {
	// ip6tables, ip6tables-restore and ip6tables-save that fail, ahead of
	// the real ones in $PATH; iptables is untouched.
	shims := t.TempDir()
	for _, n := range []string{"ip6tables", "ip6tables-restore", "ip6tables-save", "ip6tables-nft", "ip6tables-legacy"} {
		if err := os.WriteFile(filepath.Join(shims, n), []byte("#!/bin/sh\necho \"ip6tables: broken on purpose\" >&2\nexit 3\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	checkFallback(t, ipv6, []string{"env", "PATH=" + shims + ":" + os.Getenv("PATH")}, "with a broken ip6tables")
}

// checkFallback runs a daemon of one service on fam's VIP in the balancer
// namespace of a fresh lab, under the command prefix wrap (what takes the
// kernel path away), twice: --mode kernel must exit 1 with a one-line
// "kernel mode unavailable" reason, and auto mode (the config's) must fall
// back to userspace and serve a client, leaving the kernel's tables alone.
// how says what wrap does, for the messages.
func checkFallback(t *testing.T, fam family, wrap []string, how string) {
	t.Helper()
	l := newLab(t, 2, 1)
	cfg, vip, bes := kernelConfig(fam, "reset")
	cfg.mode = "auto"
	l.greeters(t, bes)
	argv := slices.Concat(wrap, []string{handoffBin, "run", "-c", writeConfig(t, cfg)})

	r := run(t, l.LB, slices.Concat(argv, []string{"--mode", "kernel"})...)
	if r.code != 1 {
		t.Fatalf("--mode kernel %s: exit %d, want 1\n%s%s", how, r.code, r.stdout, r.stderr)
	}
	if !strings.Contains(r.lastLine(), "kernel mode unavailable") {
		t.Errorf("want a one-line reason, got:\n%s", r.stderr)
	}

	d := launch(t, l.LB, argv...)
	var g answer
	var err error
	for range 100 {
		if g, err = l.greet(fam.client(0), vip); err == nil {
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
	if !strings.HasPrefix(g.backend, "be") || !strings.Contains(d.log(), "running in userspace mode") {
		t.Errorf("answered by %s; log:\n%s", g, d.log())
	}
	if state := tables(t, l.LB); handoffObject.MatchString(state) {
		t.Errorf("the fallback %s touched the kernel tables:\n%s", how, state)
	}
}

// TestKillWhileSYNsHeld: new clients connect while the daemon is stopped,
// so their first SYNs wait in the kernel's queue; the daemon is killed (the
// kernel drops what it held) and started again. No client hangs: each
// connection either completes, its SYN's retransmission held by the new
// daemon and forwarded to a backend that sees the client, or is refused at
// once when the retransmission comes while no daemon runs (the SYN passes
// the unbound queue, --queue-bypass, to a closed port). Every new client
// after the restart is served in-kernel.
func TestKillWhileSYNsHeld(t *testing.T) {
	l := newLab(t, 2, 1)
	d, vip, path := l.startKernel(t, ipv4, "proxy")
	clients := l.addClients(t, ipv4, 10)
	if err := d.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	type result struct {
		client netip.Addr
		got    answer
		err    error
		took   time.Duration
	}
	const connectTimeout = 10 * time.Second
	results := make(chan result, len(clients))
	for _, c := range clients {
		go func() {
			start := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
			defer cancel()
			got, err := l.exchange(ctx, c, vip, "")
			line, _, _ := strings.Cut(got, "\n")
			results <- result{c, parseAnswer(line), err, time.Since(start)}
		}()
	}
	time.Sleep(300 * time.Millisecond) // the SYNs are in the queue
	if n := len(results); n != 0 {
		t.Fatalf("%d clients were answered while the daemon was stopped", n)
	}
	killed := time.Now()
	d.stop(syscall.SIGKILL)
	startDaemon(t, l.LB, path, vip, "--mode", "kernel")
	back := time.Since(killed)
	served := 0
	for range clients {
		r := <-results
		switch {
		case r.took >= connectTimeout:
			t.Errorf("client %s hung for %v: %v", r.client, r.took, r.err)
		case r.err == nil && r.got.seen == r.client.String():
			served++
		case r.err == nil:
			t.Errorf("client %s: answered %s, want the backend to see the client", r.client, r.got)
		case !errors.Is(r.err, syscall.ECONNREFUSED):
			t.Errorf("client %s: %v after %v, want an answer or a refusal", r.client, r.err, r.took)
		}
	}
	t.Logf("the daemon was back %v after the kill; %d of %d held clients were served, the others refused at once", back.Round(time.Millisecond), served, len(clients))
	for _, c := range l.addClients(t, ipv4, 3) {
		if g, err := l.greet(c, vip); err != nil || g.seen != c.String() {
			t.Errorf("new client %s after the restart: %s, %v", c, g, err)
		}
	}
}
