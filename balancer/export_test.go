package balancer

import "github.com/handoff-lb/handoff/healthcheck"

// OnHealth applies a health transition as the monitor would, synchronously.
func (e *Engine) OnHealth(ev healthcheck.Event) { e.onHealth(ev) }
