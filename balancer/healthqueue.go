package balancer

import (
	"sync"

	"github.com/handoff-lb/handoff/healthcheck"
)

// healthQueue carries the health monitor's events to the engine: push
// never blocks the monitor, and each service with events waiting has a
// goroutine of its own that applies them one at a time, in order, so one
// service's slow migration (a 100k-pin listing) never delays another
// service's failover.
//
// Only a backend's latest state matters, so at most one event per backend
// waits: a newer one replaces it in place (a down and an up not yet applied
// are an up). The queue therefore holds at most one event per backend.
//
// Run owns the queue: close drops what waits, stops the goroutines and
// waits for the events being applied.
type healthQueue struct {
	apply func(healthcheck.Event)
	wg    sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	pending map[string]*serviceEvents // by service, while its goroutine runs
}

// serviceEvents are the events of one service waiting to be applied.
type serviceEvents struct {
	order  []string                     // backends, oldest first
	latest map[string]healthcheck.Event // by backend
}

func newHealthQueue(apply func(healthcheck.Event)) *healthQueue {
	return &healthQueue{apply: apply, pending: map[string]*serviceEvents{}}
}

// push queues ev for its service, replacing any event of the same backend
// still waiting, and starts the service's goroutine when none runs. After
// close it does nothing.
func (q *healthQueue) push(ev healthcheck.Event) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return
	}
	p := q.pending[ev.Service]
	if p == nil {
		p = &serviceEvents{latest: map[string]healthcheck.Event{}}
		q.pending[ev.Service] = p
		q.wg.Add(1)
		go q.drain(ev.Service, p)
	}
	if _, waiting := p.latest[ev.Backend]; !waiting {
		p.order = append(p.order, ev.Backend)
	}
	p.latest[ev.Backend] = ev
}

// drain applies the events of service until none waits, or the queue
// closes.
func (q *healthQueue) drain(service string, p *serviceEvents) {
	defer q.wg.Done()
	for {
		q.mu.Lock()
		if q.closed || len(p.order) == 0 {
			delete(q.pending, service)
			q.mu.Unlock()
			return
		}
		be := p.order[0]
		p.order = p.order[1:]
		ev := p.latest[be]
		delete(p.latest, be)
		q.mu.Unlock()
		q.apply(ev)
	}
}

// close drops the events still waiting and waits for those being applied.
func (q *healthQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.wg.Wait()
}
