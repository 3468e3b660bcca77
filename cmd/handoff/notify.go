package main

import (
	"context"
	"fmt"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/sirupsen/logrus"

	"github.com/handoff-lb/handoff/balancer"
)

// systemd speaks to the service manager when it started handoff with
// Type=notify ($NOTIFY_SOCKET set); without it every call does nothing.
type systemd struct {
	log *logrus.Entry
}

func (s systemd) notify(state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		s.log.WithError(err).Warn("sd_notify")
	}
}

// ready tells systemd that handoff serves (READY=1) once eng does: every
// listener open and the data plane synced. Then, when systemd asked for a
// watchdog (WatchdogSec), it answers every half interval while the engine
// answers a status request in time, until ctx ends.
func (s systemd) ready(ctx context.Context, eng *balancer.Engine) {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for eng.State() != balancer.StateServing {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
	s.notify(daemon.SdNotifyReady + "\nSTATUS=serving")
	every, err := daemon.SdWatchdogEnabled(false)
	if err != nil || every <= 0 {
		return
	}
	s.log.WithField("interval", every).Debug("systemd watchdog on")
	w := time.NewTicker(every / 2)
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.C:
		}
		sctx, cancel := context.WithTimeout(ctx, every/2)
		_, err := eng.Status(sctx)
		cancel()
		if err != nil {
			s.log.WithError(err).Warn("the engine did not answer: no watchdog ping")
			continue
		}
		s.notify(daemon.SdNotifyWatchdog)
	}
}

// reloading and reloaded frame a reload (RELOADING=1 ... READY=1).
func (s systemd) reloading() {
	s.notify(fmt.Sprintf("%s\nMONOTONIC_USEC=%d", daemon.SdNotifyReloading, monotonicUsec()))
}

func (s systemd) reloaded(err error) {
	st := "STATUS=serving"
	if err != nil {
		st = "STATUS=serving; the last reload failed: " + err.Error()
	}
	s.notify(daemon.SdNotifyReady + "\n" + st)
}

func (s systemd) stopping() { s.notify(daemon.SdNotifyStopping) }
