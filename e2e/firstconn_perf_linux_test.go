//go:build linux && !race

package e2e

// Measurements of the first connection: the latency a held SYN adds, and
// the rate of brand-new clients, side by side with pinned clients and
// direct connections in one run. They run the daemon built without the
// race detector; HANDOFF_PERF=1 runs them longer and holds them to the
// issue's targets.

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/internal/nstest"
	"github.com/handoff-lb/handoff/internal/testenv"
)

// manyClients are the client namespace's blocks of addresses for
// brand-new clients: it owns them (local routes), and the balancer routes
// them back to the client namespace. blockAddr numbers their addresses.
var manyClients = []netip.Prefix{netip.MustParsePrefix("198.18.128.0/17"), netip.MustParsePrefix("198.19.128.0/17")}

// blockSize is how many addresses manyClients holds.
const blockSize = 2 << 15

// ownBlock gives the client namespace every address of manyClients.
func (l *lab) ownBlock(t *testing.T) {
	t.Helper()
	for _, p := range manyClients {
		l.Client.Run(t, "ip", "route", "add", "local", p.String(), "dev", "lo")
		l.LB.Run(t, "ip", "route", "add", p.String(), "via", nstest.ClientAddr4(0).String())
	}
}

// inBlock reports whether a is one of manyClients' addresses.
func inBlock(a netip.Addr) bool {
	return manyClients[0].Contains(a) || manyClients[1].Contains(a)
}

// newBlockLab returns a lab of one backend and a client namespace that
// owns manyClients, and the daemon built without -race (the measurements
// are of the daemon, not of the race detector).
func newBlockLab(t *testing.T) (*lab, string) {
	t.Helper()
	bin, err := testenv.HandoffBinary(false)
	if err != nil {
		t.Fatal(err)
	}
	l := newLab(t, 1, 1)
	l.ownBlock(t)
	return l, bin
}

// blockAddr is the i-th address of manyClients (from 1, below blockSize).
func blockAddr(i int) netip.Addr {
	p := manyClients[i/(blockSize/2)]
	a := p.Addr().As4()
	n := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3]) + uint32(i%(blockSize/2))
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
}

// connRate connects to vip for roundFor, 32 connections at a time, each
// worker on a thread of its own in the client namespace (a switch of
// namespace per dial would cost more than the connection), and returns
// the connections per second. src gives worker w's i-th source address;
// false ends the worker (no address left). talk, when set, runs on each
// connection before it closes; without it the connection is reset at
// once. A failed connection fails the test.
func (l *lab) connRate(t *testing.T, roundFor time.Duration, vip netip.AddrPort, src func(w, i int) (netip.Addr, bool), talk func(net.Conn) error) float64 {
	var n, failed atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(roundFor)
	for w := range 32 {
		wg.Go(func() {
			l.Client.Do(func() error {
				for i := 0; time.Now().Before(deadline); i++ {
					a, ok := src(w, i)
					if !ok {
						break // the round ends early
					}
					dl := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(a, 0)), Timeout: 5 * time.Second}
					c, err := dl.Dial("tcp", vip.String())
					if err == nil {
						if talk != nil {
							err = talk(c)
						} else {
							c.(*net.TCPConn).SetLinger(0)
						}
						c.Close()
					}
					if err != nil {
						failed.Add(1)
						continue
					}
					n.Add(1)
				}
				return nil
			})
		})
	}
	wg.Wait()
	if f := failed.Load(); f > 0 {
		t.Errorf("%d connections to %s failed", f, vip)
	}
	return float64(n.Load()) / time.Since(start).Seconds()
}

// connectTime dials from src to addr in the client namespace and returns
// how long the handshake took; the connection is closed at once.
func (l *lab) connectTime(src netip.Addr, addr netip.AddrPort) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	c, err := l.Client.DialFrom(ctx, src, "tcp", addr.String())
	took := time.Since(start)
	if err != nil {
		return took, err
	}
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
	return took, nil
}

