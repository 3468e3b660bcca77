package kernel

import (
	"context"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/handoff-lb/handoff/dataplane"
)

// countersMaxAge is how old the counters Dataplane.Counters returns may
// be. Reading them runs iptables-save -c over the nat table (tens of
// milliseconds with a thousand backends) and lists each service's
// counting set; a status page, a Prometheus scrape and the CLI asking at
// once share one read.
const countersMaxAge = time.Second

// countCache remembers the last counters read and when. Callers that arrive
// while a read runs wait for it and share its result.
type countCache struct {
	gen atomic.Uint64 // bumped by reset; lock-free, so Sync may call it under any lock

	mu      sync.Mutex
	at      time.Time
	last    map[dataplane.BackendRef]Counter
	lastGen uint64           // gen when last was read
	now     func() time.Time // time.Now; tests replace it
}

// get returns a copy of the cached counters when they are younger than
// countersMaxAge, and otherwise calls read and caches its result. An error
// is returned as is and not cached.
func (c *countCache) get(ctx context.Context, read func(context.Context) (map[dataplane.BackendRef]Counter, error)) (map[dataplane.BackendRef]Counter, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now
	if c.now != nil {
		now = c.now
	}
	gen := c.gen.Load()
	if c.last != nil && c.lastGen == gen && now().Sub(c.at) < countersMaxAge {
		return maps.Clone(c.last), nil
	}
	m, err := read(ctx)
	if err != nil {
		return nil, err
	}
	c.last, c.at, c.lastGen = m, now(), gen
	return maps.Clone(m), nil
}

// reset makes the next get read the counters again: the rules changed. It
// takes no lock (get holds its lock while the read waits for Sync's).
func (c *countCache) reset() { c.gen.Add(1) }
