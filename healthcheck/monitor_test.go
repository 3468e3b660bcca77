package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/handoff-lb/handoff/config"
	"github.com/handoff-lb/handoff/internal/nstest"
)

func TestMain(m *testing.M) {
	if n := os.Getenv(listenerEnv); n != "" {
		os.Exit(serveListeners(n))
	}
	goleak.VerifyTestMain(m)
}

// stepper is a fake Checker whose every check waits for the test to hand
// it a result, so a test decides exactly what each check returns.
type stepper struct {
	mu    sync.Mutex
	feeds map[netip.AddrPort]chan error
}

func (s *stepper) feed(addr netip.AddrPort) chan error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.feeds == nil {
		s.feeds = make(map[netip.AddrPort]chan error)
	}
	ch := s.feeds[addr]
	if ch == nil {
		ch = make(chan error)
		s.feeds[addr] = ch
	}
	return ch
}

func (s *stepper) Check(ctx context.Context, addr netip.AddrPort) error {
	select {
	case err := <-s.feed(addr):
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// recorder collects events.
type recorder struct{ ch chan Event }

func (r *recorder) onChange(ev Event) { r.ch <- ev }

func (r *recorder) next(t *testing.T, within time.Duration) Event {
	t.Helper()
	select {
	case ev := <-r.ch:
		return ev
	case <-time.After(within):
		t.Fatalf("no event within %v", within)
		return Event{}
	}
}

func (r *recorder) none(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case ev := <-r.ch:
		t.Fatalf("unexpected event %+v", ev)
	case <-time.After(d):
	}
}

// newMonitor returns a Monitor whose checks are stepped by s (real checkers
// when s is nil), closed when the test ends.
func newMonitor(t *testing.T, s *stepper) (*Monitor, *recorder) {
	t.Helper()
	rec := &recorder{ch: make(chan Event, 1000)}
	o := Options{OnChange: rec.onChange}
	if s != nil {
		o.Checker = func(h config.Health) (Checker, error) {
			if _, err := NewChecker(h); err != nil {
				return nil, err
			}
			return s, nil
		}
	}
	m := New(o)
	t.Cleanup(func() { m.Close() })
	return m, rec
}

// steppedMonitor is newMonitor with a fresh stepper, watching tgs.
func steppedMonitor(t *testing.T, tgs ...Target) (*Monitor, *stepper, *recorder) {
	t.Helper()
	s := &stepper{}
	m, rec := newMonitor(t, s)
	if err := m.Set(tgs); err != nil {
		t.Fatal(err)
	}
	return m, s, rec
}

// stepped is the health spec of stepped targets: a check starts 1 ms after
// the last and waits for its result as long as the test needs.
var stepped = config.Health{Check: config.CheckTCP, Interval: time.Millisecond, Timeout: time.Minute, Rise: 2, Fall: 3}

func stepTarget(svc, be string, port uint16) Target {
	return Target{Service: svc, Backend: be, Addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port), Health: stepped}
}

