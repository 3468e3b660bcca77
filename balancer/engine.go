// Package balancer is handoff's engine: one listener per service; on accept
// it classifies the client, picks a backend, pins the client in the data
// plane, then resets or proxies that first connection. It owns backend state
// (health, drain, live connections) and moves clients when a backend fails.
//
// The engine talks to the kernel or the userspace table only through the
// Dataplane interface, whose implementation cmd/handoff chooses: it imports
// neither data plane (nor netlink), and proxies connections with package
// proxy.
package balancer

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/handoff-lb/handoff/config"
	"github.com/handoff-lb/handoff/dataplane"
	"github.com/handoff-lb/handoff/healthcheck"
	"github.com/handoff-lb/handoff/internal/atomicfile"
	"github.com/handoff-lb/handoff/proxy"
)

// ListenFunc opens a service's listener. Tests pass one that listens inside
// a network namespace.
type ListenFunc func(ctx context.Context, network, address string) (net.Listener, error)

// Options configure an Engine. Config and Dataplane are required.
type Options struct {
	Config    *config.Config
	Dataplane Dataplane
	// Kernel is true when Dataplane forwards pinned clients in the kernel:
	// the listener then sees only new clients. When false every connection
	// is proxied and Lookup decides stickiness.
	Kernel bool
	Logger *logrus.Entry
	// AccessLog, when set, gets one info line per proxied connection
	// (client, backend, bytes each way, duration, how it ended) and per pin
	// event (pinned, pinned by hand, migrated, unpinned through the API).
	// Kernel-forwarded connections never reach the engine, so never
	// appear.
	AccessLog *logrus.Entry
	Listen    ListenFunc // default: proxy.Listen
	// ObservePin, when set, is called after every pin of a new client with
	// the time from accept to the data plane's acknowledgement (the
	// classification included). It must be fast and safe for concurrent use.
	ObservePin func(service string, took time.Duration)

	// Version is reported by Status.
	Version string
	// StateDir holds RuntimeFile, the changes made through the control
	// methods. "" keeps them in memory only.
	StateDir string
	// LoadConfig re-reads the config file for ReloadConfig; nil disables
	// ReloadConfig.
	LoadConfig func() (*config.Config, error)
	// Forwarded, when set, reads the kernel's DNAT rule counters keyed by
	// (service, backend) for Status.
	Forwarded func(ctx context.Context) (map[dataplane.BackendRef]Forwarded, error)
	// Transparent makes the first connections the engine proxies in kernel
	// mode come from the clients' own addresses (proxy.DialTransparent),
	// and asks the data plane for the routing that needs. cmd/handoff sets
	// it when the process may open transparent sockets.
	Transparent bool
	// HoldSYNs makes services that classify by source address hold their
	// new clients' first SYNs in the kernel until pinned, where the data
	// plane can (it implements SYNHolder and its queue binds).
	HoldSYNs bool
	// Replicator, when set, is told of every pin and runtime change the
	// engine makes (a cluster publishes them); see ApplyPins for the
	// other direction.
	Replicator Replicator
}

// SYNHolder is a data plane that can hold the first SYN of a new client
// in the kernel until decide pins the client (kernel.Dataplane).
type SYNHolder interface {
	// HoldSYNs binds the queue of held SYNs; serve reads it until ctx
	// ends, calling decide from several goroutines.
	HoldSYNs() (serve func(ctx context.Context, decide func(context.Context, dataplane.HeldSYN) (backend string, ok bool)) error, err error)
}

// Forwarded is the traffic the kernel forwarded to one backend: the packets
// its DNAT rule matched (each connection's first) and the bytes of its
// connections, both ways.
type Forwarded struct {
	Packets, Bytes uint64
}

// Engine runs the services of one config. Create it with New, start it with
// Run. Its methods are safe for concurrent use.
type Engine struct {
	dp          Dataplane // raw, or raw reporting to repl
	raw         Dataplane // Options.Dataplane
	repl        Replicator
	kernel      bool
	transparent bool
	holdSYNs    bool        // asked for
	holding     atomic.Bool // the queue is bound: Sync holds SYNs
	log         *logrus.Entry
	access      *logrus.Entry // nil: no access log
	listen      ListenFunc
	onPin       func(string, time.Duration)
	view        *view
	stats       stats
	health      atomic.Pointer[healthcheck.Monitor] // created by Run
	over        overload
	state       atomic.Pointer[State] // nil: StateStarting

	version   string
	stateDir  string
	load      func() (*config.Config, error)
	forwarded func(ctx context.Context) (map[dataplane.BackendRef]Forwarded, error)

	// reloadMu serializes config changes (Reload, the control methods) and
	// guards fileCfg and rt.
	reloadMu sync.Mutex
	fileCfg  *config.Config // as loaded from the file; cfg adds registrations
	// reportMu is held shared by every reported data-plane change from
	// the change to its report (replicated), and alone by RemoveLeftovers,
	// which thus never sees a change the Replicator has not learnt of.
	reportMu sync.RWMutex
	rt       runtimeState

	mu       sync.Mutex
	cfg      *config.Config
	services map[string]*service
	runCtx   context.Context // set by Run; handlers derive from it
	start    time.Time       // set by Run
	srv      *proxy.Server   // accepts and proxies every service's connections; made by Run
}

