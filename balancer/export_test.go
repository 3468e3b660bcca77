package balancer

import "github.com/handoff-lb/handoff/healthcheck"

// OnHealth applies a health transition as the monitor would, synchronously.
func (e *Engine) OnHealth(ev healthcheck.Event) { e.onHealth(ev) }

// HandPinsEvery is how often pins made by hand are made again where missing.
const HandPinsEvery = handPinsEvery
