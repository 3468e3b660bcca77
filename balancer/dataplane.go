package balancer

import (
	"context"
	"net/netip"

	"github.com/handoff-lb/handoff/dataplane"
)

// Dataplane records client→backend pins and forwards pinned clients: what
// the engine needs of a data plane. Two implementations exist:
// kernel.Dataplane (ipset + iptables DNAT, Linux) and fallback.Dataplane
// (an in-process affinity table; every connection is proxied by the
// balancer, through package proxy).
//
// Sync is declarative and idempotent; the rest act on clients and their
// flows. All methods are safe for concurrent use. Closing a data plane is
// its owner's business (cmd/handoff), not the engine's.
type Dataplane interface {
	// Sync makes the data plane match s: sets, chains and rules of services
	// and backends are created, changed or removed; pins of backends that
	// remain are kept.
	Sync(ctx context.Context, s dataplane.State) error
	// Forget drops the forwarding state of flows from the service's clients
	// to backend (conntrack entries in the kernel) and returns how many.
	Forget(ctx context.Context, service, backend string) (int, error)
	PinWriter
	PinReader
}

// PinWriter makes and removes pins: the write side of a Dataplane.
type PinWriter interface {
	// Pin adds or replaces the pin of p.Client in p.Backend. It returns only
	// once the pin is in force.
	Pin(ctx context.Context, p dataplane.Pin) error
	// PinBatch pins every p like Pin, in as few round trips as the data
	// plane allows; a failed pin does not stop the others, and the error
	// says how many failed and why.
	PinBatch(ctx context.Context, pins []dataplane.Pin) error
	// Unpin removes client from backend's pins; absent is not an error.
	Unpin(ctx context.Context, service, backend string, client netip.Addr) error
	// Flush removes every pin of one backend of a service.
	Flush(ctx context.Context, service, backend string) error
}

// PinReader reads pins: the read side of a Dataplane.
type PinReader interface {
	// Lookup returns the live pin of client in service, if any.
	Lookup(ctx context.Context, service string, client netip.Addr) (dataplane.Pin, bool, error)
	// Pins calls fn for every live pin of backend (every backend of the
	// service when backend is ""), stopping at the first error fn returns.
	Pins(ctx context.Context, service, backend string, fn func(dataplane.Pin) error) error
	// Count returns the number of live pins per backend of service.
	Count(ctx context.Context, service string) (map[string]int, error)
}
