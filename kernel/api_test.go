package kernel_test

import (
	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/kernel"
)

var _ balancer.Dataplane = (*kernel.Dataplane)(nil)
