package main

// End-to-end tests of userspace mode: the real binary with --mode userspace
// in the balancer namespace of one lab, real clients and backends in their
// own namespaces. Helpers here start with "us". They need root.

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"

	"github.com/handoff-lb/handoff/internal/nstest"
)

// usConfig is one daemon with a service per behaviour under test. Every
// IPv4 service listens on the lab's VIP, on its own port.
const usConfig = `
mode: userspace               # and --mode userspace on the command line
log: {level: info}
admin: {listen: "off"}
state_dir: STATE_DIR
services:
  - name: web                 # random: only the affinity table keeps a client on one backend
    listen: "198.18.0.1:80"
    client_ttl: 10m
    health: {check: none}
    balance: random
    backends:
      - {name: be1, address: "198.19.1.11:80"}
      - {name: be2, address: "198.19.1.12:80"}
  - name: web6
    listen: "[2001:2:0:1::1]:80"
    client_ttl: 10m
    health: {check: none}
    balance: random
    backends:
      - {name: be1, address: "[2001:2:0:2::11]:80"}
      - {name: be2, address: "[2001:2:0:2::12]:80"}
  - name: pp1
    listen: "198.18.0.1:81"
    proxy_protocol: v1
    health: {check: none}
    backends: [{name: be1, address: "198.19.1.11:81"}]
  - name: pp2
    listen: "198.18.0.1:82"
    proxy_protocol: v2
    health: {check: none}
    backends: [{name: be1, address: "198.19.1.11:82"}]
  - name: idle
    listen: "198.18.0.1:83"
    timeouts: {idle: 600ms}
    health: {check: none}
    backends: [{name: be1, address: "198.19.1.11:80"}]
  - name: lim
    listen: "198.18.0.1:84"
    max_connections: 5
    health: {check: none}
    backends: [{name: be1, address: "198.19.1.11:80"}]
  - name: retry               # maglev: a fresh start would put a client back where it began
    listen: "198.18.0.1:85"
    client_ttl: 10m
    health: {check: none}
    balance: maglev
    backends:
      - {name: be1, address: "198.19.1.11:85"}
      - {name: be2, address: "198.19.1.12:85"}
`

// The ports of usConfig's services.
var (
	usWeb   = netip.AddrPortFrom(nstest.LBClient4, 80)
	usWeb6  = netip.AddrPortFrom(nstest.LBClient6, 80)
	usPP1   = netip.AddrPortFrom(nstest.LBClient4, 81)
	usPP2   = netip.AddrPortFrom(nstest.LBClient4, 82)
	usIdle  = netip.AddrPortFrom(nstest.LBClient4, 83)
	usLim   = netip.AddrPortFrom(nstest.LBClient4, 84)
	usRetry = netip.AddrPortFrom(nstest.LBClient4, 85)
)