// status returns the target's row of m.Snapshot.
func status(t *testing.T, m *Monitor, svc, be string) Status {
	t.Helper()
	for _, s := range m.Snapshot() {
		if s.Service == svc && s.Backend == be {
			return s
		}
	}
	t.Fatalf("%s/%s not in snapshot", svc, be)
	return Status{}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// step hands one result to tg's pending check and waits until the monitor
// has applied it.
func step(t *testing.T, m *Monitor, s *stepper, tg Target, err error) {
	t.Helper()
	before := status(t, m, tg.Service, tg.Backend).LastCheck
	select {
	case s.feed(tg.Addr) <- err:
	case <-time.After(5 * time.Second):
		t.Fatalf("%s/%s: no check is waiting", tg.Service, tg.Backend)
	}
	waitFor(t, "the result to be applied", func() bool {
		return status(t, m, tg.Service, tg.Backend).LastCheck != before
	})
}

var errRefused = errors.New("tcp 127.0.0.1:1: connect: connection refused")

func TestFallRise(t *testing.T) {
	s := &stepper{}
	m, rec := newMonitor(t, s)
	a := stepTarget("web", "be1", 1)
	start := time.Now()
	if err := m.Set([]Target{a}); err != nil {
		t.Fatal(err)
	}
	if up, since, err := m.State("web", "be1"); !up || since.Before(start) || err != nil {
		t.Fatalf("State of a new target = %v, %v, %v; want up since Set", up, since, err)
	}

	for i := 1; i < stepped.Fall; i++ {
		step(t, m, s, a, errRefused)
		if st := status(t, m, "web", "be1"); !st.Up || st.Failures != i {
			t.Fatalf("after %d failures: %+v, want up with %d failures", i, st, i)
		}
	}
	rec.none(t, 20*time.Millisecond)
	step(t, m, s, a, errRefused)
	ev := rec.next(t, time.Second)
	if ev.Up || ev.Service != "web" || ev.Backend != "be1" || ev.Reason != errRefused.Error() || ev.Since <= 0 || ev.At.Before(start) {
		t.Fatalf("event after %d failures = %+v, want down because %q", stepped.Fall, ev, errRefused)
	}
	up, since, err := m.State("web", "be1")
	if up || !since.Equal(ev.At) || err != errRefused {
		t.Fatalf("State = %v, %v, %v; want down since %v with the last error", up, since, err, ev.At)
	}

	// Further failures and a lone success change nothing.
	step(t, m, s, a, errRefused)
	step(t, m, s, a, nil)
	rec.none(t, 20*time.Millisecond)

	time.Sleep(5 * time.Millisecond)
	step(t, m, s, a, nil)
	ev2 := rec.next(t, time.Second)
	if !ev2.Up || ev2.Reason != "rise 2/2" || ev2.Since != ev2.At.Sub(ev.At) {
		t.Fatalf("event after %d successes = %+v, want up, rise 2/2, since %v", stepped.Rise, ev2, ev2.At.Sub(ev.At))
	}
	if up, _, err := m.State("web", "be1"); !up || err != nil {
		t.Fatalf("State = %v, %v; want up with no error", up, err)
	}
	rec.none(t, 20*time.Millisecond)
}

func TestFlappingGivesNoEvents(t *testing.T) {
	a := stepTarget("web", "be1", 1)
	m, s, rec := steppedMonitor(t, a)
	for range 10 {
		step(t, m, s, a, errRefused)
		step(t, m, s, a, nil)
	}
	rec.none(t, 20*time.Millisecond)

	for range stepped.Fall {
		step(t, m, s, a, errRefused)
	}
	if ev := rec.next(t, time.Second); ev.Up {
		t.Fatalf("event = %+v, want down", ev)
	}
	for range 10 {
		step(t, m, s, a, nil)
		step(t, m, s, a, errRefused)
	}
	rec.none(t, 20*time.Millisecond)
	if up, _, _ := m.State("web", "be1"); up {
		t.Fatal("a flapping down target came up")
	}
}

func TestSetKeepsUnchangedTargets(t *testing.T) {
	a, b := stepTarget("web", "a", 1), stepTarget("web", "b", 2)
	m, s, rec := steppedMonitor(t, a, b)
	for range stepped.Fall {
		step(t, m, s, a, errRefused)
	}
	down := rec.next(t, time.Second)
	step(t, m, s, b, errRefused)

	runOf := func(tg Target) *run {
		m.mu.Lock()
		defer m.mu.Unlock()
		return m.targets[key{tg.Service, tg.Backend}].run
	}
	runA, runB := runOf(a), runOf(b)

	// Same specs (in another order, with defaults spelled out differently)
	// plus a new target: nothing restarts.
	c := stepTarget("web", "c", 3)
	if err := m.Set([]Target{c, b, a}); err != nil {
		t.Fatal(err)
	}
	if runOf(a) != runA || runOf(b) != runB {
		t.Fatal("Set restarted unchanged targets")
	}
	up, since, err := m.State("web", "a")
	if up || !since.Equal(down.At) || err != errRefused {
		t.Fatalf("State(a) = %v, %v, %v; want down since %v", up, since, err, down.At)
	}
	if st := status(t, m, "web", "b"); st.Failures != 1 {
		t.Fatalf("b lost its counters: %+v", st)
	}
	if up, _, err := m.State("web", "c"); !up || err != nil {
		t.Fatalf("State(c) = %v, %v; want up", up, err)
	}

	// A changed address restarts the checks with reset counters; the
	// up/down state stays.
	a2 := a
	a2.Addr = netip.MustParseAddrPort("127.0.0.1:11")
	if err := m.Set([]Target{a2, b, c}); err != nil {
		t.Fatal(err)
	}
	if runOf(a2) == runA {
		t.Fatal("a changed address but kept its goroutine")
	}
	st := status(t, m, "web", "a")
	if st.Up || st.Failures != 0 || st.Addr != a2.Addr || !st.Since.Equal(down.At) {
		t.Fatalf("after an address change: %+v, want down since %v, counters reset", st, down.At)
	}
	step(t, m, s, a2, nil)
	step(t, m, s, a2, nil)
	if ev := rec.next(t, time.Second); !ev.Up || ev.Backend != "a" {
		t.Fatalf("event = %+v, want a up", ev)
	}

	// A changed health spec restarts too.
	b2 := b
	b2.Health.Fall = 1
	if err := m.Set([]Target{a2, b2, c}); err != nil {
		t.Fatal(err)
	}
	if runOf(b2) == runB {
		t.Fatal("b changed its health spec but kept its goroutine")
	}
	step(t, m, s, b2, errRefused)
	if ev := rec.next(t, time.Second); ev.Up || ev.Backend != "b" {
		t.Fatalf("event = %+v, want b down after fall 1", ev)
	}
	rec.none(t, 20*time.Millisecond)
}

// TestSetRefusesIncompleteSpecs: the monitor defaults nothing. A target
// without the settings config gives is refused, and the one config gives a
// service without a health section is taken.
func TestSetRefusesIncompleteSpecs(t *testing.T) {
	m, _ := newMonitor(t, &stepper{})
	addr := netip.MustParseAddrPort("127.0.0.1:1")
	for _, tc := range []struct {
		name string
		edit func(*config.Health)
		err  string
	}{
		{"no check", func(h *config.Health) { h.Check = "" }, `health check ""`},
		{"no interval", func(h *config.Health) { h.Interval = 0 }, "interval 0s"},
		{"no timeout", func(h *config.Health) { h.Timeout = 0 }, "timeout 0s"},
		{"no rise", func(h *config.Health) { h.Rise = 0 }, "rise 0"},
		{"no fall", func(h *config.Health) { h.Fall = 0 }, "fall 0"},
	} {
		h := config.DefaultHealth()
		tc.edit(&h)
		err := m.Set([]Target{{Service: "web", Backend: tc.name, Addr: addr, Health: h}})
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: Set = %v, want an error containing %q", tc.name, err, tc.err)
		}
	}
	if n := len(m.Snapshot()); n != 0 {
		t.Fatalf("%d targets taken, want none", n)
	}
	tgs := []Target{
		{Service: "web", Backend: "a", Addr: addr, Health: config.DefaultHealth()},
		{Service: "web", Backend: "b", Addr: addr, Health: config.Health{Check: config.CheckNone}},
	}
	if err := m.Set(tgs); err != nil {
		t.Fatal(err)
	}
	if st := status(t, m, "web", "a"); st.Check != config.CheckTCP {
		t.Fatalf("a = %+v, want tcp", st)
	}
}

