// Package healthcheck decides whether backends are up and tells the balancer
// when one goes down or comes back. It never moves clients itself.
//
// Probing and scheduling are separate. A Checker (TCP, HTTP, SendExpect,
// None) probes a backend once, bounded by its context. The Monitor schedules
// checks, one goroutine per target, and runs the rise/fall state machine.
//
// Every target starts up: a fresh backend is assumed healthy until fall
// consecutive checks fail, so that a restart or a reload serves traffic at
// once instead of waiting rise × interval. Once down, rise consecutive
// successes bring it back. Only transitions produce events; a flapping
// backend (single failures between successes) produces none.
//
// Passive feedback from the proxy path (ReportFailure, ReportSuccess) feeds
// the same counters as the active checks.
//
// Registration TTLs: after Renew(service, backend, ttl) a target must be
// renewed again within ttl. If it is not, it goes down with the reason
// "registration expired", whatever its checks say, and its checks keep
// running. The next Renew brings it back up at once if its checks consider
// it healthy (it never needs rise fresh successes for that); otherwise it
// comes up the usual way, after rise successes. Renew with ttl ≤ 0 drops the
// TTL. A target up for both reasons is up; the state seen by State and by
// events is that combination.
package healthcheck

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/handoff-lb/handoff/config"
	"github.com/handoff-lb/handoff/internal/ratelog"
)

// ErrUnknown is wrapped by errors about a (service, backend) that the last
// Set did not declare.
var ErrUnknown = errors.New("unknown health check target")

// ErrClosed is returned by Set after Close.
var ErrClosed = errors.New("health monitor closed")

// Reasons of events that no check produced.
const (
	ReasonExpired = "registration expired"
	ReasonRenewed = "registration renewed"
	ReasonNone    = "check none"
)

// Target is one backend to watch. Service and Backend identify it.
type Target struct {
	Service string
	Backend string
	Addr    netip.AddrPort
	Health  config.Health // as config gives it (see config.DefaultHealth): the monitor defaults nothing
	// ProxyProtocol is the PROXY protocol version the backend expects
	// first on every connection (the service's proxy_protocol): checks
	// send it a LOCAL header first (WithProxyHeader). "" and off send none.
	ProxyProtocol config.ProxyProtocol
}

// Event reports one transition of a target between up and down.
type Event struct {
	Service string
	Backend string
	Up      bool
	Reason  string        // down: the last check's error or ReasonExpired; up: "rise N/N", ReasonRenewed or ReasonNone
	At      time.Time     // when the transition happened
	Since   time.Duration // how long the target had been in its previous state
}

// Status is a target's state as a status page shows it.
type Status struct {
	Service   string
	Backend   string
	Addr      netip.AddrPort
	Check     config.Check
	Up        bool
	Since     time.Time // last transition, or when the target was added
	LastCheck time.Time // last check or report; zero before the first
	LastErr   string    // error of the last check or report; "" when it passed
	Successes int       // consecutive passed checks
	Failures  int       // consecutive failed checks
	Expires   time.Time // registration deadline; zero without a TTL
	// Checks and FailedChecks count the checks run and failed since the
	// target was added; Latency is how long the last one took.
	Checks, FailedChecks uint64
	Latency              time.Duration
}

// Options configure a Monitor. Every field is optional.
type Options struct {
	// OnChange receives every transition. It is called from a single
	// goroutine, one event at a time, in the order the transitions
	// happened. It may call the Monitor's methods except Close. A slow
	// OnChange delays later events, never checks.
	OnChange func(Event)
	// Logger gets transitions and failed checks at debug, with the fields
	// service, backend and reason (or err): OnChange's receiver logs each
	// transition once, with what it did about it. nil discards.
	Logger *logrus.Entry
	// Checker builds a target's checker; nil means NewChecker. It is the
	// test seam for the probes.
	Checker func(config.Health) (Checker, error)
	// Overloaded, when set, says why this host cannot be trusted to open
	// connections now ("" when it can), such as a connection tracking
	// table that is full: a check that fails meanwhile is inconclusive,
	// like one that fails for a LocalFailure, and counts neither way. It
	// is called with the monitor's lock held, so it must be quick and
	// must not call the Monitor.
	Overloaded func() string
}

