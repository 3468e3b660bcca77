package balancer

import (
	"errors"
	"net/netip"
	"sync"
	"time"

	"github.com/handoff-lb/handoff/config"
	"github.com/handoff-lb/handoff/dataplane"
)

// errOverBudget is the error of a new client whose network spent its pin
// budget (pin_budget): like a full set, it is served as on_full says.
var errOverBudget = errors.New("pin budget of the client's network spent")

// unpinnable reports whether err is why a pin could not be made for lack
// of room: a full set or table, or a spent budget. Such a client is
// served as on_full says.
func unpinnable(err error) bool {
	return errors.Is(err, dataplane.ErrFull) || errors.Is(err, errOverBudget)
}

// noTTLWindow is the budget's window for a service whose pins never
// expire (client_ttl 0): the budget then bounds how fast one network
// makes pins, per_prefix an hour.
const noTTLWindow = time.Hour

// budget counts the new pins each client network (the client's address
// cut to pin_budget's ipv4_prefix or ipv6_prefix) made in a sliding window
// of client_ttl, and refuses a network's new pins once the count reaches
// per_prefix.
//
// The count is of pins made, not of pins alive: in kernel mode pins
// expire in the kernel unseen, but a pin made within the last client_ttl
// is certainly still alive (it expires client_ttl after its client's last
// new connection, at the earliest client_ttl after it was made), so the
// window never lets one network hold more than per_prefix pins made
// within it. Pins made earlier and kept alive by their clients' traffic
// are not counted again. The window slides the usual way: two fixed
// windows, the previous one weighted by the part of it that still
// overlaps the sliding one.
//
// Memory is one map entry (about 50 bytes) per network that made a pin
// in the last two windows: at most one per pin made then, which the sets'
// max_clients bounds (a pin made within a window is alive, so a window's
// pins fit in the sets), never more.
type budget struct {
	mu        sync.Mutex
	start     time.Time // of the current fixed window
	cur, prev map[netip.Prefix]uint32
}

// window is the budget window of a service with client TTL ttl.
func window(ttl time.Duration) time.Duration {
	if ttl <= 0 {
		return noTTLWindow
	}
	return ttl
}

// network returns the client network of client under pb.
func network(client netip.Addr, pb config.PinBudget) netip.Prefix {
	bits := pb.IPv4Prefix
	if client.Is6() {
		bits = pb.IPv6Prefix
	}
	p, err := client.Prefix(bits)
	if err != nil {
		return netip.PrefixFrom(client, client.BitLen())
	}
	return p
}

// take counts one new pin of client's network at now and reports whether
// the budget allows it; a refused pin is not counted. With no budget
// (per_prefix 0) every pin is allowed and nothing is kept.
func (b *budget) take(now time.Time, client netip.Addr, pb config.PinBudget, ttl time.Duration) bool {
	if pb.PerPrefix <= 0 {
		return true
	}
	w := window(ttl)
	nw := network(client, pb)
	b.mu.Lock()
	defer b.mu.Unlock()
	b.slide(now, w)
	est := float64(b.cur[nw])
	if n := b.prev[nw]; n > 0 {
		est += float64(n) * float64(w-now.Sub(b.start)) / float64(w)
	}
	if est >= float64(pb.PerPrefix) {
		return false
	}
	b.cur[nw]++
	return true
}

// refund takes back a pin that take allowed but the data plane did not
// make.
func (b *budget) refund(client netip.Addr, pb config.PinBudget) {
	if pb.PerPrefix <= 0 {
		return
	}
	nw := network(client, pb)
	b.mu.Lock()
	defer b.mu.Unlock()
	switch n := b.cur[nw]; {
	case n > 1:
		b.cur[nw] = n - 1
	case n == 1:
		delete(b.cur, nw)
	}
}

// slide moves the fixed windows forward to now; b.mu is held.
func (b *budget) slide(now time.Time, w time.Duration) {
	switch el := now.Sub(b.start); {
	case b.cur == nil || el >= 2*w || el < 0:
		b.cur, b.prev, b.start = map[netip.Prefix]uint32{}, nil, now
	case el >= w:
		b.prev, b.cur, b.start = b.cur, map[netip.Prefix]uint32{}, b.start.Add(w)
	}
}

// networks returns how many networks the budget tracks, for tests.
func (b *budget) networks() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.cur) + len(b.prev)
}