// New checks the options and builds an engine; it opens nothing.
func New(o Options) (*Engine, error) {
	if o.Config == nil || o.Dataplane == nil {
		return nil, errors.New("balancer: Config and Dataplane are required")
	}
	e := &Engine{
		dp:          o.Dataplane,
		raw:         o.Dataplane,
		repl:        o.Replicator,
		kernel:      o.Kernel,
		transparent: o.Transparent && o.Kernel,
		holdSYNs:    o.HoldSYNs && o.Kernel,
		log:         o.Logger,
		access:      o.AccessLog,
		listen:      o.Listen,
		onPin:       o.ObservePin,
		view:        newView(o.Kernel),
		version:     o.Version,
		stateDir:    o.StateDir,
		load:        o.LoadConfig,
		forwarded:   o.Forwarded,
		fileCfg:     o.Config,
		services:    map[string]*service{},
	}
	if e.log == nil {
		e.log = logrus.NewEntry(logrus.StandardLogger())
	}
	if e.repl != nil {
		e.dp = replicated{Dataplane: o.Dataplane, r: e.repl, ttl: e.clientTTL, mu: &e.reportMu}
	}
	rt, err := loadRuntime(o.StateDir)
	if err != nil {
		return nil, err
	}
	if o.StateDir != "" {
		if stale, err := atomicfile.RemoveStale(filepath.Join(o.StateDir, RuntimeFile)); err != nil {
			e.log.WithError(err).Warn("runtime state: removing temporary files of an interrupted save")
		} else if len(stale) > 0 {
			e.log.WithField("files", stale).Warn("runtime state: removed the temporary files of an interrupted save")
		}
	}
	e.rt = rt
	var skipped []string
	e.cfg, skipped = effective(o.Config, &e.rt)
	for _, s := range skipped {
		e.log.WithField("registration", s).Warn("registered backend not applied")
	}
	if e.listen == nil {
		e.listen = proxy.Listen // no per-connection keepalive setup; the proxy decides
	}
	return e, nil
}

// Run opens every service's listener, syncs the data plane and serves until
// ctx ends. A listener that cannot be opened (a port in use) is an error
// before anything in the data plane changes. On return every listener and
// proxied connection is closed; the data plane is left in place, so kernel-
// forwarded flows and pins survive a restart.
func (e *Engine) Run(ctx context.Context) error {
	srv, err := proxy.NewServer()
	if err != nil {
		return err
	}
	defer srv.Close() // after every service closed
	e.mu.Lock()
	e.start = time.Now()
	e.runCtx = ctx
	e.srv = srv
	cfg := e.cfg
	e.mu.Unlock()

	svcs := make([]*service, 0, len(cfg.Services))
	for i := range cfg.Services {
		s, err := e.newService(&cfg.Services[i])
		if err != nil {
			closeAll(svcs)
			return err
		}
		svcs = append(svcs, s)
		if e.rt.closed(s.name) {
			s.log.Warn("listener closed through the API; POST /api/v1/services/" + s.name + "/open opens it")
			continue
		}
		if err := s.open(ctx); err != nil {
			closeAll(svcs)
			return err
		}
	}
	serveHeld := e.bindHeld()
	if err := e.dp.Sync(ctx, e.desired(cfg)); err != nil {
		closeAll(svcs)
		return fmt.Errorf("data plane sync: %w", err)
	}
	if e.kernel {
		e.recountPins(ctx, svcs) // the pins adopted from the sets count before the first client
	}
	events := newHealthQueue(e.onHealth)
	defer events.close()
	health := healthcheck.New(healthcheck.Options{OnChange: events.push, Logger: e.log.WithField("component", "health"), Overloaded: e.overloaded})
	defer health.Close()
	e.health.Store(health)
	e.mu.Lock()
	for _, s := range svcs {
		e.services[s.name] = s
		s.serve(ctx)
	}
	e.mu.Unlock()
	if err := health.Set(healthTargets(cfg)); err != nil {
		e.log.WithError(err).Error("health checks")
	}
	e.applyRuntime()
	e.reapplyHandPins(ctx)
	e.setState(StateServing)
	e.log.WithField("services", len(svcs)).Info("serving")

	var loops sync.WaitGroup
	defer loops.Wait()
	if serveHeld != nil {
		loops.Go(func() {
			if err := serveHeld(ctx, e.decideHeld); err != nil {
				e.log.WithError(err).Error("the held-SYN queue failed: new clients' first SYNs go to the listener")
			}
		})
	}
	loops.Go(func() { tick(ctx, HandPinsEvery, func() { e.reapplyHandPins(ctx) }) })
	if r, ok := e.dp.(ConntrackReader); ok {
		loops.Go(func() { e.watchConntrack(ctx, r) })
	}
	if every := cfg.Log.SummaryInterval; every > 0 {
		loops.Go(func() { tick(ctx, every, func() { e.logSummary(ctx) }) })
	}
	if e.kernel {
		loops.Go(func() {
			tick(ctx, pinRecountEvery, func() {
				e.mu.Lock()
				svcs := slices.Collect(maps.Values(e.services))
				e.mu.Unlock()
				e.recountPins(ctx, svcs)
			})
		})
	}
	<-ctx.Done()
	e.setState(StateStopping)
	health.Close() // no event comes any more
	events.close() // no migration runs while the services close

	e.mu.Lock()
	svcs = svcs[:0]
	for _, s := range e.services {
		svcs = append(svcs, s)
	}
	e.mu.Unlock()
	closeAll(svcs)
	return nil
}

