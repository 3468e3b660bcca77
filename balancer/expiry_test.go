package balancer

import "testing"

// TestObserveExpiry: pins that vanish without an unpin through the API
// count as expired; added, unpinned and migrated ones do not, nor do pins
// added while the count was read.
func TestObserveExpiry(t *testing.T) {
	var c serviceCounters
	look := func(live int64) uint64 { return c.observeExpiry(live, c.added.Load()) }
	if got := look(10); got != 0 { // the first look only learns
		t.Fatalf("first look: %d", got)
	}
	c.added.Add(5)
	if got := look(15); got != 0 {
		t.Errorf("5 added: %d expired", got)
	}
	c.unpinned.Add(2)
	if got := look(13); got != 0 {
		t.Errorf("2 unpinned: %d expired", got)
	}
	if got := look(9); got != 4 {
		t.Errorf("4 gone: %d expired, want 4", got)
	}
	c.added.Add(3)
	c.unpinned.Add(1)
	if got := look(9); got != 6 { // want 9+3-1 = 11: 2 more expired
		t.Errorf("%d expired, want 6", got)
	}
	// Pins added between the counter reading and the count's own: they
	// may be missing from live, and are forgiven.
	before := c.added.Load()
	c.added.Add(2)
	if got := c.observeExpiry(9, before); got != 6 {
		t.Errorf("racing adds: %d expired, want 6", got)
	}
	if got := look(11); got != 6 {
		t.Errorf("%d expired after the racing adds showed, want 6", got)
	}
}
