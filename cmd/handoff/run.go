package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"

	"github.com/handoff-lb/handoff/admin"
	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/cluster"
	"github.com/handoff-lb/handoff/config"
	"github.com/handoff-lb/handoff/dataplane"
	"github.com/handoff-lb/handoff/fallback"
	"github.com/handoff-lb/handoff/internal/statelock"
	"github.com/handoff-lb/handoff/kernel"
	"github.com/handoff-lb/handoff/proxy"
)

func newRunCmd() *cobra.Command {
	var path, mode string
	cmd := &cobra.Command{
		Use:   "run [-c FILE] [--mode auto|kernel|userspace]",
		Short: "Run the balancer",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, cfg, err := loadConfig(path)
			if err != nil {
				return err
			}
			m := cfg.Mode
			if mode != "" {
				m = config.Mode(mode)
			}
			switch m {
			case config.ModeAuto, config.ModeKernel, config.ModeUserspace:
			default:
				return exitError{code: 1, msg: fmt.Sprintf("handoff: --mode %q: want auto, kernel or userspace", mode)}
			}
			log := newLogger(cfg.Log.Level, cfg.Log.Format)
			if err := run(cmd.Context(), p, cfg, m, log); err != nil {
				return exitError{code: 1, msg: "handoff: " + err.Error()}
			}
			return nil
		},
	}
	addConfigFlag(cmd, &path)
	cmd.Flags().StringVar(&mode, "mode", "", "data plane: auto, kernel or userspace (default: the config's mode)")
	return cmd
}

