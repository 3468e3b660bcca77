// Package balancer is handoff's engine: one listener per service; on accept
// it classifies the client, picks a backend, pins the client in the data
// plane, then resets or proxies that first connection. It owns backend state
// (health, drain, live connections) and moves clients when a backend fails.
//
// The engine talks to the kernel or the userspace table only through the
// Dataplane interface; it never imports netlink.
package balancer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/handoff-lb/handoff/config"
	"github.com/handoff-lb/handoff/dataplane"
	"github.com/handoff-lb/handoff/healthcheck"
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
	Listen ListenFunc // default: net.ListenConfig.Listen
	// ObservePin, when set, is called after every pin of a new client with
	// the time from accept to the data plane's acknowledgement (the
	// classification included). It must be fast and safe for concurrent use.
	ObservePin func(service string, took time.Duration)
}

// Engine runs the services of one config. Create it with New, start it with
// Run. Its methods are safe for concurrent use.
type Engine struct {
	dp     Dataplane
	kernel bool
	log    *logrus.Entry
	listen ListenFunc
	onPin  func(string, time.Duration)
	view   *view
	stats  stats
	start  time.Time
	health *healthcheck.Monitor // created by Run

	reloadMu sync.Mutex // serializes Reload

	mu       sync.Mutex
	cfg      *config.Config
	services map[string]*service
	runCtx   context.Context // set by Run; handlers derive from it
}

// New checks the options and builds an engine; it opens nothing.
func New(o Options) (*Engine, error) {
	if o.Config == nil || o.Dataplane == nil {
		return nil, errors.New("balancer: Config and Dataplane are required")
	}
	e := &Engine{
		dp:       o.Dataplane,
		kernel:   o.Kernel,
		log:      o.Logger,
		listen:   o.Listen,
		onPin:    o.ObservePin,
		view:     newView(o.Kernel),
		cfg:      o.Config,
		services: map[string]*service{},
	}
	if e.log == nil {
		e.log = logrus.NewEntry(logrus.StandardLogger())
	}
	if e.listen == nil {
		var lc net.ListenConfig
		e.listen = lc.Listen
	}
	return e, nil
}

// Run opens every service's listener, syncs the data plane and serves until
// ctx ends. A listener that cannot be opened (a port in use) is an error
// before anything in the data plane changes. On return every listener and
// proxied connection is closed; the data plane is left in place, so kernel-
// forwarded flows and pins survive a restart.
func (e *Engine) Run(ctx context.Context) error {
	e.start = time.Now()
	e.mu.Lock()
	e.runCtx = ctx
	cfg := e.cfg
	e.mu.Unlock()

	svcs := make([]*service, 0, len(cfg.Services))
	for i := range cfg.Services {
		s, err := e.newService(&cfg.Services[i])
		if err != nil {
			closeAll(svcs)
			return err
		}
		if err := s.open(ctx); err != nil {
			closeAll(svcs)
			return err
		}
		svcs = append(svcs, s)
	}
	if err := e.dp.Sync(ctx, e.desired(cfg)); err != nil {
		closeAll(svcs)
		return fmt.Errorf("data plane sync: %w", err)
	}
	e.health = healthcheck.New(healthcheck.Options{OnChange: e.onHealth, Logger: e.log.WithField("component", "health")})
	defer e.health.Close()
	e.mu.Lock()
	for _, s := range svcs {
		e.services[s.name] = s
		s.serve(ctx)
	}
	e.mu.Unlock()
	if err := e.health.Set(healthTargets(cfg)); err != nil {
		e.log.WithError(err).Error("health checks")
	}
	e.log.WithField("services", len(svcs)).Info("serving")

	<-ctx.Done()
	e.health.Close() // no migration runs while the services close

	e.mu.Lock()
	svcs = svcs[:0]
	for _, s := range e.services {
		svcs = append(svcs, s)
	}
	e.mu.Unlock()
	closeAll(svcs)
	return nil
}

func closeAll(svcs []*service) {
	for _, s := range svcs {
		s.close()
	}
}

// desired renders the data plane state of a config.
func (e *Engine) desired(cfg *config.Config) dataplane.State {
	st := dataplane.State{Services: make([]dataplane.Service, 0, len(cfg.Services))}
	for i := range cfg.Services {
		sc := &cfg.Services[i]
		ds := dataplane.Service{
			Name:       sc.Name,
			Listen:     sc.Listen,
			ClientTTL:  sc.ClientTTL,
			SNAT:       sc.SNAT,
			MaxClients: sc.MaxClients,
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

// countUnclassified counts a client whose key could not be read.
func (e *Engine) countUnclassified(service, reason string) {
	e.stats.unclassified(service, reason)
}
