//go:build linux && !race

package proxy_test

import (
	"bufio"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/internal/testenv"
	"github.com/handoff-lb/handoff/proxy"
)

// TestIdleRSS proxies 10,000 loopback connections, moves one byte each way
// through every one, lets them sit idle, and reports how much the resident
// memory of this process grew per connection. The clients and the backend
// run in a peer process, so the figure is the proxy's alone: its two sockets
// and its session on the event loop (no goroutine). The race detector
// distorts memory, so this file builds only without it: scripts/test.sh
// runs it in a step of its own.
func TestIdleRSS(t *testing.T) {
	if testing.Short() {
		testenv.Skip(t, "slow: proxies 10,000 connections")
	}
	const target = 40 << 10 // bytes per idle connection
	n := 10000
	if lim := raiseNoFile(t, uint64(2*n+200)); lim < uint64(2*n+200) {
		n = int(lim-200) / 2
		t.Logf("RLIMIT_NOFILE is %d and cannot be raised: measuring %d connections", lim, n)
	}
	p := startPeer(t)

	var spliced atomic.Int64
	ln := listen(t, "")
	defer ln.Close()
	srv := newServer(t)
	res := &countResult{}
	a, err := srv.Serve(ln, proxy.ServeOptions{Accept: func(c *proxy.Conn) *proxy.Route {
		spliced.Add(1)
		return &proxy.Route{Backend: p.backend, ConnectTimeout: 10 * time.Second, Idle: 10 * time.Minute, Result: res}
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Stop()

	settle()
	rss0, fds0 := vmRSS(t), openFDs(t)
	var ms0 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	g0 := runtime.NumGoroutine()

	start := time.Now()
	p.send(t, "idle %s %d", ln.Addr(), n)
	p.expect(t, "ready")
	if got, conns := spliced.Load(), res.connected.Load(); got != int64(n) || conns != int64(n) {
		t.Fatalf("%d of %d connections accepted, %d connected", got, n, conns)
	}
	t.Logf("%d connections opened and used in %v", n, time.Since(start).Round(time.Millisecond))

	settle()
	rss1, fds1 := vmRSS(t), openFDs(t)
	var ms1 runtime.MemStats
	runtime.ReadMemStats(&ms1)
	perConn := float64(rss1-rss0) / float64(n)
	t.Logf("%d idle proxied connections: RSS +%.1f MiB = %.2f KiB per connection (target ≤ %d KiB)",
		n, float64(rss1-rss0)/(1<<20), perConn/1024, target>>10)
	t.Logf("per connection: heap %.2f KiB, goroutine stacks %.2f KiB, %.2f goroutines, %.2f fds (no pipes held)",
		float64(ms1.HeapInuse-ms0.HeapInuse)/float64(n)/1024, float64(ms1.StackInuse-ms0.StackInuse)/float64(n)/1024,
		float64(runtime.NumGoroutine()-g0)/float64(n), float64(fds1-fds0)/float64(n))
	if perConn > target {
		t.Errorf("%.1f KiB per idle connection, want at most %d KiB", perConn/1024, target>>10)
	}
	if fds1-fds0 > 2*n+8 {
		t.Errorf("%d more fds for %d idle connections: idle Splice calls hold pipes", fds1-fds0, n)
	}

	p.send(t, "release")
	p.expect(t, "released")
}

// countResult counts connections; it is every connection's Result.
type countResult struct{ connected, done atomic.Int64 }

func (r *countResult) Connected()                          { r.connected.Add(1) }
func (r *countResult) Done(proxy.Stats, error)             { r.done.Add(1) }
func (r *countResult) DialFailed(c *proxy.Conn, err error) { c.Close(); r.done.Add(1) }

func settle() {
	for range 2 {
		runtime.GC()
		debug.FreeOSMemory()
		time.Sleep(300 * time.Millisecond)
	}
}

// raiseNoFile raises RLIMIT_NOFILE to at least want if it can and returns
// the soft limit in force.
func raiseNoFile(t *testing.T, want uint64) uint64 {
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	if old.Cur >= want {
		return old.Cur
	}
	lim := syscall.Rlimit{Cur: want, Max: max(want, old.Max)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		lim = syscall.Rlimit{Cur: old.Max, Max: old.Max} // no CAP_SYS_RESOURCE
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	t.Cleanup(func() { syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old) })
	var now syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &now)
	return now.Cur
}

// vmRSS returns the resident set size from /proc/self/status, in bytes.
func vmRSS(t *testing.T) int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}

func openFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}