// Monitor schedules health checks of a set of targets and runs their
// rise/fall state machines. Its methods are safe for concurrent use. It owns
// one goroutine per checked target, one that expires registrations and one
// that delivers events; Close stops them all and waits for them.
type Monitor struct {
	onChange   func(Event)
	overloaded func() string
	// inconclusive counts the failed checks and reports not counted
	// because this host could not open connections.
	inconclusive atomic.Uint64
	// overloadLog bounds the warnings about them.
	overloadLog *ratelog.Limiter
	log         *logrus.Entry
	newChecker  func(config.Health) (Checker, error)

	ctx    context.Context // canceled by Close; parent of every target's run
	cancel context.CancelFunc

	setMu     sync.Mutex // serializes Set calls
	closeOnce sync.Once

	mu      sync.Mutex
	closed  bool
	targets map[key]*target
	queue   []Event // undelivered events, oldest first

	ttlNext time.Time     // the deadline expireLoop sleeps until; zero: none
	ttlWake chan struct{} // cap 1: ttlNext moved forward

	wg           sync.WaitGroup // target goroutines and expireLoop
	wake         chan struct{}  // cap 1: the queue is not empty
	dispatchDone chan struct{}
}

type key struct{ service, backend string }

// target is one watched backend. Its fields are guarded by Monitor.mu; a
// run's goroutine works on its own copies of spec and checker.
type target struct {
	spec    Target
	checker Checker // nil for check none

	up      bool // healthy && !expired; what events report
	healthy bool // the rise/fall verdict
	since   time.Time
	ok      int // consecutive successes
	fail    int // consecutive failures
	lastErr error
	last    time.Time // last check or report

	checks, failed uint64        // checks run and failed
	latency        time.Duration // of the last check

	ttl     time.Duration
	expires time.Time // zero: no TTL
	expired bool

	run *run // the goroutine checking the current spec; nil when none is needed
}

// run is one goroutine's lifetime. A result is applied only while its run
// is current, so a stopped goroutine's late result is dropped.
type run struct {
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
}

// New returns a Monitor watching nothing. Call Set to add targets and Close
// to stop it.
func New(o Options) *Monitor {
	m := &Monitor{
		onChange:     o.OnChange,
		overloaded:   o.Overloaded,
		overloadLog:  ratelog.New(time.Minute, 1),
		log:          o.Logger,
		newChecker:   o.Checker,
		targets:      make(map[key]*target),
		wake:         make(chan struct{}, 1),
		ttlWake:      make(chan struct{}, 1),
		dispatchDone: make(chan struct{}),
	}
	if m.log == nil {
		l := logrus.New()
		l.Out = io.Discard
		m.log = logrus.NewEntry(l)
	}
	if m.newChecker == nil {
		m.newChecker = NewChecker
	}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	m.wg.Add(1)
	go m.expireLoop()
	go m.dispatch()
	return m
}

// schedulable returns an error unless h has what scheduling a check needs:
// a positive interval and timeout, and rise and fall of at least 1. Check
// none needs nothing. Config gives every target these; the monitor takes
// them as they are rather than default a missing one.
func schedulable(h config.Health) error {
	switch {
	case h.Check == config.CheckNone:
	case h.Interval <= 0:
		return fmt.Errorf("interval %v: want more than 0", h.Interval)
	case h.Timeout <= 0:
		return fmt.Errorf("timeout %v: want more than 0", h.Timeout)
	case h.Rise < 1:
		return fmt.Errorf("rise %d: want at least 1", h.Rise)
	case h.Fall < 1:
		return fmt.Errorf("fall %d: want at least 1", h.Fall)
	}
	return nil
}