func TestSetErrors(t *testing.T) {
	m, _ := newMonitor(t, &stepper{})
	a, b := stepTarget("web", "a", 1), stepTarget("web", "b", 2)
	bad := stepTarget("web", "bad", 3)
	bad.Health.Check = "icmp"
	err := m.Set([]Target{a, a, bad, b})
	if err == nil || !strings.Contains(err.Error(), "web/a: duplicate target") || !strings.Contains(err.Error(), `web/bad: health check "icmp"`) {
		t.Fatalf("Set = %v, want duplicate and invalid-check errors", err)
	}
	if got := len(m.Snapshot()); got != 2 {
		t.Fatalf("Snapshot has %d targets, want the 2 valid ones", got)
	}
	// An existing target given an invalid spec keeps its old one.
	b2 := b
	b2.Health.Check = "icmp"
	if err := m.Set([]Target{a, b2}); err == nil {
		t.Fatal("Set accepted an invalid spec")
	}
	if st := status(t, m, "web", "b"); st.Check != config.CheckTCP {
		t.Fatalf("b = %+v, want its old tcp spec", st)
	}
}

func TestRemovedTargetStops(t *testing.T) {
	s := &stepper{}
	m, rec := newMonitor(t, s)
	before := goleak.IgnoreCurrent()
	a, b := stepTarget("web", "a", 1), stepTarget("web", "b", 2)
	if err := m.Set([]Target{a, b}); err != nil {
		t.Fatal(err)
	}
	step(t, m, s, a, errRefused)
	step(t, m, s, a, errRefused)
	m.mu.Lock()
	runA, runB := m.targets[key{"web", "a"}].run, m.targets[key{"web", "b"}].run
	m.mu.Unlock()
	// a's third check is now waiting; removing a must abandon it, and Set
	// returns only once its goroutine has exited.
	if err := m.Set([]Target{b}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-runA.done:
	default:
		t.Fatal("Set returned before the removed target's goroutine exited")
	}
	if _, _, err := m.State("web", "a"); !errors.Is(err, ErrUnknown) {
		t.Fatalf("State of a removed target: err = %v, want ErrUnknown", err)
	}
	m.ReportFailure("web", "a", errRefused) // ignored
	if err := m.Set(nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-runB.done:
	default:
		t.Fatal("Set(nil) returned before the goroutine exited")
	}
	goleak.VerifyNone(t, before)
	rec.none(t, 20*time.Millisecond)
	if n := len(m.Snapshot()); n != 0 {
		t.Fatalf("Snapshot has %d targets after Set(nil)", n)
	}
}

