package balancer

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/healthcheck"
)

// heldQueue is a healthQueue whose apply holds each event until the test
// lets it finish with done(service).
type heldQueue struct {
	*healthQueue
	entered chan string // "service/backend" of each event apply starts
	release map[string]chan struct{}

	mu      sync.Mutex
	applied []string // each event apply started, "service/backend up|down"
}

func newHeldQueue(services ...string) *heldQueue {
	h := &heldQueue{entered: make(chan string, 16), release: map[string]chan struct{}{}}
	for _, s := range services {
		h.release[s] = make(chan struct{})
	}
	h.healthQueue = newHealthQueue(func(ev healthcheck.Event) {
		state := "down"
		if ev.Up {
			state = "up"
		}
		h.mu.Lock()
		h.applied = append(h.applied, fmt.Sprintf("%s/%s %s", ev.Service, ev.Backend, state))
		h.mu.Unlock()
		h.entered <- ev.Service + "/" + ev.Backend
		<-h.release[ev.Service]
	})
	return h
}

func (h *heldQueue) push(service, backend string, up bool) {
	h.healthQueue.push(healthcheck.Event{Service: service, Backend: backend, Up: up})
}

// started waits for apply to start on want.
func (h *heldQueue) started(t *testing.T, want string) {
	t.Helper()
	select {
	case got := <-h.entered:
		if got != want {
			t.Fatalf("applying %s, want %s", got, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("%s was never applied", want)
	}
}

func (h *heldQueue) done(service string) { h.release[service] <- struct{}{} }

func (h *heldQueue) log() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.applied)
}

// TestHealthQueue: a service's events wait for each other, not for another
// service's; of a backend's events still waiting, the latest wins and
// keeps the first one's place.
func TestHealthQueue(t *testing.T) {
	q := newHeldQueue("a", "b")
	defer q.close()
	q.push("a", "x", false)
	q.started(t, "a/x") // a's goroutine is held here
	q.push("a", "y", false)
	q.push("a", "x", true)
	q.push("a", "y", true)
	q.push("a", "z", false)
	q.push("a", "y", false) // y waits once, down
	q.push("b", "x", false)
	q.started(t, "b/x") // while a's is held
	q.done("b")
	q.done("a")
	for _, next := range []string{"a/y", "a/x", "a/z"} {
		q.started(t, next)
		q.done("a")
	}
	q.close()
	want := []string{"a/x down", "b/x down", "a/y down", "a/x up", "a/z down"}
	if got := q.log(); !slices.Equal(got, want) {
		t.Fatalf("applied %q, want %q", got, want)
	}
}

// TestHealthQueueClose: close waits for the event being applied, drops
// those waiting, and later events are ignored.
func TestHealthQueueClose(t *testing.T) {
	q := newHeldQueue("a")
	q.push("a", "x", false)
	q.started(t, "a/x")
	q.push("a", "y", false)
	closed := make(chan struct{})
	go func() { q.close(); close(closed) }()
	select {
	case <-closed:
		t.Fatal("close returned while an event was being applied")
	case <-time.After(50 * time.Millisecond):
	}
	q.done("a")
	<-closed
	q.push("a", "z", false)
	if got, want := q.log(), []string{"a/x down"}; !slices.Equal(got, want) {
		t.Fatalf("applied %q, want %q", got, want)
	}
	q.healthQueue.mu.Lock()
	defer q.healthQueue.mu.Unlock()
	if len(q.pending) != 0 {
		t.Fatalf("%d services' events still pending after close", len(q.pending))
	}
}
