package kernel

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/handoff-lb/handoff/dataplane"
)

// pinChunk is how many pins PinBatch hands the kernel per hold of d.mu:
// enough to fill several netlink batches, few enough that a Sync waiting
// for the lock waits for one chunk only, and that PinBatch's buffers stay
// small whatever the batch's size.
const pinChunk = 4096

// PinBatch pins every p of pins as Pin does, in order (a later pin of the
// same client to the same backend wins), with many netlink messages per
// round trip. A pin's TTL is its timeout, so a migration keeps a client's
// remaining lifetime by passing the TTL that Pins reported; TTL 0 means
// the service's ClientTTL. Pins may name different services and
// backends.
//
// Pins that fail do not stop the others. PinBatch returns once every other
// pin is in force; its error then says how many of how many failed and
// the first failure of each distinct cause, and wraps those (with
// dataplane.ErrUnknown for unknown services and backends, dataplane.ErrFull
// for full sets). Pins not yet made when ctx ends are counted as failed.
// Sets being rebuilt by a Sync get the pins in both copies, as with Pin.
func (d *Dataplane) PinBatch(ctx context.Context, pins []dataplane.Pin) error {
	f := &batchError{total: len(pins)}
	b := pinBuffers{adds: make([]setAdd, 0, min(len(pins), pinChunk))}
	for len(pins) > 0 {
		if err := ctx.Err(); err != nil {
			f.fail("ctx", len(pins), fmt.Errorf("not attempted: %w", err))
			break
		}
		n := min(len(pins), pinChunk)
		if !d.pinChunk(pins[:n], &b, f) {
			f.fail("closed", len(pins)-n, errClosed)
			break
		}
		pins = pins[n:]
	}
	if f.failed == 0 {
		return nil
	}
	return f
}

// pinBuffers are PinBatch's buffers, reused from chunk to chunk.
type pinBuffers struct {
	adds, shadow []setAdd
	errs         []error
}

// pinChunk makes the pins of one chunk under d.mu, noting failures in f.
// It returns false when the Dataplane is closed (all of pins failed).
func (d *Dataplane) pinChunk(pins []dataplane.Pin, b *pinBuffers, f *batchError) bool {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		f.fail("closed", len(pins), errClosed)
		return false
	}
	b.adds = b.adds[:0]
	for _, p := range pins {
		s, be, err := d.lookupLocked(p.Service, p.Backend)
		var ip netip.Addr
		if err == nil {
			ip, err = s.client(p.Client)
		}
		if err != nil {
			f.fail(err.Error(), 1, err)
			continue
		}
		// The index entry first, as in Pin. A failure of either fails the
		// pin: a pin without its index entry is not forwarded (the client
		// meets the listener again), and an index entry without its pin
		// is merely stale.
		b.adds = append(b.adds, d.indexAdd(s, be, ip), setAdd{set: be.set, ip: ip, cidr: s.cidr, timeout: s.timeout(p.TTL), comment: sanitizeComment(p.Key)})
	}
	errs := b.errsFor(len(b.adds))
	d.sets.addBatch(b.adds, true, errs)

	// As in Pin: a set being rebuilt gets the pins in its copy too, unless
	// the copy's smaller maxelem has no room for them.
	b.shadow = b.shadow[:0]
	for i := 0; i < len(b.adds); i += 2 {
		if err := cmp.Or(errs[i], errs[i+1]); err != nil {
			e := b.adds[i+1]
			if errs[i] != nil {
				e = b.adds[i]
			}
			f.failAdd(e, err)
			continue
		}
		e := b.adds[i+1]
		if r, ok := d.shadow[e.set]; ok {
			r.pinned(e.ip)
			e.set = r.tmp
			b.shadow = append(b.shadow, e)
		}
	}
	if len(b.shadow) > 0 {
		errs := b.errsFor(len(b.shadow))
		d.sets.addBatch(b.shadow, true, errs)
		for i, e := range b.shadow {
			if errs[i] != nil && !errors.Is(errs[i], dataplane.ErrFull) {
				f.failAdd(e, errs[i])
			}
		}
	}
	return true
}

