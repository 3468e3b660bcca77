//go:build unix

package healthcheck

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/config"
	"github.com/handoff-lb/handoff/internal/testenv"
)

// TestCPU1000Backends measures what the health loop costs: TCP targets
// checked every second, against a handful of loopback listeners. The
// listeners run in a child process so that this process's CPU time
// (getrusage) is the health loop's alone, kernel work on its sockets
// included. With HANDOFF_PERF=1 it checks 1,000 targets for five seconds
// against the budget, 5% of one core, enforced only without the race
// detector and on a host that is not overloaded: a CPU budget is a
// measurement, and a shared, noisy CI machine would fail it for reasons
// unrelated to the code. Without HANDOFF_PERF it checks 200 targets for two
// seconds and holds them to the check rate only.
func TestCPU1000Backends(t *testing.T) {
	if testing.Short() {
		testenv.Skip(t, "takes ~7s; skipped with -short")
	}
	const (
		listeners = 4
		budget    = 0.05 // of one core
	)
	targets, measure := 200, 2*time.Second
	if testenv.Perf() {
		targets, measure = 1000, 5*time.Second
	}
	addrs := startListeners(t, listeners)

	m := New(Options{})
	defer m.Close()
	h := config.Health{Check: config.CheckTCP, Interval: time.Second, Timeout: time.Second, Rise: 2, Fall: 3}
	tgs := make([]Target, targets)
	for i := range tgs {
		tgs[i] = Target{Service: "web", Backend: fmt.Sprint("be", i), Addr: addrs[i%len(addrs)], Health: h}
	}
	if err := m.Set(tgs); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond) // past the first, simultaneous round

	checks := func() (n int) {
		for _, s := range m.Snapshot() {
			if s.LastErr != "" {
				t.Fatalf("%s/%s: %s", s.Service, s.Backend, s.LastErr)
			}
			n += s.Successes
		}
		return n
	}
	n0, wall0 := checks(), time.Now()
	user0, sys0 := cpuTime(t)
	time.Sleep(measure)
	user1, sys1 := cpuTime(t)
	wall1, n1 := time.Now(), checks()

	wall, user, sys := wall1.Sub(wall0), user1-user0, sys1-sys0
	cpu := user + sys
	share := float64(cpu) / float64(wall)
	rate := float64(n1-n0) / wall.Seconds()
	t.Logf("%d TCP targets at 1s: %.0f checks/s, CPU %v (user %v, system %v) in %v = %.2f%% of one core, %.1f µs per check (race=%v)",
		targets, rate, cpu.Round(time.Millisecond), user.Round(time.Millisecond), sys.Round(time.Millisecond),
		wall.Round(time.Millisecond), 100*share, float64(cpu.Microseconds())/float64(n1-n0), testenv.Race)
	if rate < 0.5*float64(targets) {
		t.Errorf("%.0f checks/s, want about %d", rate, targets)
	}
	switch load, busy := overloaded(); {
	case !testenv.Perf():
		t.Logf("budget %.0f%% checked with HANDOFF_PERF=1 only", 100*budget)
	case testenv.Race:
		t.Logf("budget %.0f%% not checked: the race detector inflates CPU time", 100*budget)
	case busy:
		t.Logf("budget %.0f%% not checked: load average %.1f on %d CPUs inflates CPU time", 100*budget, load, runtime.NumCPU())
	case share > budget:
		t.Errorf("health loop uses %.2f%% of one core, budget %.0f%%", 100*share, 100*budget)
	}
}

// overloaded reports whether the host runs more than two runnable tasks
// per CPU (Linux only), when the cache and scheduler contention of other
// processes inflates what this one is charged.
func overloaded() (load float64, busy bool) {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0, false
	}
	if _, err := fmt.Sscan(string(b), &load); err != nil {
		return 0, false
	}
	return load, load > 2*float64(runtime.NumCPU())
}

// startListeners runs n accept-and-close listeners in a child process and
// returns their addresses. The child exits when the test ends.
func startListeners(t *testing.T, n int) []netip.AddrPort {
	t.Helper()
	child := testenv.StartChild(t, []string{fmt.Sprintf("%s=%d", listenerEnv, n)}) // TestMain runs serveListeners
	stdout := child.Out
	var addrs []netip.AddrPort
	sc := bufio.NewScanner(stdout)
	for len(addrs) < n && sc.Scan() {
		if a, ok := strings.CutPrefix(sc.Text(), "listening "); ok {
			addrs = append(addrs, netip.MustParseAddrPort(a))
		}
	}
	if len(addrs) < n {
		t.Fatalf("listener process gave %d addresses, want %d (%v)", len(addrs), n, sc.Err())
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }() // the child's PASS line
	return addrs
}

// cpuTime returns the user and system CPU time this process has used.
func cpuTime(t *testing.T) (user, sys time.Duration) {
	t.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano())
}
