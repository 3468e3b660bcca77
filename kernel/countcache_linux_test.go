package kernel

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/dataplane"
)

func TestCountCache(t *testing.T) {
	var c countCache
	clock := time.Unix(1000, 0)
	c.now = func() time.Time { return clock }
	var reads atomic.Int32
	fail := false
	read := func(context.Context) (map[dataplane.BackendRef]Counter, error) {
		if fail {
			return nil, errors.New("iptables-save failed")
		}
		n := reads.Add(1)
		return map[dataplane.BackendRef]Counter{{Service: "web", Backend: "be1"}: {Packets: uint64(n)}}, nil
	}
	ctx := context.Background()
	get := func() uint64 {
		t.Helper()
		m, err := c.get(ctx, read)
		if err != nil {
			t.Fatal(err)
		}
		return m[dataplane.BackendRef{Service: "web", Backend: "be1"}].Packets
	}
	if got := get(); got != 1 {
		t.Fatalf("first get = %d, want a read", got)
	}
	clock = clock.Add(countersMaxAge - time.Millisecond)
	if got := get(); got != 1 {
		t.Fatalf("get within max age = %d, want the cached 1", got)
	}
	// callers may change what they get without touching the cache
	m, _ := c.get(ctx, read)
	m[dataplane.BackendRef{Service: "web", Backend: "be1"}] = Counter{Packets: 99}
	if got := get(); got != 1 {
		t.Fatalf("get after a caller changed its copy = %d", got)
	}
	clock = clock.Add(time.Millisecond)
	if got := get(); got != 2 {
		t.Fatalf("get at max age = %d, want a new read", got)
	}
	c.reset()
	if got := get(); got != 3 {
		t.Fatalf("get after reset = %d, want a new read", got)
	}
	fail = true
	clock = clock.Add(countersMaxAge)
	if _, err := c.get(ctx, read); err == nil {
		t.Fatal("a failed read returned no error")
	}
	fail = false
	if got := get(); got != 4 {
		t.Fatalf("get after a failed read = %d, want a new read", got)
	}

	// A reset while a read runs (Sync, whose lock the read waits for) must
	// not wait for the read, and the result of that read is not served
	// after it.
	clock = clock.Add(countersMaxAge)
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.get(ctx, func(ctx context.Context) (map[dataplane.BackendRef]Counter, error) {
			c.reset()
			return read(ctx)
		})
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("reset during a read blocked")
	}
	want := uint64(reads.Load() + 1)
	if got := get(); got != want {
		t.Fatalf("get after a read overtaken by reset = %d, want a new read (%d)", got, want)
	}

	// Concurrent callers within max age share one read.
	clock = clock.Add(countersMaxAge)
	before := reads.Load()
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			if _, err := c.get(ctx, read); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := reads.Load() - before; n != 1 {
		t.Fatalf("16 concurrent gets made %d reads, want 1", n)
	}
}