// run serves cfg until SIGINT or SIGTERM. SIGHUP, POST /api/v1/reload and a
// change to the config file reload it.
func run(parent context.Context, path string, cfg *config.Config, mode config.Mode, log *logrus.Entry) error {
	if parent == nil {
		parent = context.Background()
	}
	ctx, stop := signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
	defer stop()
	access, flushAccess := accessLog(cfg)
	defer flushAccess() // deferred before the rest, so it runs after them

	adminOpts := admin.Options{
		Listen:        cfg.Admin.Listen,
		MetricsListen: cfg.Metrics.Listen,
		TokenFile:     cfg.Admin.TokenFile,
		Pprof:         cfg.Admin.Pprof,
		Logger:        log.WithField("component", "admin"),
		Version:       version,
	}
	serveHTTP := cfg.Admin.Listen != "" || cfg.Metrics.Listen != ""
	if serveHTTP {
		if err := adminOpts.Check(); err != nil {
			return err // before the kernel is touched
		}
	}

	// One daemon per state_dir, and one per network namespace's kernel
	// objects (openDataplane claims those): a second would rewrite the
	// first one's rules and state, and neither would repair.
	unlock, err := statelock.Lock(cfg.StateDir)
	if err != nil {
		return err
	}
	defer unlock()

	dp, kernelMode, err := openDataplane(ctx, mode, cfg, log)
	if err != nil {
		return err
	}
	defer func() {
		if err := dp.Close(); err != nil {
			log.WithError(err).Warn("closing data plane")
		}
	}()
	modeName := "userspace"
	if kernelMode {
		modeName = "kernel"
	}
	log = log.WithField("mode", modeName)

	var srv *admin.Server // set before the engine runs; ObservePin on nil does nothing
	opts := balancer.Options{
		Config:    cfg,
		Dataplane: dp,
		Kernel:    kernelMode,
		Logger:    log,
		Version:   version,
		StateDir:  cfg.StateDir,
		LoadConfig: func() (*config.Config, error) {
			c, err := config.Load(path)
			if err == nil && kernelMode {
				if err := needsUserspace(c); err != nil {
					return nil, err
				}
			}
			return c, err
		},
		ObservePin: func(service string, took time.Duration) { srv.ObservePin(service, took) },
		AccessLog:  access,
	}
	var node *cluster.Node
	if cfg.Cluster != nil {
		// Listeners bind with IP_FREEBIND: a backup binds the VIP before
		// keepalived moves it here.
		opts.Listen = proxy.ListenFreebind
		node, err = cluster.New(cluster.Options{Config: cfg.Cluster, Logger: log, Version: version})
		if err != nil {
			return err
		}
		defer node.Close()
		opts.Replicator = node
	}
	if kernelMode {
		// Source-classified services hold new clients' first SYNs in the
		// kernel; the first connections the others proxy come from the
		// clients' own addresses where this process may open transparent
		// sockets.
		opts.HoldSYNs = true
		if err := proxy.CanDialTransparent(); err != nil {
			log.WithError(err).Warn("first connections are proxied from this host's address: transparent dials need CAP_NET_ADMIN")
		} else {
			opts.Transparent = true
		}
	}
	if k, ok := dp.(ownedKernel); ok {
		kdp := k.Dataplane
		opts.Forwarded = func(ctx context.Context) (map[dataplane.BackendRef]balancer.Forwarded, error) {
			cs, err := kdp.Counters(ctx)
			out := make(map[dataplane.BackendRef]balancer.Forwarded, len(cs))
			for k, c := range cs {
				out[k] = balancer.Forwarded{Packets: c.Packets, Bytes: c.Bytes}
			}
			return out, err
		}
	}
	eng, err := balancer.New(opts)
	if err != nil {
		return err
	}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if serveHTTP {
		adminOpts.Controller = eng
		if node != nil {
			adminOpts.Cluster = node
			adminOpts.Page = admin.StatusPage(eng, node)
		} else {
			adminOpts.Page = admin.StatusPage(eng, nil)
		}
		if srv, err = admin.New(adminOpts); err != nil {
			return err
		}
		go func() {
			if err := srv.Serve(ctx); err != nil {
				cancel(err)
			}
		}()
	}

	sd := systemd{log: log.WithField("component", "systemd")}
	reload := func() {
		sd.reloading()
		err := eng.ReloadConfig(ctx)
		if err == nil {
			log.Info("config reloaded")
		} // ReloadConfig logs its failures with every error
		sd.reloaded(err)
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-hup:
				reload()
			case <-ctx.Done():
				return
			}
		}
	}()
	if err := watchConfig(ctx, path, log, reload); err != nil {
		log.WithError(err).Warn("not watching the config file for changes; SIGHUP and POST /api/v1/reload still reload it")
	}

	log.WithFields(logrus.Fields{"config": path, "version": version}).Info("handoff starting")
	var notifier, replicating sync.WaitGroup
	notifier.Go(func() { sd.ready(ctx, eng) })
	defer func() {
		cancel(nil)
		notifier.Wait()
		sd.stopping()
	}()
	if node != nil {
		log.WithFields(logrus.Fields{"cluster": cfg.Cluster.Name, "node": cfg.Cluster.Node, "etcd": cfg.Cluster.Etcd.Endpoints}).Info("joining the cluster")
		replicating.Go(func() { node.Run(ctx, eng) })
	}
	err = eng.Run(ctx)
	cancel(nil)
	replicating.Wait()
	if err != nil {
		return err
	}
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	log.Info("handoff stopped; kernel state left in place")
	return nil
}

// ownedDataplane is a data plane the engine runs over and run closes when
// it ends: the kernel's handles are released (its state stays), the
// userspace table is saved.
type ownedDataplane interface {
	balancer.Dataplane
	io.Closer
}