// rateRounds runs round, which measures two rates, up to rounds times and
// returns each rate and their ratio a/b per round. A round after which
// ranOut says the new clients' addresses ran out is dropped, and the rounds
// end; the test fails when no round completed.
func rateRounds(t *testing.T, rounds int, round func() (a, b float64), ranOut func() bool) (as, bs, ratios []float64) {
	t.Helper()
	for range rounds {
		a, b := round()
		if ranOut() {
			t.Log("the new clients' addresses ran out: the round is dropped, and the rounds end")
			break
		}
		as, bs, ratios = append(as, a), append(bs, b), append(ratios, a/b)
	}
	if len(ratios) == 0 {
		t.Fatal("no complete round")
	}
	return as, bs, ratios
}

// median is the middle of v (the upper one of an even count).
func median(v []float64) float64 { s := slices.Clone(v); slices.Sort(s); return s[len(s)/2] }

func percentile(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// TestHeldSYNPerformance measures, against a daemon built without the
// race detector, a source-classified service in kernel mode:
//   - latency: connection times of brand-new clients (their SYN held until
//     pinned), of the same clients once pinned, and of direct connections
//     to the backend, one of each in turn; the held SYN's cost is the p99
//     of new clients over the p99 of direct connections (target ≤ 1 ms);
//   - rate: connections per second of brand-new clients, each from an
//     address never seen, and of pinned clients, 32 at a time, rounds
//     alternating (target: new ≥ 0.5× pinned).
func TestHeldSYNPerformance(t *testing.T) {
	l, bin := newBlockLab(t)
	vip := ipv4.at(80)
	be := netip.AddrPortFrom(ipv4.backend(0), 80)
	ln := l.Backends[0].Listen(t, "tcp", be.String())
	nstest.AcceptClose(t, ln)
	// Every new client comes from the same few networks: without the
	// default pin budget (1,024 new pins per /24), as this measures pinning.
	cfg := webConfig("kernel", vip, []backend{{"be0", be}}, "classify: source", "health: {check: none}", "pin_budget: {per_prefix: 0}")
	cfg.logLevel = "warn"
	d := launch(t, l.LB, bin, "run", "-c", writeConfig(t, cfg), "--mode", "kernel")
	waitListen(t, l.LB, vip)
	time.Sleep(200 * time.Millisecond) // "serving"; the log is quiet at warn

	samples, rounds, roundFor := 300, 3, time.Second
	if testenv.Perf() {
		samples, rounds, roundFor = 3000, 5, 2*time.Second
	}
	next := 0 // the last block address used
	var held, pinned, direct []time.Duration
	for range samples {
		next++
		c := blockAddr(next)
		for _, m := range []struct {
			to  netip.AddrPort
			out *[]time.Duration
		}{{vip, &held}, {vip, &pinned}, {be, &direct}} {
			took, err := l.connectTime(c, m.to)
			if err != nil {
				t.Fatalf("client %s to %s: %v\n%s", c, m.to, err, d.log())
			}
			*m.out = append(*m.out, took)
		}
	}
	added := percentile(held, 0.99) - percentile(direct, 0.99)
	t.Logf("connection time p50/p99: new client (held SYN) %v/%v, pinned %v/%v, direct %v/%v; the held SYN adds %v at p50, %v at p99",
		percentile(held, 0.5), percentile(held, 0.99), percentile(pinned, 0.5), percentile(pinned, 0.99),
		percentile(direct, 0.5), percentile(direct, 0.99), percentile(held, 0.5)-percentile(direct, 0.5), added)

	// Rates, 32 connections at a time; rounds alternate. Each worker
	// dials from a thread of its own in the client namespace (a switch of
	// namespace per dial would cost more than the connection).
	rate := func(newClients bool) float64 {
		var addrs atomic.Int64
		addrs.Store(int64(next))
		r := l.connRate(t, roundFor, vip, func(w, i int) (netip.Addr, bool) {
			if !newClients {
				return blockAddr(1 + (w*97+i)%samples), true // pinned above
			}
			n := int(addrs.Add(1))
			return blockAddr(n), n < blockSize
		}, nil)
		next = int(addrs.Load())
		return r
	}
	news, pins, ratios := rateRounds(t, rounds, func() (float64, float64) { return rate(true), rate(false) },
		func() bool { return next >= blockSize })
	t.Logf("connections/s: new clients %.0f, pinned clients %.0f; new/pinned %.2f (median of %d rounds: %s)",
		median(news), median(pins), median(ratios), len(ratios), fmt.Sprint(ratios))
	if testenv.Perf() {
		if added > time.Millisecond {
			t.Errorf("a held SYN adds %v at p99, want at most 1ms", added)
		}
		if r := median(ratios); r < 0.5 {
			t.Errorf("new clients connect at %.2f× the rate of pinned ones, want at least 0.5×", r)
		}
	}
}

// TestTransparentFirstConnectionRate measures, against a daemon built
// without the race detector in kernel mode, the rate of brand-new clients
// of two payload-classified services, each client from an address never
// seen and so each connection proxied: one service's proxy dials the
// backend from the client's address (transparent), the other's, with
// snat: true, from the balancer's, as every proxied first connection did
// before. One request and its answer per connection, 32 at a time, rounds
// alternating (target: transparent ≥ 0.9× the plain proxy, the margin of
// this machine's noise, under HANDOFF_PERF=1).
func TestTransparentFirstConnectionRate(t *testing.T) {
	l, bin := newBlockLab(t)
	be := netip.AddrPortFrom(ipv4.backend(0), 80)
	var sawClient atomic.Int64 // answers to a client's own address
	nstest.Serve(t, l.Backends[0].Listen(t, "tcp", be.String()), func(c net.Conn) {
		buf := make([]byte, 256)
		if _, err := c.Read(buf); err != nil {
			return
		}
		if a := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr(); inBlock(a) {
			sawClient.Add(1)
		}
		c.Write([]byte("HTTP/1.0 200 OK\r\n\r\n"))
	})
	payload := []string{"classify: payload", `payload: {pattern: '^[A-Z]+ /(\w*)', max_bytes: 256, timeout: 2s}`, "health: {check: none}", "client_ttl: 10m", "pin_budget: {per_prefix: 0}"}
	tvip, pvip := ipv4.at(80), ipv4.at(81)
	cfg := daemonConfig{mode: "kernel", logLevel: "warn", services: []service{
		{"trans", tvip, payload, []backend{{"be0", be}}},
		{"plain", pvip, append(slices.Clone(payload), "snat: true"), []backend{{"be0", be}}},
	}}
	launch(t, l.LB, bin, "run", "-c", writeConfig(t, cfg), "--mode", "kernel")
	waitListen(t, l.LB, tvip)
	waitListen(t, l.LB, pvip)
	time.Sleep(200 * time.Millisecond)

	rounds, roundFor := 3, time.Second
	if testenv.Perf() {
		rounds, roundFor = 5, 2*time.Second
	}
	var next atomic.Int64
	rate := func(vip netip.AddrPort) float64 {
		return l.connRate(t, roundFor, vip, func(int, int) (netip.Addr, bool) {
			n := int(next.Add(1))
			return blockAddr(n), n < blockSize
		}, func(c net.Conn) error {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write([]byte("GET /a HTTP/1.0\r\n\r\n")); err != nil {
				return err
			}
			_, err := c.Read(make([]byte, 64))
			return err
		})
	}
	var transServed int64
	trans, plain, ratios := rateRounds(t, rounds, func() (float64, float64) {
		before := sawClient.Load()
		tr := rate(tvip)
		transServed += sawClient.Load() - before
		return tr, rate(pvip)
	}, func() bool { return next.Load() >= blockSize })
	t.Logf("new clients/s, each proxied: transparent %.0f, from the balancer's address (snat: true) %.0f; transparent/plain %.2f (median of %d rounds: %s)",
		median(trans), median(plain), median(ratios), len(ratios), fmt.Sprint(ratios))
	if transServed == 0 || sawClient.Load() != transServed {
		t.Errorf("the backend saw %d connections from clients' own addresses, %d during the transparent rounds; want all of those and none else", sawClient.Load(), transServed)
	}
	if r := median(ratios); testenv.Perf() && r < 0.9 {
		t.Errorf("transparent first connections at %.2f× the rate of plain proxied ones, want at least 0.9×", r)
	}
}