// errsFor returns a cleared error slice of length n.
func (b *pinBuffers) errsFor(n int) []error {
	if cap(b.errs) < n {
		b.errs = make([]error, n)
	}
	b.errs = b.errs[:n]
	clear(b.errs)
	return b.errs
}

// timeout is the ipset timeout of a pin with the given TTL: the service's
// ClientTTL for 0, none at all in a service without timeouts.
func (s *service) timeout(ttl time.Duration) uint32 {
	if s.ttl == 0 {
		return 0
	}
	if ttl > 0 {
		return seconds(ttl)
	}
	return s.ttl
}

// maxCauses is how many distinct causes a batchError keeps.
const maxCauses = 8

// batchError is the error of a PinBatch some of whose pins failed: how
// many, and the first failure of each distinct cause.
type batchError struct {
	total, failed int
	causes        []batchCause
	others        int // failures whose cause is beyond the first maxCauses
}

type batchCause struct {
	key string
	err error // the first failure
	n   int
}

// fail notes n failures with a cause identified by key.
func (e *batchError) fail(key string, n int, err error) {
	if n <= 0 {
		return
	}
	e.failed += n
	for i := range e.causes {
		if e.causes[i].key == key {
			e.causes[i].n += n
			return
		}
	}
	if len(e.causes) == maxCauses {
		e.others += n
		return
	}
	e.causes = append(e.causes, batchCause{key: key, err: err, n: n})
}

// failAdd notes a failed add; failures in one set with the same kernel
// error share a cause.
func (e *batchError) failAdd(a setAdd, err error) {
	e.fail(a.set+"\x00"+err.Error(), 1, fmt.Errorf("ipset %q: add %s: %w", a.set, a.ip, err))
}

func (e *batchError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "kernel: pin batch: %d of %d pins failed: ", e.failed, e.total)
	for i, c := range e.causes {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(c.err.Error())
		if c.n > 1 {
			fmt.Fprintf(&b, " (and %d more like it)", c.n-1)
		}
	}
	if e.others > 0 {
		fmt.Fprintf(&b, "; %d more for other reasons", e.others)
	}
	return b.String()
}

// Unwrap returns the first failure of each cause kept.
func (e *batchError) Unwrap() []error {
	errs := make([]error, len(e.causes))
	for i, c := range e.causes {
		errs[i] = c.err
	}
	return errs
}

// Flush removes every pin of backend's set; an absent set is not an
// error. It waits for a Sync in flight, so that no rebuild of the set can
// copy the flushed pins back.
func (d *Dataplane) Flush(ctx context.Context, service, backend string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.syncMu.Lock()
	defer d.syncMu.Unlock()
	d.mu.RLock()
	defer d.mu.RUnlock()
	_, b, err := d.lookupLocked(service, backend)
	if err != nil {
		return err
	}
	if err := d.sets.flush(b.set); err != nil {
		return fmt.Errorf("ipset %q: flush: %w", b.set, err)
	}
	return nil
}

// Count returns the number of pins in each backend's set of service, by
// backend name, from the set headers' element counts (one round trip per
// backend, whatever the sets' sizes). A backend without a set counts 0.
// The kernel's count leaves out pins that timed out but were not yet
// collected (Linux 6.x does; TestNSCountSkipsTimedOut checks it). Where
// set headers lack the count, the sets are listed and counted.
func (d *Dataplane) Count(ctx context.Context, service string) (map[string]int, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	d.mu.RLock()
	defer d.mu.RUnlock()
	s, _, err := d.lookupLocked(service, "")
	if err != nil {
		return nil, err
	}
	out := make(map[string]int, len(s.backends))
	for _, b := range s.backends {
		n, err := d.sets.count(b.set)
		if errors.Is(err, errNoSet) {
			n, err = 0, nil
		}
		if err != nil {
			return nil, fmt.Errorf("ipset %q: count: %w", b.set, err)
		}
		out[b.name] = n
	}
	return out, nil
}
