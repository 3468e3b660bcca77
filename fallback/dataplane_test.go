package fallback_test

import (
	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/fallback"
)

var _ balancer.Dataplane = (*fallback.Dataplane)(nil)