func TestCheckNone(t *testing.T) {
	a := stepTarget("web", "a", 1)
	a.Health.Check = config.CheckNone
	m, s, rec := steppedMonitor(t, a)
	m.mu.Lock()
	if r := m.targets[key{"web", "a"}].run; r != nil {
		t.Error("check none runs a goroutine")
	}
	m.mu.Unlock()
	for range 10 {
		m.ReportFailure("web", "a", errRefused)
	}
	if up, _, err := m.State("web", "a"); !up || err != nil {
		t.Fatalf("check none: State = %v, %v; want always up", up, err)
	}

	// A down target switched to check none comes up.
	b := stepTarget("web", "b", 2)
	if err := m.Set([]Target{a, b}); err != nil {
		t.Fatal(err)
	}
	for range stepped.Fall {
		step(t, m, s, b, errRefused)
	}
	rec.next(t, time.Second)
	b.Health.Check = config.CheckNone
	if err := m.Set([]Target{a, b}); err != nil {
		t.Fatal(err)
	}
	if ev := rec.next(t, time.Second); !ev.Up || ev.Reason != ReasonNone {
		t.Fatalf("event = %+v, want up because %q", ev, ReasonNone)
	}
	rec.none(t, 20*time.Millisecond)
}

func TestReportFailure(t *testing.T) {
	a := stepTarget("web", "a", 1)
	h := stepTarget("web", "h", 2)
	h.Health.Check, h.Health.HTTPPath, h.Health.ExpectStatus = config.CheckHTTP, config.DefaultHTTPPath, config.DefaultExpectStatus
	m, s, rec := steppedMonitor(t, a, h)
	step(t, m, s, a, errRefused)
	dialErr := errors.New("dial tcp 127.0.0.1:1: connect: connection refused")
	m.ReportFailure("web", "a", dialErr)
	rec.none(t, 20*time.Millisecond)
	m.ReportFailure("web", "a", dialErr)
	ev := rec.next(t, time.Second)
	if ev.Up || ev.Reason != "passive: "+dialErr.Error() {
		t.Fatalf("event = %+v, want down because of the reported failure", ev)
	}
	if _, _, err := m.State("web", "a"); !errors.Is(err, dialErr) {
		t.Fatalf("State err = %v, want it to wrap the reported one", err)
	}

	// ReportSuccess counts for tcp checks...
	m.ReportSuccess("web", "a")
	m.ReportSuccess("web", "a")
	if ev := rec.next(t, time.Second); !ev.Up {
		t.Fatalf("event = %+v, want up after %d reported successes", ev, stepped.Rise)
	}
	// ...but not for http ones: a connection is not an answer.
	m.ReportFailure("web", "h", nil)
	m.ReportSuccess("web", "h")
	if st := status(t, m, "web", "h"); st.Failures != 1 || st.Successes != 0 || st.LastErr != "passive: failure reported" {
		t.Fatalf("http target after a reported failure and success: %+v", st)
	}
	m.ReportFailure("web", "nope", dialErr) // unknown: ignored
	m.ReportSuccess("web", "nope")
	rec.none(t, 20*time.Millisecond)
}

