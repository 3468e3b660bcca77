package e2e

// The scenario of userspace mode: one daemon with --mode userspace, a
// service per behaviour under test.

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
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The ports of userspaceConfig's services on the VIP.
const (
	webPort   = 80 // web-ipv4 and web-ipv6, one on each VIP
	pp1Port   = 81
	pp2Port   = 82
	idlePort  = 83
	limPort   = 84
	retryPort = 85
)

// userspaceConfig is one userspace daemon with a service per behaviour
// under test, each on its own port of the VIP (web on both VIPs).
func userspaceConfig() daemonConfig {
	none := "health: {check: none}"
	be1 := func(port uint16) []backend { return backends(ipv4, port, "be1") }
	cfg := daemonConfig{mode: "userspace", logLevel: "info", admin: `{listen: "off"}`}
	for _, fam := range families {
		// random: only the affinity table keeps a client on one backend
		cfg.services = append(cfg.services, service{"web-" + fam.name, fam.at(webPort),
			[]string{"client_ttl: 10m", none, "balance: random"}, backends(fam, webPort, "be1", "be2")})
	}
	cfg.services = append(cfg.services,
		service{"pp1", ipv4.at(pp1Port), []string{"proxy_protocol: v1", none}, be1(pp1Port)},
		service{"pp2", ipv4.at(pp2Port), []string{"proxy_protocol: v2", none}, be1(pp2Port)},
		service{"idle", ipv4.at(idlePort), []string{"timeouts: {idle: 600ms}", none}, be1(webPort)},
		service{"lim", ipv4.at(limPort), []string{"max_connections: 5", none}, be1(webPort)},
		// maglev: a fresh start would put a client back where it began
		service{"retry", ipv4.at(retryPort), []string{"client_ttl: 10m", none, "balance: maglev"}, backends(ipv4, retryPort, "be1", "be2")},
	)
	return cfg
}