// TestUserspaceE2E runs one daemon in userspace mode and checks, one subtest
// each: stickiness over many connections, IPv6, a 100 MB transfer and a
// half-closed echo, 1,000 concurrent connections, PROXY v1 and v2 headers,
// the idle timeout, max_connections, the retry of a failed dial on another
// backend, a restart that keeps every pin, and that nothing of this touched
// the kernel's tables.
func TestUserspaceE2E(t *testing.T) {
	tp, v4, v6 := lab(t, 16)
	for i := range 2 {
		greeter(t, tp.Backends[i], fmt.Sprintf("be%d", i+1), netip.AddrPortFrom(nstest.Backend4(i), 80))
		greeter(t, tp.Backends[i], fmt.Sprintf("be%d", i+1), netip.AddrPortFrom(nstest.Backend6(i), 80))
	}
	usProxyReader(t, tp.Backends[0], netip.AddrPortFrom(nstest.Backend4(0), 81))
	usProxyReader(t, tp.Backends[0], netip.AddrPortFrom(nstest.Backend4(0), 82))
	retryBE := [2]*usServer{
		usGreeter(t, tp.Backends[0], "be1", netip.AddrPortFrom(nstest.Backend4(0), 85)),
		usGreeter(t, tp.Backends[1], "be2", netip.AddrPortFrom(nstest.Backend4(1), 85)),
	}

	tablesBefore := usTables(t, tp.LB)
	cfgPath := writeConfig(t, usConfig)
	d := startDaemon(t, tp.LB, cfgPath, usWeb, "--mode", "userspace")
	usWaitListen(t, tp.LB, usWeb6, usPP1, usPP2, usIdle, usLim, usRetry)

	home := map[netip.Addr]string{} // web: client -> backend
	t.Run("clients stick", func(t *testing.T) {
		used := map[string]int{}
		for _, c := range v4 {
			var first string
			for i := range 6 {
				g, err := greet(tp.Client, c, usWeb)
				if err != nil {
					t.Fatalf("client %s, connection %d: %v", c, i+1, err)
				}
				name, seen, _ := strings.Cut(g, " ")
				if seen != nstest.LBBack4.String() {
					t.Errorf("client %s: backend saw %s, want the balancer's %s (every connection is proxied)", c, seen, nstest.LBBack4)
				}
				if i == 0 {
					first = name
				} else if name != first {
					t.Fatalf("client %s: connection %d went to %s, the first to %s", c, i+1, name, first)
				}
			}
			home[c] = first
			used[first]++
		}
		if len(used) != 2 {
			t.Errorf("%d clients used %v, want both backends", len(v4), used)
		}
	})

	t.Run("ipv6", func(t *testing.T) {
		used := map[string]int{}
		for _, c := range v6 {
			var first string
			for i := range 4 {
				g, err := greet(tp.Client, c, usWeb6)
				if err != nil {
					t.Fatalf("client %s, connection %d: %v", c, i+1, err)
				}
				name, seen, _ := strings.Cut(g, " ")
				if seen != nstest.LBBack6.String() {
					t.Errorf("client %s: backend saw %s, want %s", c, seen, nstest.LBBack6)
				}
				if i == 0 {
					first = name
				} else if name != first {
					t.Fatalf("client %s: connection %d went to %s, the first to %s", c, i+1, name, first)
				}
			}
			used[first]++
		}
		if len(used) != 2 {
			t.Errorf("%d IPv6 clients used %v, want both backends", len(v6), used)
		}
	})

	t.Run("100MB and half-close", func(t *testing.T) {
		const size = 100 << 20
		conn := usDial(t, tp.Client, v4[0], usWeb)
		conn.SetDeadline(time.Now().Add(30 * time.Second))
		sent := sha256.New()
		werr := make(chan error, 1)
		go func() {
			_, err := io.CopyN(io.MultiWriter(conn, sent), rand.Reader, size)
			if err == nil {
				err = conn.(*net.TCPConn).CloseWrite() // the echo goes on after this
			}
			werr <- err
		}()
		br := bufio.NewReaderSize(conn, 64<<10)
		g, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		got := sha256.New()
		n, err := io.Copy(got, br) // until the backend half-closes in turn
		if err != nil {
			t.Fatalf("after %d bytes: %v", n, err)
		}
		if err := <-werr; err != nil {
			t.Fatal(err)
		}
		if n != size || string(got.Sum(nil)) != string(sent.Sum(nil)) {
			t.Fatalf("echoed %d bytes (sha256 %x), sent %d (sha256 %x)", n, got.Sum(nil), size, sent.Sum(nil))
		}
		if name, _, _ := strings.Cut(strings.TrimSpace(g), " "); name != home[v4[0]] && home[v4[0]] != "" {
			t.Errorf("the transfer went to %s, the client's pin is %s", name, home[v4[0]])
		}
	})

	t.Run("1000 concurrent", func(t *testing.T) {
		const n = 1000
		conns := make([]net.Conn, n)
		readers := make([]*bufio.Reader, n)
		defer func() {
			for _, c := range conns {
				if c != nil {
					c.Close()
				}
			}
		}()
		errs := make(chan error, n)
		var wg sync.WaitGroup
		sem := make(chan struct{}, 64)
		for i := range n {
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				c, err := tp.Client.DialFrom(ctx, v4[i%len(v4)], "tcp", usWeb.String())
				if err != nil {
					errs <- fmt.Errorf("connection %d: %v", i, err)
					return
				}
				conns[i] = c
				c.SetDeadline(time.Now().Add(20 * time.Second))
				readers[i] = bufio.NewReader(c)
				if _, err := readers[i].ReadString('\n'); err != nil {
					errs <- fmt.Errorf("connection %d: greeting: %v", i, err)
				}
			})
		}
		wg.Wait()
		close(errs)
		failed := 0
		for err := range errs {
			if failed++; failed <= 5 {
				t.Error(err)
			}
		}
		if failed > 0 {
			t.Fatalf("%d of %d connections failed", failed, n)
		}
		// All 1,000 are open at once, each with its backend connection (the
		// greeting came through it); now each echoes through its own.
		errs = make(chan error, n)
		for i := range n {
			wg.Go(func() {
				msg := fmt.Sprintf("connection %d\n", i)
				if _, err := io.WriteString(conns[i], msg); err != nil {
					errs <- err
					return
				}
				conns[i].(*net.TCPConn).CloseWrite()
				if rest, err := io.ReadAll(readers[i]); err != nil || string(rest) != msg {
					errs <- fmt.Errorf("connection %d echoed %q, %v", i, rest, err)
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})

	t.Run("proxy protocol", func(t *testing.T) {
		for _, tc := range []struct {
			vip     netip.AddrPort
			version string
		}{{usPP1, "v1"}, {usPP2, "v2"}} {
			c := usDial(t, tp.Client, v4[3], tc.vip)
			local := c.LocalAddr().(*net.TCPAddr).AddrPort()
			fmt.Fprintf(c, "hello %s\n", tc.version)
			c.(*net.TCPConn).CloseWrite()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			got, err := io.ReadAll(c)
			c.Close()
			if err != nil {
				t.Fatalf("%s: %v", tc.version, err)
			}
			want := fmt.Sprintf("%s %s %s\nhello %s\n", tc.version, local, tc.vip, tc.version)
			if string(got) != want {
				t.Errorf("%s: the backend answered %q, want %q (header version, client, destination, then the client's bytes)", tc.version, got, want)
			}
		}
	})

	t.Run("idle timeout", func(t *testing.T) {
		var wg sync.WaitGroup
		// A connection moving a byte every 150 ms is not idle.
		wg.Go(func() {
			c := usDial(t, tp.Client, v4[4], usIdle)
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			br := bufio.NewReader(c)
			if _, err := br.ReadString('\n'); err != nil {
				t.Errorf("busy: %v", err)
				return
			}
			for i := range 10 {
				time.Sleep(150 * time.Millisecond)
				if _, err := c.Write([]byte{'a' + byte(i)}); err != nil {
					t.Errorf("busy connection, byte %d: %v", i, err)
					return
				}
				if b, err := br.ReadByte(); err != nil || b != 'a'+byte(i) {
					t.Errorf("busy connection closed after %d bytes (%v): the idle timeout hit a live connection", i, err)
					return
				}
			}
		})
		c := usDial(t, tp.Client, v4[5], usIdle)
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(c)
		if _, err := br.ReadString('\n'); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		n, err := br.Read(make([]byte, 1))
		took := time.Since(start)
		if n != 0 || !(err == io.EOF || errors.Is(err, syscall.ECONNRESET)) {
			t.Fatalf("idle connection: read %d bytes, %v after %v; want it closed", n, err, took)
		}
		if took < 500*time.Millisecond || took > 3*time.Second {
			t.Errorf("idle connection closed after %v, want about 600ms", took.Round(time.Millisecond))
		}
		wg.Wait()
	})

	t.Run("max_connections", func(t *testing.T) {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for i := range 5 {
			c := usDial(t, tp.Client, v4[i], usLim)
			held = append(held, c)
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
				t.Fatalf("connection %d of 5: %v", i+1, err)
			}
		}
		// The reset can beat the client's connect() to the finish, so it
		// shows up in the dial or in the first read.
		for i := range 3 {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			start := time.Now()
			c, err := tp.Client.DialFrom(ctx, v4[6+i], "tcp", usLim.String())
			cancel()
			n := 0
			if err == nil {
				c.SetDeadline(start.Add(5 * time.Second))
				n, err = c.Read(make([]byte, 64))
				c.Close()
			}
			took := time.Since(start)
			if n != 0 || !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("connection %d past max_connections: read %d bytes, %v; want a reset", 6+i, n, err)
			}
			if took > time.Second {
				t.Errorf("connection %d past max_connections refused after %v, want at once", 6+i, took)
			}
		}
		// A slot freed is a slot served.
		held[0].Close()
		held = held[1:]
		var err error
		for range 50 {
			if _, err = greet(tp.Client, v4[9], usLim); err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			t.Errorf("after one of 5 connections closed, a new one still fails: %v", err)
		}
	})

	// retryHome: the clients of the retry service and where they ended up.
	retryHome := map[netip.Addr]string{}
	victim := -1
	t.Run("dial failure retry", func(t *testing.T) {
		clients := v4[:10]
		for _, c := range clients {
			g, err := greet(tp.Client, c, usRetry)
			if err != nil {
				t.Fatal(err)
			}
			retryHome[c], _, _ = strings.Cut(g, " ")
		}
		victim = 0
		if retryHome[clients[0]] == "be2" {
			victim = 1
		}
		dead, alive := fmt.Sprintf("be%d", victim+1), fmt.Sprintf("be%d", 2-victim)
		retryBE[victim].closeListener()
		moved := 0
		for _, c := range clients {
			g, err := greet(tp.Client, c, usRetry) // one connection, one try
			if err != nil {
				t.Errorf("client %s (pinned to %s) with %s's listener closed: %v", c, retryHome[c], dead, err)
				continue
			}
			name, _, _ := strings.Cut(g, " ")
			if name != alive {
				t.Errorf("client %s (pinned to %s): answered by %s with %s down", c, retryHome[c], name, dead)
			}
			if retryHome[c] == dead {
				moved++
			}
			retryHome[c] = name
		}
		if moved == 0 {
			t.Fatalf("no client was pinned to %s", dead)
		}
		// The moved clients were re-pinned: they stay, even when the dead
		// backend is back (maglev alone would send them back).
		retryBE[victim] = usGreeter(t, tp.Backends[victim], dead, netip.AddrPortFrom(nstest.Backend4(victim), 85))
		for _, c := range clients {
			if g, err := greet(tp.Client, c, usRetry); err != nil || !strings.HasPrefix(g, alive+" ") {
				t.Errorf("client %s after %s returned: %q, %v; want %s (re-pinned)", c, dead, g, err, alive)
			}
		}
	})

	t.Run("restart keeps pins", func(t *testing.T) {
		if len(home) == 0 || victim < 0 {
			t.Fatal("needs the pins of the earlier subtests, which failed")
		}
		d.stop(syscall.SIGTERM)
		if code := d.cmd.ProcessState.ExitCode(); code != 0 {
			t.Errorf("handoff exited %d on SIGTERM:\n%s", code, d.log())
		}
		if _, err := os.Stat(filepath.Join(filepath.Dir(cfgPath), "state", "affinity.json")); err != nil {
			t.Errorf("no affinity table saved: %v", err)
		}
		d = startDaemon(t, tp.LB, cfgPath, usWeb, "--mode", "userspace")
		usWaitListen(t, tp.LB, usRetry)
		if !strings.Contains(d.log(), "restored saved pins") {
			t.Errorf("the restarted daemon logged no restored pins:\n%s", d.log())
		}
		for c, want := range home {
			if g, err := greet(tp.Client, c, usWeb); err != nil || !strings.HasPrefix(g, want+" ") {
				t.Errorf("web client %s after restart: %q, %v; want %s", c, g, err, want)
			}
		}
		for c, want := range retryHome {
			if g, err := greet(tp.Client, c, usRetry); err != nil || !strings.HasPrefix(g, want+" ") {
				t.Errorf("retry client %s after restart: %q, %v; want %s", c, g, err, want)
			}
		}
	})

	t.Run("kernel tables untouched", func(t *testing.T) {
		after := usTables(t, tp.LB)
		if after != tablesBefore {
			t.Errorf("userspace mode changed the kernel's tables:\nbefore:\n%s\nafter:\n%s", tablesBefore, after)
		}
		if regexp.MustCompile(`(?i)handoff|HO-SVC|\bho6?-`).MatchString(after) {
			t.Errorf("handoff objects in the balancer namespace:\n%s", after)
		}
	})
}

