package balancer

import (
	"net/netip"
	"testing"
	"time"

	"github.com/handoff-lb/handoff/config"
)

func TestBudgetSlidingWindow(t *testing.T) {
	pb := config.PinBudget{PerPrefix: 4, IPv4Prefix: 24, IPv6Prefix: 64}
	ttl := time.Minute
	var b budget
	t0 := time.Unix(1e9, 0)
	a := netip.MustParseAddr("198.18.7.1")
	other := netip.MustParseAddr("198.18.8.1")
	for i := range 4 {
		if !b.take(t0, a.Next(), pb, ttl) {
			t.Fatalf("pin %d refused under the budget", i)
		}
		a = a.Next()
	}
	if b.take(t0, netip.MustParseAddr("198.18.7.200"), pb, ttl) {
		t.Fatal("the fifth pin of 198.18.7.0/24 was allowed")
	}
	if !b.take(t0, other, pb, ttl) {
		t.Fatal("a full budget of one network refused another network")
	}
	// Half a window later the previous window still counts by half: 4·½ = 2
	// of 4, so two more pins are allowed and a third is not.
	t1 := t0.Add(ttl + ttl/2)
	for i := range 2 {
		if !b.take(t1, netip.MustParseAddr("198.18.7.50"), pb, ttl) {
			t.Fatalf("pin %d refused half a window on", i)
		}
	}
	if b.take(t1, netip.MustParseAddr("198.18.7.51"), pb, ttl) {
		t.Fatal("the sliding window forgot the previous window's pins")
	}
	// Two windows on, everything is forgotten, and so is the memory.
	t2 := t1.Add(2 * ttl)
	if !b.take(t2, netip.MustParseAddr("198.18.7.52"), pb, ttl) {
		t.Fatal("refused two windows later")
	}
	if n := b.networks(); n != 1 {
		t.Fatalf("%d networks tracked after two windows, want 1", n)
	}
}

func TestBudgetRefundAndNoBudget(t *testing.T) {
	pb := config.PinBudget{PerPrefix: 1, IPv4Prefix: 24, IPv6Prefix: 64}
	var b budget
	now := time.Now()
	c := netip.MustParseAddr("2001:2::1")
	if !b.take(now, c, pb, 0) {
		t.Fatal("refused")
	}
	if b.take(now, netip.MustParseAddr("2001:2::ffff:1"), pb, 0) {
		t.Fatal("a second pin of the same /64 was allowed")
	}
	if !b.take(now, netip.MustParseAddr("2001:2:0:1::1"), pb, 0) {
		t.Fatal("another /64 was refused")
	}
	b.refund(c, pb)
	if !b.take(now, netip.MustParseAddr("2001:2::2"), pb, 0) {
		t.Fatal("a refunded pin still counts")
	}
	var none budget
	for range 100 {
		if !none.take(now, c, config.PinBudget{IPv4Prefix: 24, IPv6Prefix: 64}, time.Minute) {
			t.Fatal("per_prefix 0 refused a pin")
		}
	}
	if none.networks() != 0 {
		t.Fatal("per_prefix 0 keeps state")
	}
}

// TestBudgetMemoryBounded: a flood from a million networks, each making
// one pin, is forgotten two windows on; memory never holds more than the
// networks of two windows.
func TestBudgetMemoryBounded(t *testing.T) {
	pb := config.PinBudget{PerPrefix: 10, IPv4Prefix: 24, IPv6Prefix: 64}
	var b budget
	t0 := time.Unix(1e9, 0)
	ttl := time.Second
	for i := range 100_000 {
		a := netip.AddrFrom16([16]byte{0x20, 0x01, 0, 2, byte(i >> 16), byte(i >> 8), byte(i), 0, 0, 0, 0, 0, 0, 0, 0, 1})
		now := t0.Add(time.Duration(i) * 100 * time.Microsecond) // 10,000 per window
		b.take(now, a, pb, ttl)
		if n := b.networks(); n > 20_001 {
			t.Fatalf("%d networks tracked at flood step %d, want at most two windows' (20,000)", n, i)
		}
	}
}
