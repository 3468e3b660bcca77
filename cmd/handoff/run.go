package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"

	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/config"
	"github.com/handoff-lb/handoff/fallback"
	"github.com/handoff-lb/handoff/kernel"
)

func newRunCmd() *cobra.Command {
	var path, mode string
	cmd := &cobra.Command{
		Use:   "run [-c FILE] [--mode auto|kernel|userspace]",
		Short: "Run the balancer",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p := configPath(path)
			cfg, err := config.Load(p)
			if err != nil {
				return exitError{code: 1, msg: err.Error()}
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

// run serves cfg until SIGINT or SIGTERM; SIGHUP reloads the config file.
func run(parent context.Context, path string, cfg *config.Config, mode config.Mode, log *logrus.Entry) error {
	if parent == nil {
		parent = context.Background()
	}
	ctx, stop := signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
	defer stop()

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
	eng, err := balancer.New(balancer.Options{Config: cfg, Dataplane: dp, Kernel: kernelMode, Logger: log})
	if err != nil {
		return err
	}

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case <-hup:
				reload(ctx, eng, path, log)
			case <-done:
				return
			}
		}
	}()

	log.WithFields(logrus.Fields{"config": path, "version": version}).Info("handoff starting")
	if err := eng.Run(ctx); err != nil {
		return err
	}
	log.Info("handoff stopped; kernel state left in place")
	return nil
}

// reload re-reads the config file; an invalid file is rejected whole and the
// running config stays.
func reload(ctx context.Context, eng *balancer.Engine, path string, log *logrus.Entry) {
	cfg, err := config.Load(path)
	if err != nil {
		log.WithError(err).Error("reload rejected: the running config stays")
		return
	}
	if err := eng.Reload(ctx, cfg); err != nil {
		log.WithError(err).Error("reload failed")
		return
	}
	log.WithField("services", len(cfg.Services)).Info("config reloaded")
}

// openDataplane picks the data plane for mode: kernel when usable (auto) or
// required (kernel), else the userspace table.
func openDataplane(ctx context.Context, mode config.Mode, cfg *config.Config, log *logrus.Entry) (balancer.Dataplane, bool, error) {
	if mode != config.ModeUserspace {
		ko := kernel.Options{Logger: log.WithField("component", "kernel")}
		err := kernel.Probe(ctx, ko)
		if err == nil {
			dp, err := kernel.New(ctx, ko)
			if err == nil {
				return dp, true, nil
			}
			if mode == config.ModeKernel {
				return nil, false, err
			}
			log.WithError(err).Warn("kernel data plane failed to start; running in userspace mode")
		} else {
			if mode == config.ModeKernel {
				return nil, false, err
			}
			log.WithField("reason", err.Error()).Warn("kernel path unusable; running in userspace mode")
		}
	}
	dp, err := fallback.New(fallback.Options{StateDir: cfg.StateDir, Logger: log.WithField("component", "affinity")})
	if err != nil {
		return nil, false, err
	}
	return dp, false, nil
}

// newLogger builds the process logger; level and format were validated.
func newLogger(level, format string) *logrus.Entry {
	l := logrus.New()
	l.SetOutput(os.Stderr)
	if lv, err := logrus.ParseLevel(level); err == nil {
		l.SetLevel(lv)
	}
	if format == "json" {
		l.SetFormatter(&logrus.JSONFormatter{})
	} else {
		l.SetFormatter(&logrus.TextFormatter{FullTimestamp: true})
	}
	return logrus.NewEntry(l)
}