// TestUserspace runs one daemon in userspace mode and checks, one subtest
// each: stickiness over many connections in each family, a 100 MB transfer
// and a half-closed echo, 1,000 concurrent connections, PROXY v1 and v2
// headers, the idle timeout, max_connections, the retry of a failed dial on
// another backend, a restart that keeps every pin, and that nothing of this
// touched the kernel's tables.
func TestUserspace(t *testing.T) {
	l := newLab(t, 2, 16)
	for _, fam := range families {
		l.greeters(t, backends(fam, webPort, "be1", "be2"))
	}
	serveProxyReader(t, l.Backends[0], netip.AddrPortFrom(ipv4.backend(0), pp1Port))
	serveProxyReader(t, l.Backends[0], netip.AddrPortFrom(ipv4.backend(0), pp2Port))
	retryBEs := backends(ipv4, retryPort, "be1", "be2")
	retryGreeters := l.greeters(t, retryBEs)
	v4 := l.clients(ipv4)
	web := ipv4.at(webPort)

	tablesBefore := tables(t, l.LB)
	cfgPath := writeConfig(t, userspaceConfig())
	d := startDaemon(t, l.LB, cfgPath, web, "--mode", "userspace")
	waitListen(t, l.LB, ipv6.at(webPort), ipv4.at(pp1Port), ipv4.at(pp2Port), ipv4.at(idlePort), ipv4.at(limPort), ipv4.at(retryPort))

	home := map[string]map[netip.Addr]string{} // family → web's client → backend
	for _, fam := range families {
		t.Run("clients stick/"+fam.name, func(t *testing.T) {
			home[fam.name] = map[netip.Addr]string{}
			used := map[string]int{}
			for _, c := range l.clients(fam) {
				var first string
				for i := range 6 {
					g, err := l.greet(c, fam.at(webPort))
					if err != nil {
						t.Fatalf("client %s, connection %d: %v", c, i+1, err)
					}
					if g.seen != fam.lbBack.String() {
						t.Errorf("client %s: backend saw %s, want the balancer's %s (every connection is proxied)", c, g.seen, fam.lbBack)
					}
					if i == 0 {
						first = g.backend
					} else if g.backend != first {
						t.Fatalf("client %s: connection %d went to %s, the first to %s", c, i+1, g.backend, first)
					}
				}
				home[fam.name][c] = first
				used[first]++
			}
			if len(used) != 2 {
				t.Errorf("%d clients used %v, want both backends", l.n, used)
			}
		})
	}

	t.Run("100MB and half-close", func(t *testing.T) {
		const size = 100 << 20
		conn := l.dial(t, v4[0], web)
		defer conn.Close()
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
		if pin := home["ipv4"][v4[0]]; parseAnswer(g).backend != pin && pin != "" {
			t.Errorf("the transfer went to %s, the client's pin is %s", parseAnswer(g).backend, pin)
		}
	})

	// log.access is on by default: one line per pin and per proxied
	// connection, with its bytes each way and how it ended.
	t.Run("access log", func(t *testing.T) {
		for c, be := range home["ipv4"] {
			if pins := d.waitLines(2*time.Second, 1, "pin", "log", "access", "event", "pinned", "service", "web-ipv4", "client", c.String()); len(pins) != 1 || pins[0]["backend"] != be {
				t.Errorf("client %s: access log pin lines %v, want one to %s", c, pins, be)
			}
			// Its six greetings: the client sends nothing, the backend
			// its greeting line. The access log is written in batches,
			// at most 0.1 s apart.
			n := 0
			for deadline := time.Now().Add(2 * time.Second); n != 6 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
				n = 0
				for _, l := range d.lines("proxied", "log", "access", "event", "connection", "service", "web-ipv4", "backend", be, "bytes_in", "0", "end", "closed") {
					if strings.HasPrefix(l["client"], c.String()+":") && l["bytes_out"] != "0" && l["duration"] != "" {
						n++
					}
				}
			}
			if n != 6 {
				t.Errorf("client %s: %d access log lines of its 6 greetings from %s", c, n, be)
			}
		}
		if big := d.waitLines(3*time.Second, 1, "proxied", "log", "access", "service", "web-ipv4", "bytes_in", fmt.Sprint(100<<20)); len(big) != 1 {
			t.Errorf("no access log line of the 100 MB connection with bytes_in %d: %v", 100<<20, big)
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
				c, err := l.Client.DialFrom(ctx, v4[i%len(v4)], "tcp", web.String())
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
		}{{ipv4.at(pp1Port), "v1"}, {ipv4.at(pp2Port), "v2"}} {
			c := l.dial(t, v4[3], tc.vip)
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
		busy := l.dial(t, v4[4], ipv4.at(idlePort))
		defer busy.Close()
		wg.Go(func() {
			busy.SetDeadline(time.Now().Add(10 * time.Second))
			br := bufio.NewReader(busy)
			if _, err := br.ReadString('\n'); err != nil {
				t.Errorf("busy: %v", err)
				return
			}
			for i := range 10 {
				time.Sleep(150 * time.Millisecond)
				if _, err := busy.Write([]byte{'a' + byte(i)}); err != nil {
					t.Errorf("busy connection, byte %d: %v", i, err)
					return
				}
				if b, err := br.ReadByte(); err != nil || b != 'a'+byte(i) {
					t.Errorf("busy connection closed after %d bytes (%v): the idle timeout hit a live connection", i, err)
					return
				}
			}
		})
		c := l.dial(t, v4[5], ipv4.at(idlePort))
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
		lim := ipv4.at(limPort)
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for i := range 5 {
			c := l.dial(t, v4[i], lim)
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
			c, err := l.Client.DialFrom(ctx, v4[6+i], "tcp", lim.String())
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
			if _, err = l.greet(v4[9], lim); err == nil {
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
	t.Run("dial failure retry", func(t *testing.T) {
		retry := ipv4.at(retryPort)
		clients := v4[:10]
		for _, c := range clients {
			g, err := l.greet(c, retry)
			if err != nil {
				t.Fatal(err)
			}
			retryHome[c] = g.backend
		}
		victim := 0
		if retryHome[clients[0]] == "be2" {
			victim = 1
		}
		dead, alive := retryBEs[victim], retryBEs[1-victim]
		retryGreeters[victim].stop()
		moved := 0
		for _, c := range clients {
			g, err := l.greet(c, retry) // one connection, one try
			if err != nil {
				t.Errorf("client %s (pinned to %s) with %s's listener closed: %v", c, retryHome[c], dead.name, err)
				continue
			}
			if g.backend != alive.name {
				t.Errorf("client %s (pinned to %s): answered by %s with %s down", c, retryHome[c], g.backend, dead.name)
			}
			if retryHome[c] == dead.name {
				moved++
			}
			retryHome[c] = g.backend
		}
		if moved == 0 {
			t.Fatalf("no client was pinned to %s", dead.name)
		}
		// The moved clients were re-pinned: they stay, even when the dead
		// backend is back (maglev alone would send them back).
		retryGreeters[victim] = serveGreeter(t, l.Backends[victim], dead.name, dead.addr)
		for _, c := range clients {
			if g, err := l.greet(c, retry); err != nil || g.backend != alive.name {
				t.Errorf("client %s after %s returned: %s, %v; want %s (re-pinned)", c, dead.name, g, err, alive.name)
			}
		}
	})

	t.Run("restart keeps pins", func(t *testing.T) {
		if len(home["ipv4"]) == 0 || len(home["ipv6"]) == 0 || len(retryHome) == 0 {
			t.Fatal("no pins to keep: the subtests that make them failed")
		}
		d.stop(syscall.SIGTERM)
		if code := d.cmd.ProcessState.ExitCode(); code != 0 {
			t.Errorf("handoff exited %d on SIGTERM:\n%s", code, d.log())
		}
		if _, err := os.Stat(filepath.Join(filepath.Dir(cfgPath), "state", "affinity.json")); err != nil {
			t.Errorf("no affinity table saved: %v", err)
		}
		d = startDaemon(t, l.LB, cfgPath, web, "--mode", "userspace")
		waitListen(t, l.LB, ipv6.at(webPort), ipv4.at(retryPort))
		if !strings.Contains(d.log(), "restored saved pins") {
			t.Errorf("the restarted daemon logged no restored pins:\n%s", d.log())
		}
		for _, fam := range families {
			for c, want := range home[fam.name] {
				if g, err := l.greet(c, fam.at(webPort)); err != nil || g.backend != want {
					t.Errorf("web client %s after restart: %s, %v; want %s", c, g, err, want)
				}
			}
		}
		for c, want := range retryHome {
			if g, err := l.greet(c, ipv4.at(retryPort)); err != nil || g.backend != want {
				t.Errorf("retry client %s after restart: %s, %v; want %s", c, g, err, want)
			}
		}
	})

	t.Run("kernel tables untouched", func(t *testing.T) {
		after := tables(t, l.LB)
		if after != tablesBefore {
			t.Errorf("userspace mode changed the kernel's tables:\nbefore:\n%s\nafter:\n%s", tablesBefore, after)
		}
		if handoffObject.MatchString(after) {
			t.Errorf("handoff objects in the balancer namespace:\n%s", after)
		}
	})
}