// usTables is what the kernel holds that handoff could touch: the ipset
// names and every iptables and ip6tables table (without the dump's
// timestamp comments).
func usTables(t *testing.T, ns *nstest.NS) string {
	t.Helper()
	var b strings.Builder
	for _, cmd := range [][]string{{"ipset", "list", "-n"}, {"iptables-save"}, {"ip6tables-save"}} {
		fmt.Fprintf(&b, "$ %s\n", strings.Join(cmd, " "))
		for _, l := range strings.Split(ns.Run(t, cmd...), "\n") {
			if l != "" && !strings.HasPrefix(l, "#") {
				b.WriteString(l + "\n")
			}
		}
	}
	return b.String()
}

// usWaitListen waits until ns listens on every addr.
func usWaitListen(t *testing.T, ns *nstest.NS, addrs ...netip.AddrPort) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for _, a := range addrs {
		for {
			out, _ := ns.RunErr("ss", "-Hltn", "src", a.String())
			if strings.Contains(out, "LISTEN") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("nothing listens on %s", a)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// usDial connects from src to addr or fails the test.
func usDial(t *testing.T, ns *nstest.NS, src netip.Addr, addr netip.AddrPort) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := ns.DialFrom(ctx, src, "tcp", addr.String())
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, src, err)
	}
	return c
}