// openDataplane picks the data plane for mode: kernel when usable (auto) or
// required (kernel), else the userspace table.
func openDataplane(ctx context.Context, mode config.Mode, cfg *config.Config, log *logrus.Entry) (ownedDataplane, bool, error) {
	if mode != config.ModeUserspace {
		if err := needsUserspace(cfg); err != nil {
			if mode == config.ModeKernel {
				return nil, false, err
			}
			log.WithField("reason", err.Error()).Warn("running in userspace mode")
			mode = config.ModeUserspace
		}
	}
	if mode != config.ModeUserspace {
		fs := kernel.Preflight(ctx, preflightOptions(cfg))
		logFindings(log.WithField("component", "preflight"), fs)
		if err := kernel.Fatal(fs); err != nil {
			if mode == config.ModeKernel {
				return nil, false, err
			}
			log.WithField("reason", err.Error()).Warn("kernel path unusable; running in userspace mode")
			mode = config.ModeUserspace
		}
	}
	if mode != config.ModeUserspace {
		// Probe ip6tables as well when a service is IPv6: without it the
		// probe would pass and the first sync fail, so auto mode would exit
		// instead of falling back.
		ko := kernel.Options{
			Logger:       log.WithField("component", "kernel"),
			IPv6:         hasIPv6(cfg),
			MarkMask:     cfg.Kernel.MarkMask,
			Queue:        uint16(cfg.Kernel.Queue),
			RouteTable:   cfg.Kernel.RouteTable,
			RulePriority: cfg.Kernel.RulePriority,
		}
		dp, err := openKernel(ctx, ko)
		switch {
		case err == nil:
			return dp, true, nil
		case mode == config.ModeKernel || errors.Is(err, kernel.ErrOwned):
			// Auto mode too when another daemon owns the namespace: it
			// serves it, and this one must not compete in userspace.
			return nil, false, err
		default:
			log.WithField("reason", err.Error()).Warn("kernel path unusable; running in userspace mode")
		}
	}
	dp, err := fallback.New(fallback.Options{StateDir: cfg.StateDir, Logger: log.WithField("component", "affinity")})
	if err != nil {
		return nil, false, err
	}
	return dp, false, nil
}

// needsUserspace returns why cfg cannot run on the kernel data plane:
// services that send a PROXY protocol header, which kernel-forwarded
// connections cannot carry.
func needsUserspace(cfg *config.Config) error {
	for _, s := range cfg.Services {
		if s.ProxyProtocol != config.ProxyProtocolOff && s.ProxyProtocol != "" {
			return fmt.Errorf("service %s: proxy_protocol %s needs userspace mode (kernel-forwarded connections carry no PROXY header)", s.Name, s.ProxyProtocol)
		}
	}
	return nil
}

// openKernel claims the namespace's kernel objects, probes the kernel path
// and opens the kernel data plane.
func openKernel(ctx context.Context, ko kernel.Options) (ownedDataplane, error) {
	release, err := kernel.Own(ko)
	if err != nil {
		return nil, err
	}
	if err := kernel.Probe(ctx, ko); err != nil {
		release()
		return nil, err
	}
	dp, err := kernel.New(ctx, ko)
	if err != nil {
		release()
		return nil, err
	}
	return ownedKernel{dp, release}, nil
}

// ownedKernel is the kernel data plane with the claim on its namespace,
// which Close gives up.
type ownedKernel struct {
	*kernel.Dataplane
	release func()
}

func (k ownedKernel) Close() error {
	defer k.release()
	return k.Dataplane.Close()
}

// hasIPv6 reports whether a service of cfg listens on IPv6.
func hasIPv6(cfg *config.Config) bool {
	for _, s := range cfg.Services {
		if s.Listen.Addr().Is6() {
			return true
		}
	}
	return false
}

// accessLog is the access logger of cfg (log.access), in the format of
// the process log and at info level whatever log.level says, written to
// stderr in batches (batchWriter); nil when log.access is off. flush
// writes what waits; run calls it on its way out.
func accessLog(cfg *config.Config) (access *logrus.Entry, flush func()) {
	if !cfg.Log.Access {
		return nil, func() {}
	}
	w := newBatchWriter(os.Stderr)
	access = newLogger(config.LogInfo, cfg.Log.Format).WithField("log", "access")
	access.Logger.SetOutput(w)
	return access, func() { w.Close() }
}

// newLogger builds the process logger; level and format were validated.
func newLogger(level config.LogLevel, format config.LogFormat) *logrus.Entry {
	l := logrus.New()
	l.SetOutput(os.Stderr)
	if lv, err := logrus.ParseLevel(string(level)); err == nil {
		l.SetLevel(lv)
	}
	if format == config.LogJSON {
		l.SetFormatter(&logrus.JSONFormatter{})
	} else {
		l.SetFormatter(&logrus.TextFormatter{FullTimestamp: true})
	}
	return logrus.NewEntry(l)
}