func TestRegistrationTTL(t *testing.T) {
	a := stepTarget("web", "a", 1)
	a.Health.Check = config.CheckNone
	m, _, rec := steppedMonitor(t, a)
	if err := m.Renew("web", "nope", time.Second); !errors.Is(err, ErrUnknown) {
		t.Fatalf("Renew of an unknown target = %v, want ErrUnknown", err)
	}

	const ttl = 100 * time.Millisecond
	renewed := time.Now()
	if err := m.Renew("web", "a", ttl); err != nil {
		t.Fatal(err)
	}
	if st := status(t, m, "web", "a"); st.Expires.Before(renewed.Add(ttl)) || !st.Up {
		t.Fatalf("after Renew: %+v, want up, expiring after %v", st, renewed.Add(ttl))
	}
	// Renewing in time keeps it up.
	var last time.Time
	for range 5 {
		time.Sleep(ttl / 5)
		last = time.Now()
		if err := m.Renew("web", "a", ttl); err != nil {
			t.Fatal(err)
		}
	}
	ev := rec.next(t, time.Second)
	if ev.Up || ev.Reason != ReasonExpired || ev.At.Sub(last) < ttl {
		t.Fatalf("event = %+v, want down because %q no earlier than %v after the last Renew", ev, ReasonExpired, ttl)
	}
	if err := m.Renew("web", "a", time.Hour); err != nil {
		t.Fatal(err)
	}
	if ev := rec.next(t, time.Second); !ev.Up || ev.Reason != ReasonRenewed {
		t.Fatalf("event = %+v, want up because %q", ev, ReasonRenewed)
	}

	// Dropping the TTL retires the check-less goroutine.
	if err := m.Renew("web", "a", 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the goroutine to retire", func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		return m.targets[key{"web", "a"}].run == nil
	})
	if st := status(t, m, "web", "a"); !st.Expires.IsZero() || !st.Up {
		t.Fatalf("after Renew(0): %+v, want up without a deadline", st)
	}
	rec.none(t, 2*ttl)
}

