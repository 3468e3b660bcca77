//go:build !linux

package kernel

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/handoff-lb/handoff/dataplane"
)

// Dataplane is the kernel data plane; off Linux it cannot be created and
// every method returns dataplane.ErrUnsupported.
type Dataplane struct{}

// New returns dataplane.ErrUnsupported off Linux.
func New(ctx context.Context, o Options) (*Dataplane, error) { return nil, dataplane.ErrUnsupported }

// Probe returns a one-line error wrapping dataplane.ErrUnsupported off
// Linux.
func Probe(ctx context.Context, o Options) error {
	return fmt.Errorf("kernel mode unavailable: %w", dataplane.ErrUnsupported)
}

// Cleanup returns dataplane.ErrUnsupported off Linux.
func Cleanup(ctx context.Context, o Options) error { return dataplane.ErrUnsupported }

// Counters returns dataplane.ErrUnsupported off Linux.
func Counters(ctx context.Context, o Options) (map[dataplane.BackendRef]Counter, error) {
	return nil, dataplane.ErrUnsupported
}

// Sync returns dataplane.ErrUnsupported.
func (d *Dataplane) Sync(ctx context.Context, s dataplane.State) error {
	return dataplane.ErrUnsupported
}

// Pin returns dataplane.ErrUnsupported.
func (d *Dataplane) Pin(ctx context.Context, p dataplane.Pin) error { return dataplane.ErrUnsupported }

// Unpin returns dataplane.ErrUnsupported.
func (d *Dataplane) Unpin(ctx context.Context, service, backend string, client netip.Addr) error {
	return dataplane.ErrUnsupported
}

// Lookup returns dataplane.ErrUnsupported.
func (d *Dataplane) Lookup(ctx context.Context, service string, client netip.Addr) (dataplane.Pin, bool, error) {
	return dataplane.Pin{}, false, dataplane.ErrUnsupported
}

// Pins returns dataplane.ErrUnsupported.
func (d *Dataplane) Pins(ctx context.Context, service, backend string, fn func(dataplane.Pin) error) error {
	return dataplane.ErrUnsupported
}

// Forget returns dataplane.ErrUnsupported.
func (d *Dataplane) Forget(ctx context.Context, service, backend string) (int, error) {
	return 0, dataplane.ErrUnsupported
}

// PinBatch returns dataplane.ErrUnsupported.
func (d *Dataplane) PinBatch(ctx context.Context, pins []dataplane.Pin) error {
	return dataplane.ErrUnsupported
}

// Flush returns dataplane.ErrUnsupported.
func (d *Dataplane) Flush(ctx context.Context, service, backend string) error {
	return dataplane.ErrUnsupported
}

// Count returns dataplane.ErrUnsupported.
func (d *Dataplane) Count(ctx context.Context, service string) (map[string]int, error) {
	return nil, dataplane.ErrUnsupported
}

// Counters returns dataplane.ErrUnsupported.
func (d *Dataplane) Counters(ctx context.Context) (map[dataplane.BackendRef]Counter, error) {
	return nil, dataplane.ErrUnsupported
}

// Close does nothing.
func (d *Dataplane) Close() error { return nil }

// SyncStats returns nothing: there is no kernel data plane here.
func (d *Dataplane) SyncStats() dataplane.SyncStats { return dataplane.SyncStats{} }

// ErrOwned says that another process owns handoff's kernel objects.
var ErrOwned = errors.New("another handoff owns the kernel objects of this network namespace")

// Own returns dataplane.ErrUnsupported off Linux.
func Own(o Options) (release func(), err error) { return nil, dataplane.ErrUnsupported }

// Owner returns 0 off Linux.
func Owner(o Options) int { return 0 }

// ReadConntrack returns dataplane.ErrUnsupported off Linux.
func ReadConntrack(nsPath string) (dataplane.Conntrack, error) {
	return dataplane.Conntrack{}, dataplane.ErrUnsupported
}