// usServer is a greeter (see greeter) whose listener can be closed while
// the test runs, as a backend that goes down.
type usServer struct {
	ln   net.Listener
	once sync.Once
}

func usGreeter(t *testing.T, ns *nstest.NS, name string, addr netip.AddrPort) *usServer {
	t.Helper()
	s := &usServer{ln: ns.Listen(t, "tcp", addr.String())}
	nstest.Serve(t, s.ln, func(c net.Conn) {
		fmt.Fprintf(c, "%s %s\n", name, c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap())
		io.Copy(c, c)
		c.(*net.TCPConn).CloseWrite()
	})
	return s
}

// closeListener stops accepting: new connections to the address are refused.
func (s *usServer) closeListener() { s.once.Do(func() { s.ln.Close() }) }

// usProxyReader serves in a backend namespace: it requires a PROXY protocol
// header on each connection and answers "VERSION SOURCE DESTINATION\n" from
// it, then echoes the client's bytes until the client half-closes.
func usProxyReader(t *testing.T, ns *nstest.NS, addr netip.AddrPort) {
	t.Helper()
	nstest.Serve(t, ns.Listen(t, "tcp", addr.String()), func(raw net.Conn) {
		raw.SetDeadline(time.Now().Add(10 * time.Second))
		c := proxyproto.NewConn(raw)
		h := c.ProxyHeader()
		if h == nil {
			fmt.Fprintf(raw, "no PROXY header\n")
			return
		}
		fmt.Fprintf(c, "v%d %s %s\n", h.Version, h.SourceAddr, h.DestinationAddr)
		io.Copy(c, c)
		raw.(*net.TCPConn).CloseWrite()
	})
}