// Set makes the monitor watch exactly targets. Targets already watched with
// the same address and health spec keep their state and schedule. Removed
// targets stop: when Set returns, their goroutines have exited and they
// produce no new events. A target whose address or spec changed keeps its
// up/down state, but its counters are reset and its checks restart with an
// immediate one. A target with an invalid or incomplete spec (see
// config.DefaultHealth for a complete one) or a duplicate key is skipped
// (an existing one keeps its old spec) and reported in the error; the
// others are applied.
func (m *Monitor) Set(targets []Target) error {
	m.setMu.Lock()
	defer m.setMu.Unlock()

	type desired struct {
		spec    Target
		checker Checker
	}
	var errs []error
	want := make(map[key]desired, len(targets))
	keep := make(map[key]bool)
	for _, t := range targets {
		k := key{t.Service, t.Backend}
		if _, dup := want[k]; dup || keep[k] {
			errs = append(errs, fmt.Errorf("health check %s/%s: duplicate target", t.Service, t.Backend))
			continue
		}
		c, err := m.newChecker(t.Health)
		if err == nil {
			c, err = WithProxyHeader(c, t.ProxyProtocol)
		}
		if err == nil {
			err = schedulable(t.Health)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("health check %s/%s: %w", t.Service, t.Backend, err))
			keep[k] = true
			continue
		}
		if t.Health.Check == config.CheckNone {
			c = nil
		}
		want[k] = desired{t, c}
	}

	var stopped []*run
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return ErrClosed
	}
	now := time.Now()
	for k, t := range m.targets {
		if _, ok := want[k]; !ok && !keep[k] {
			stopped = append(stopped, t.stop())
			delete(m.targets, k)
		}
	}
	for k, d := range want {
		t := m.targets[k]
		switch {
		case t == nil:
			t = &target{spec: d.spec, checker: d.checker, up: true, healthy: true, since: now}
			m.targets[k] = t
			m.start(t)
		case t.spec != d.spec:
			stopped = append(stopped, t.stop())
			t.spec, t.checker = d.spec, d.checker
			t.ok, t.fail, t.lastErr = 0, 0, nil
			if t.checker == nil && !t.healthy {
				t.healthy = true
				m.update(t, now, ReasonNone)
			}
			m.start(t)
		}
	}
	m.mu.Unlock()

	for _, r := range stopped {
		if r != nil {
			<-r.done
		}
	}
	return errors.Join(errs...)
}

// stop cancels t's goroutine, if any, and returns its run to wait on.
// Called with m.mu held.
func (t *target) stop() *run {
	r := t.run
	if r != nil {
		r.cancel()
		t.run = nil
	}
	return r
}

// start runs t's check goroutine; check none needs none. Called with m.mu
// held and t.run nil.
func (m *Monitor) start(t *target) {
	if t.checker == nil {
		return
	}
	ctx, cancel := context.WithCancel(m.ctx)
	r := &run{ctx: ctx, cancel: cancel, done: make(chan struct{})}
	t.run = r
	m.wg.Add(1)
	go m.loop(t, r, t.spec, t.checker)
}

// loop is one target's goroutine: it checks spec.Addr right away and then
// every interval ±10% (start to start), each check bounded by the timeout.
func (m *Monitor) loop(t *target, r *run, spec Target, c Checker) {
	defer m.wg.Done()
	defer close(r.done)
	defer r.cancel()

	h := spec.Health
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-timer.C:
		}
		start := time.Now()
		ctx, cancel := context.WithTimeout(r.ctx, h.Timeout)
		err := c.Check(ctx, spec.Addr)
		cancel()
		m.record(t, r, err, time.Since(start))
		timer.Reset(max(0, time.Until(next(start, h.Interval))))
	}
}

// expireLoop is the goroutine that takes targets down when their
// registration deadline passes. It sleeps until the earliest deadline;
// Renew wakes it only when it brings that deadline forward.
func (m *Monitor) expireLoop() {
	defer m.wg.Done()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-m.ttlWake:
		case <-timer.C:
		}
		m.mu.Lock()
		now := time.Now()
		var next time.Time
		for _, t := range m.targets {
			switch {
			case t.expires.IsZero() || t.expired:
			case !now.Before(t.expires):
				t.expired = true
				m.update(t, now, ReasonExpired)
			case next.IsZero() || t.expires.Before(next):
				next = t.expires
			}
		}
		m.ttlNext = next
		m.mu.Unlock()
		if next.IsZero() {
			timer.Stop()
		} else {
			timer.Reset(time.Until(next))
		}
	}
}

// next returns when the check after one started at start is due: interval
// ±10% later, so that checks started together drift apart, rounded down to
// a grid of interval/64, at most 10 ms. The grid is timer slack: checks due
// in the same slot wake the process once, which is what keeps a thousand
// targets cheap.
//
// The result keeps start's monotonic clock reading (Time.Truncate would
// drop it), so the wait computed from it is immune to steps of the wall
// clock: an NTP step back by an hour during a check must not delay the
// next one by an hour.
func next(start time.Time, interval time.Duration) time.Time {
	jittered := interval - interval/10 + rand.N(interval/5+1)
	due := start.Add(jittered)
	grid := int64(min(10*time.Millisecond, max(1, interval/64)))
	return due.Add(-time.Duration((due.UnixNano()%grid + grid) % grid))
}