func TestRegistrationTTLWithChecks(t *testing.T) {
	a := stepTarget("web", "a", 1)
	m, s, rec := steppedMonitor(t, a)
	if err := m.Renew("web", "a", 20*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if ev := rec.next(t, time.Second); ev.Up || ev.Reason != ReasonExpired {
		t.Fatalf("event = %+v, want expired", ev)
	}
	// Passing checks do not bring an expired target back.
	step(t, m, s, a, nil)
	step(t, m, s, a, nil)
	rec.none(t, 20*time.Millisecond)

	// While expired its checks fail: a renewal alone does not bring it up,
	// rise passing checks do.
	for range stepped.Fall {
		step(t, m, s, a, errRefused)
	}
	rec.none(t, 20*time.Millisecond)
	if err := m.Renew("web", "a", time.Hour); err != nil {
		t.Fatal(err)
	}
	rec.none(t, 20*time.Millisecond)
	step(t, m, s, a, nil)
	step(t, m, s, a, nil)
	if ev := rec.next(t, time.Second); !ev.Up || ev.Reason != "rise 2/2" {
		t.Fatalf("event = %+v, want up after rise", ev)
	}
}

func TestFirstCheckIsImmediate(t *testing.T) {
	m, rec := newMonitor(t, nil)
	tg := Target{Service: "web", Backend: "a", Addr: nstest.RefusedAddr(t),
		Health: config.Health{Check: config.CheckTCP, Interval: time.Hour, Timeout: time.Second, Rise: 1, Fall: 1}}
	if err := m.Set([]Target{tg}); err != nil {
		t.Fatal(err)
	}
	ev := rec.next(t, 2*time.Second)
	want := "tcp " + tg.Addr.String() + ": connect: "
	if ev.Up || !strings.HasPrefix(ev.Reason, want) {
		t.Fatalf("event = %+v, want down with a reason starting %q", ev, want)
	}
}

// TestKilledBackend checks the promise of the docs: a backend whose process
// dies is reported down within fall × interval + timeout.
func TestKilledBackend(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nstest.AcceptClose(t, ln)

	h := config.Health{Check: config.CheckTCP, Interval: 100 * time.Millisecond, Timeout: 100 * time.Millisecond, Rise: 1, Fall: 3}
	m, rec := newMonitor(t, nil)
	if err := m.Set([]Target{{Service: "web", Backend: "a", Addr: ln.Addr().(*net.TCPAddr).AddrPort(), Health: h}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "two passed checks", func() bool { return status(t, m, "web", "a").Successes >= 2 })

	killed := time.Now()
	ln.Close()
	ev := rec.next(t, 5*time.Second)
	took := ev.At.Sub(killed)
	bound := time.Duration(h.Fall)*h.Interval + h.Timeout
	t.Logf("killed backend reported down after %v (bound %v): %s", took.Round(time.Millisecond), bound, ev.Reason)
	if ev.Up || took > bound {
		t.Fatalf("event %+v after %v, want down within %v", ev, took, bound)
	}
}

func TestClose(t *testing.T) {
	a := stepTarget("web", "a", 1)
	m, _, rec := steppedMonitor(t, a)
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
	if err := m.Set([]Target{a}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Set after Close = %v, want ErrClosed", err)
	}
	m.ReportFailure("web", "a", errRefused)
	m.ReportFailure("web", "a", errRefused)
	m.ReportFailure("web", "a", errRefused)
	if err := m.Renew("web", "a", time.Millisecond); err != nil {
		t.Fatal(err)
	}
	rec.none(t, 20*time.Millisecond)
}

// TestOnChangeCallsMonitor checks that OnChange may use the Monitor, even
// while Close waits for it.
func TestOnChangeCallsMonitor(t *testing.T) {
	s := &stepper{}
	a := stepTarget("web", "a", 1)
	a.Health.Fall = 1
	inside := make(chan struct{})
	var m *Monitor
	m = New(Options{
		Checker: func(config.Health) (Checker, error) { return s, nil },
		OnChange: func(ev Event) {
			close(inside)
			time.Sleep(50 * time.Millisecond) // Close is waiting by now
			if err := m.Set([]Target{a}); err != nil && !errors.Is(err, ErrClosed) {
				t.Errorf("Set from OnChange = %v", err)
			}
			m.State("web", "a")
			m.Snapshot()
		},
	})
	if err := m.Set([]Target{a}); err != nil {
		t.Fatal(err)
	}
	step(t, m, s, a, errRefused)
	<-inside
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		m.Close()
	}()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close deadlocked with OnChange calling Set")
	}
}

