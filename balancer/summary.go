package balancer

import (
	"context"
	"maps"
	"slices"

	"github.com/sirupsen/logrus"
)

// logSummary logs one line per service: pinned clients, live proxied
// connections, backends up, down and draining (log.summary_interval).
func (e *Engine) logSummary(ctx context.Context) {
	e.mu.Lock()
	svcs := maps.Clone(e.services)
	e.mu.Unlock()
	for _, name := range slices.Sorted(maps.Keys(svcs)) {
		s := svcs[name]
		var up, down, draining int
		var active int64
		s.mu.Lock()
		for _, b := range s.backends {
			if b.down.Load() {
				down++
			} else {
				up++
			}
			if b.draining.Load() {
				draining++
			}
			active += b.active.Load()
		}
		s.mu.Unlock()
		f := logrus.Fields{"backends_up": up, "backends_down": down, "draining": draining, "connections": active, "open": s.addr() != nil}
		if counts, err := e.dp.Count(ctx, name); err == nil {
			pinned := 0
			for _, n := range counts {
				pinned += n
			}
			f["clients"] = pinned
		}
		s.log.WithFields(f).Info("summary")
	}
}