// record applies one check result of run r.
func (m *Monitor) record(t *target, r *run, err error, took time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if t.run != r {
		return // stopped or replaced while the check ran
	}
	t.checks++
	t.latency = took
	if err != nil {
		t.failed++
	}
	if err != nil && m.log.Logger.IsLevelEnabled(logrus.DebugLevel) {
		m.log.WithFields(logrus.Fields{"service": t.spec.Service, "backend": t.spec.Backend, "err": err}).Debug("health check failed")
	}
	m.result(t, time.Now(), err)
}

// result feeds one check outcome into t's rise/fall counters. Called with
// m.mu held.
func (m *Monitor) result(t *target, now time.Time, err error) {
	t.last = now
	h := t.spec.Health
	if err == nil {
		t.fail, t.lastErr = 0, nil
		t.ok++
		if !t.healthy && t.ok >= h.Rise {
			t.healthy = true
			m.update(t, now, fmt.Sprintf("rise %d/%d", h.Rise, h.Rise))
		}
		return
	}
	if why := m.localFailure(err); why != "" {
		// Not the backend's fault: count nothing, neither way, so that a
		// backend that was failing stays on course too.
		t.lastErr = fmt.Errorf("inconclusive, %s: %w", why, err)
		m.inconclusive.Add(1)
		if l := m.overloadLog.Entry(func() *logrus.Entry { return m.log }); l != nil {
			l.WithFields(logrus.Fields{"service": t.spec.Service, "backend": t.spec.Backend, "reason": why, "err": err}).
				Warn("health check failed because this host cannot open connections: not counted against the backend")
		}
		return
	}
	t.ok, t.lastErr = 0, err
	t.fail++
	if t.healthy && t.fail >= h.Fall {
		t.healthy = false
		m.update(t, now, err.Error())
	}
}

// localFailure says why a failed check or report says nothing about the
// backend, or "": this host could not open the connection (LocalFailure),
// or Options.Overloaded says it is overloaded.
func (m *Monitor) localFailure(err error) string {
	if LocalFailure(err) {
		return "no local resources"
	}
	if m.overloaded != nil {
		return m.overloaded()
	}
	return ""
}

