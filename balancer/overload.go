package balancer

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/handoff-lb/handoff/dataplane"
)

// ConntrackReader is what a data plane offers when it can say how full the
// connection tracking table of its namespace is (kernel.Dataplane).
type ConntrackReader interface {
	Conntrack() (dataplane.Conntrack, error)
}

// conntrackEvery is how often the connection tracking table's fill is read.
const conntrackEvery = time.Second

// overload is what the engine knows of this host's own capacity.
type overload struct {
	conntrack atomic.Pointer[dataplane.Conntrack] // nil: never read
	nearFull  atomic.Bool                         // the last reading was at least ConntrackNearFull
	failed    atomic.Bool                         // the last reading failed (logged once)
}

// watchConntrack reads the conntrack table's fill every conntrackEvery
// until ctx ends, warning when it crosses ConntrackNearFull and when it
// comes back under.
func (e *Engine) watchConntrack(ctx context.Context, r ConntrackReader) {
	read := func() {
		c, err := r.Conntrack()
		if err != nil {
			if e.over.failed.CompareAndSwap(false, true) {
				e.log.WithError(err).Info("cannot read the conntrack table's fill: overload detection is off until it can")
			}
			return
		}
		e.over.failed.Store(false)
		e.over.conntrack.Store(&c)
		near := c.Fill() >= dataplane.ConntrackNearFull
		if e.over.nearFull.Swap(near) == near {
			return
		}
		l := e.log.WithFields(logrus.Fields{"entries": c.Count, "max": c.Max, "fill": fmt.Sprintf("%.0f%%", 100*c.Fill())})
		if near {
			l.Warn("conntrack table near full: new connections, health checks among them, may be dropped; failed checks are not counted against backends from 95% (raise net.netfilter.nf_conntrack_max)")
		} else {
			l.Info("conntrack table no longer near full")
		}
	}
	read()
	tick(ctx, conntrackEvery, read)
}

// overloaded says why this host cannot open connections now, or "": the
// health monitor's Options.Overloaded.
func (e *Engine) overloaded() string {
	c := e.over.conntrack.Load()
	if c == nil || c.Fill() < dataplane.ConntrackFull {
		return ""
	}
	return fmt.Sprintf("conntrack table %.0f%% full (%d of %d)", 100*c.Fill(), c.Count, c.Max)
}

// ConntrackStatus is the fill of the connection tracking table in a
// Status.
type ConntrackStatus struct {
	Entries int     `json:"entries"`
	Max     int     `json:"max"`
	Fill    float64 `json:"fill"` // entries/max
}

// overloadStatus fills st's overload fields.
func (e *Engine) overloadStatus(st *Status) {
	if c := e.over.conntrack.Load(); c != nil {
		st.Conntrack = &ConntrackStatus{Entries: c.Count, Max: c.Max, Fill: c.Fill()}
	}
	if m := e.health.Load(); m != nil {
		st.InconclusiveChecks = m.Inconclusive()
	}
}