func TestSnapshot(t *testing.T) {
	tgs := []Target{stepTarget("web", "b", 2), stepTarget("api", "z", 3), stepTarget("web", "a", 1)}
	m, s, _ := steppedMonitor(t, tgs...)
	step(t, m, s, tgs[2], errRefused)
	var got []string
	for _, st := range m.Snapshot() {
		got = append(got, fmt.Sprintf("%s/%s %s up=%v fails=%d err=%q", st.Service, st.Backend, st.Addr, st.Up, st.Failures, st.LastErr))
		if st.Backend == "a" && (st.FailedChecks != 1 || st.Checks < st.FailedChecks) {
			t.Errorf("web/a: %d checks, %d failed; want 1 failed", st.Checks, st.FailedChecks)
		}
		if st.Backend != "a" && st.FailedChecks != 0 {
			t.Errorf("%s/%s: %d failed checks", st.Service, st.Backend, st.FailedChecks)
		}
	}
	want := []string{
		`api/z 127.0.0.1:3 up=true fails=0 err=""`,
		`web/a 127.0.0.1:1 up=true fails=1 err="tcp 127.0.0.1:1: connect: connection refused"`,
		`web/b 127.0.0.1:2 up=true fails=0 err=""`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("Snapshot:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// random is a fake Checker that fails at random, at once.
type random struct{}

func (random) Check(ctx context.Context, addr netip.AddrPort) error {
	if rand.IntN(3) == 0 {
		return errRefused
	}
	return nil
}

// TestConcurrentUse runs every method at once, for the race detector, and
// checks that events of each target alternate.
func TestConcurrentUse(t *testing.T) {
	var mu sync.Mutex
	last := map[string]bool{}
	bad := 0
	m := New(Options{
		Checker: func(config.Health) (Checker, error) { return random{}, nil },
		OnChange: func(ev Event) {
			mu.Lock()
			defer mu.Unlock()
			k := ev.Service + "/" + ev.Backend
			prev, seen := last[k]
			if !seen {
				prev = true
			}
			if prev == ev.Up {
				bad++
			}
			last[k] = ev.Up
		},
	})
	defer m.Close()

	h := config.Health{Check: config.CheckTCP, Interval: time.Millisecond, Timeout: time.Second, Rise: 2, Fall: 2}
	all := make([]Target, 20)
	for i := range all {
		all[i] = Target{Service: "web", Backend: fmt.Sprint("be", i), Addr: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(i+1)), Health: h}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				be := fmt.Sprint("be", rand.IntN(len(all)))
				switch w {
				case 0:
					// Set changes specs but never removes a target, so
					// each keeps its state and its events alternate.
					next := slices.Clone(all)
					for j := range next {
						next[j].Health.Interval = time.Duration(1+rand.IntN(2)) * time.Millisecond
					}
					if err := m.Set(next); err != nil {
						t.Error(err)
						return
					}
				case 1:
					m.ReportFailure("web", be, errRefused)
					m.ReportSuccess("web", be)
				case 2:
					_ = m.Renew("web", be, time.Duration(rand.IntN(5))*time.Millisecond)
				case 3:
					m.State("web", be)
					m.Snapshot()
				}
				time.Sleep(100 * time.Microsecond)
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if bad != 0 {
		t.Fatalf("%d events repeated their target's previous state", bad)
	}
	if len(last) == 0 {
		t.Fatal("no events at all")
	}
}

// TestNextKeepsMonotonicClock: the time of the next check keeps the
// monotonic reading of the check's start, lands on the grid, and lies
// within interval ±10% (less the grid) of the start.
func TestNextKeepsMonotonicClock(t *testing.T) {
	for _, interval := range []time.Duration{time.Millisecond, 50 * time.Millisecond, 2 * time.Second, time.Hour} {
		start := time.Now()
		grid := min(10*time.Millisecond, max(1, interval/64))
		for range 100 {
			n := next(start, interval)
			if !strings.Contains(n.String(), " m=") {
				t.Fatalf("interval %v: next %v has no monotonic clock reading", interval, n)
			}
			if n.UnixNano()%int64(grid) != 0 {
				t.Fatalf("interval %v: next %v is off the %v grid", interval, n, grid)
			}
			d := n.Sub(start)
			if d < interval-interval/10-grid || d > interval+interval/10 {
				t.Fatalf("interval %v: next is %v after the start", interval, d)
			}
		}
	}
}