// LocalFailure reports whether err says that this host could not open a
// connection at all, whatever the backend: no local address or port
// (EADDRNOTAVAIL), no buffer space or memory (ENOBUFS, ENOMEM), no file
// descriptor (EMFILE, ENFILE).
func LocalFailure(err error) bool {
	for _, e := range []syscall.Errno{syscall.EADDRNOTAVAIL, syscall.ENOBUFS, syscall.ENOMEM, syscall.EMFILE, syscall.ENFILE} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// Inconclusive returns how many failed checks and reports were not counted
// because this host could not open connections (LocalFailure,
// Options.Overloaded).
func (m *Monitor) Inconclusive() uint64 { return m.inconclusive.Load() }

// update recomputes t.up and queues an event when it changed. Called with
// m.mu held.
func (m *Monitor) update(t *target, now time.Time, reason string) {
	up := t.healthy && !t.expired
	if up == t.up {
		return
	}
	ev := Event{Service: t.spec.Service, Backend: t.spec.Backend, Up: up, Reason: reason, At: now, Since: now.Sub(t.since)}
	t.up, t.since = up, now
	if m.closed {
		return // nobody delivers events any more
	}
	m.queue = append(m.queue, ev)
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// ReportFailure counts a failure seen outside the checks, such as a dial
// error on the proxy path, as one failed check of the target. Unknown
// targets and targets with check none are ignored.
func (m *Monitor) ReportFailure(service, backend string, err error) {
	if err == nil {
		err = errors.New("failure reported")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	t := m.targets[key{service, backend}]
	if t == nil || t.checker == nil {
		return
	}
	m.result(t, time.Now(), fmt.Errorf("passive: %w", err))
}

// ReportSuccess counts a successful connection on the proxy path as a passed
// check, but only for tcp checks: for http and send-expect a connection says
// nothing about the answer, so it is ignored, as are unknown targets.
func (m *Monitor) ReportSuccess(service, backend string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := m.targets[key{service, backend}]
	if t == nil || t.spec.Health.Check != config.CheckTCP {
		return
	}
	m.result(t, time.Now(), nil)
}

// Renew extends the target's registration by ttl from now; see the package
// comment. ttl ≤ 0 drops the TTL. It returns an error wrapping ErrUnknown
// when Set has not declared the target.
func (m *Monitor) Renew(service, backend string, ttl time.Duration) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := m.targets[key{service, backend}]
	if t == nil {
		return fmt.Errorf("health check %s/%s: %w", service, backend, ErrUnknown)
	}
	now := time.Now()
	t.ttl = max(0, ttl)
	t.expires = time.Time{}
	if ttl > 0 {
		t.expires = now.Add(ttl)
	}
	if t.expired {
		t.expired = false
		m.update(t, now, ReasonRenewed)
	}
	if ttl > 0 && (m.ttlNext.IsZero() || t.expires.Before(m.ttlNext)) {
		m.ttlNext = t.expires
		select {
		case m.ttlWake <- struct{}{}:
		default:
		}
	}
	return nil
}

// State returns whether the target is up, since when, and the error of its
// last check or report (nil when that passed). An unknown target is down
// with a zero time and an error wrapping ErrUnknown.
func (m *Monitor) State(service, backend string) (up bool, since time.Time, lastErr error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := m.targets[key{service, backend}]
	if t == nil {
		return false, time.Time{}, fmt.Errorf("health check %s/%s: %w", service, backend, ErrUnknown)
	}
	return t.up, t.since, t.lastErr
}

// Snapshot returns the state of every target, sorted by service and backend.
func (m *Monitor) Snapshot() []Status {
	m.mu.Lock()
	out := make([]Status, 0, len(m.targets))
	for _, t := range m.targets {
		s := Status{
			Service:   t.spec.Service,
			Backend:   t.spec.Backend,
			Addr:      t.spec.Addr,
			Check:     t.spec.Health.Check,
			Up:        t.up,
			Since:     t.since,
			LastCheck: t.last,
			Successes: t.ok,
			Failures:  t.fail,
			Expires:   t.expires,

			Checks:       t.checks,
			FailedChecks: t.failed,
			Latency:      t.latency,
		}
		if t.lastErr != nil {
			s.LastErr = t.lastErr.Error()
		}
		out = append(out, s)
	}
	m.mu.Unlock()
	slices.SortFunc(out, func(a, b Status) int {
		return cmp.Or(cmp.Compare(a.Service, b.Service), cmp.Compare(a.Backend, b.Backend))
	})
	return out
}

// dispatch is the goroutine that hands queued events to OnChange.
func (m *Monitor) dispatch() {
	defer close(m.dispatchDone)
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-m.wake:
		}
		for {
			m.mu.Lock()
			if m.closed || len(m.queue) == 0 {
				m.mu.Unlock()
				break
			}
			ev := m.queue[0]
			m.queue[0] = Event{}
			m.queue = m.queue[1:]
			m.mu.Unlock()
			if m.log.Logger.IsLevelEnabled(logrus.DebugLevel) {
				state := "down"
				if ev.Up {
					state = "up"
				}
				m.log.WithFields(logrus.Fields{"service": ev.Service, "backend": ev.Backend, "reason": ev.Reason, "after": ev.Since.Round(time.Millisecond)}).Debug("health check: backend " + state)
			}
			if m.onChange != nil {
				m.onChange(ev)
			}
		}
	}
}

// Close stops every check and the event delivery, and waits for their
// goroutines. Events not yet delivered are dropped; OnChange is not called
// after Close returns. Close must not be called from OnChange, which may
// still be running while Close waits. Later calls wait for the first and
// return nil.
func (m *Monitor) Close() error {
	m.closeOnce.Do(func() {
		m.mu.Lock()
		m.closed = true
		m.queue = nil
		for _, t := range m.targets {
			t.stop()
		}
		m.mu.Unlock()
		m.cancel()
		m.wg.Wait()
		<-m.dispatchDone
	})
	return nil
}