// State is where an engine is in its life.
type State string

const (
	// StateStarting: Run has not opened every listener and synced the data
	// plane yet (or failed to); the status lists no services.
	StateStarting State = "starting"
	// StateServing: every service accepts (unless closed through the API).
	StateServing State = "serving"
	// StateStopping: Run's context ended; the services are closing.
	StateStopping State = "stopping"
)

// State reports where the engine is in its life; it takes no lock.
func (e *Engine) State() State {
	if s := e.state.Load(); s != nil {
		return *s
	}
	return StateStarting
}

func (e *Engine) setState(s State) { e.state.Store(&s) }

// pinRecountEvery is how often, in kernel mode, the pins of each backend
// of a least-conn pool are counted again from its set.
const pinRecountEvery = 5 * time.Second

// tick calls fn every period until ctx ends.
func tick(ctx context.Context, every time.Duration, fn func()) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}

// recountPins sets, for the services with a least-conn pool, each
// backend's pin count (least-conn's measure in kernel mode) to its set's
// member count. The engine counts the pins it makes as it makes them, but
// pins expire in the kernel unseen, and a restarted daemon adopts pins it
// did not make; pins made while counting may be missed until the next
// count.
func (e *Engine) recountPins(ctx context.Context, svcs []*service) {
	for _, s := range svcs {
		if !slices.ContainsFunc(s.snap.Load().cfg.Pools, func(p config.Pool) bool { return p.Balance == config.BalanceLeastConn }) {
			continue
		}
		counts, err := e.dp.Count(ctx, s.name)
		if err != nil {
			if ctx.Err() == nil && s.countFailed.CompareAndSwap(false, true) {
				s.log.WithError(err).Warn("counting pins for least-conn failed; retried every " + pinRecountEvery.String())
			}
			continue
		}
		if s.countFailed.CompareAndSwap(true, false) {
			s.log.Info("counting pins for least-conn works again")
		}
		s.mu.Lock()
		for name, b := range s.backends {
			b.pins.Store(int64(counts[name]))
		}
		s.mu.Unlock()
	}
}

func closeAll(svcs []*service) {
	for _, s := range svcs {
		s.close()
	}
}

// desired renders the data plane state of a config.
func (e *Engine) desired(cfg *config.Config) dataplane.State {
	st := dataplane.State{Services: make([]dataplane.Service, 0, len(cfg.Services)), Transparent: e.transparent}
	for i := range cfg.Services {
		sc := &cfg.Services[i]
		ds := dataplane.Service{
			Name:       sc.Name,
			Listen:     sc.Listen,
			ClientTTL:  sc.ClientTTL,
			SNAT:       sc.SNAT,
			MaxClients: sc.MaxClients,
			HoldSYN:    e.holding.Load() && sc.Classify == config.ClassifySource,

			IPv6PinPrefix: sc.IPv6PinPrefix,
		}
		for _, p := range sc.Pools {
			for _, b := range p.Backends {
				ds.Backends = append(ds.Backends, dataplane.Backend{Name: b.Name, Address: b.Address})
			}
		}
		st.Services = append(st.Services, ds)
	}
	return st
}

// Addr returns the bound address of a service's listener, or nil when the
// service is unknown or not listening.
func (e *Engine) Addr(service string) net.Addr {
	e.mu.Lock()
	s := e.services[service]
	e.mu.Unlock()
	if s == nil {
		return nil
	}
	return s.addr()
}
