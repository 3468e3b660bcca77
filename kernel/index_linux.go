package kernel

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
)

// slotTable numbers the backends of each service in its marks: service →
// backend → slot. The index entries carry these numbers, so they must
// outlive the process: the first Sync learns them from the dispatch rules
// a previous run left (see learnSlots), and new backends take the lowest
// free number. A number freed by a removed backend may go to a new one at
// once: index entries still carrying it fail the new backend's pin set
// match and fall through to the listener.
type slotTable map[string]map[string]uint32

// assign gives every backend of svcs its slot, keeping known ones, and
// returns the backends whose slot is new. It forgets services and
// backends svcs no longer has.
func (t slotTable) assign(svcs []*service, l markLayout) (fresh []ref, err error) {
	next := make(slotTable, len(svcs))
	for _, s := range svcs {
		if n := uint32(len(s.backends)); n > l.maxSlot() {
			return nil, fmt.Errorf("service %q: %d backends, but the mark mask %#x numbers at most %d", s.name, n, l.mask, l.maxSlot())
		}
		known := t[s.name]
		used := map[uint32]bool{}
		m := make(map[string]uint32, len(s.backends))
		for i := range s.backends {
			b := &s.backends[i]
			if n, ok := known[b.name]; ok && n >= 1 && n <= l.maxSlot() && !used[n] {
				b.slot, used[n], m[b.name] = n, true, n
			}
		}
		free := uint32(1)
		for i := range s.backends {
			b := &s.backends[i]
			if b.slot != 0 {
				continue
			}
			for used[free] {
				free++
			}
			b.slot, used[free], m[b.name] = free, true, free
			fresh = append(fresh, ref{s, b})
		}
		next[s.name] = m
	}
	clear(t)
	for k, v := range next {
		t[k] = v
	}
	return fresh, nil
}

// ref is one backend of one service.
type ref struct {
	s *service
	b *backend
}

// learnSlots reads the slots of the dispatch rules in the nat tables of
// fams: each backend's DNAT rule matches its full slot under the layout's
// mask. Rules of another layout (the mask changed, or the per-backend
// chains of handoff before the index) teach nothing: their backends get
// new slots and their pins are indexed again.
func (d *Dataplane) learnSlots(ctx context.Context, fams []family) (slotTable, error) {
	t := slotTable{}
	for _, fam := range fams {
		read, err := d.readTables(ctx, fam, true)
		if err != nil {
			return nil, err
		}
		for name, rules := range read[natTable].chains {
			if !prefixed(name) {
				continue
			}
			for _, r := range rules {
				svc, be, what := ruleTag(r)
				if what != "dnat" {
					continue
				}
				args := splitArgs(r)
				i := slices.Index(args, "--mark")
				if i < 0 || i+1 >= len(args) {
					continue
				}
				if n := d.layout.slotOf(args[i+1]); n != 0 {
					if t[svc] == nil {
						t[svc] = map[string]uint32{}
					}
					t[svc][be] = n
				}
			}
		}
	}
	return t, nil
}

// ruleTag splits the comment "handoff <svc>/<backend> <what>" of a rule.
func ruleTag(rule string) (svc, be, what string) {
	args := splitArgs(rule)
	i := slices.Index(args, "--comment")
	if i < 0 || i+1 >= len(args) {
		return "", "", ""
	}
	f := strings.Fields(args[i+1])
	if len(f) != 3 || f[0] != commentPrefix {
		return "", "", ""
	}
	svc, be, ok := strings.Cut(f[1], "/")
	if !ok {
		return "", "", ""
	}
	return svc, be, f[2]
}

// fillIndex points the index entries of the pins of each backend of bes
// at its slot. It runs when a backend's slot is new (an upgrade from the
// layout before the index, or rules lost with the daemon down) and when an
// index set was made afresh. Clients pinned meanwhile keep the entry
// their pin wrote.
func (d *Dataplane) fillIndex(ctx context.Context, bes []ref) error {
	if len(bes) == 0 {
		return nil
	}
	start := time.Now()
	byIndex := map[string][]ref{}
	for _, r := range bes {
		byIndex[r.s.index] = append(byIndex[r.s.index], r)
	}
	n := 0
	for index, rs := range byIndex {
		t := d.track(index)
		err := func() error {
			defer d.untrack(index)
			es := make([]setAdd, 0, pinChunk)
			errs := make([]error, pinChunk)
			flush := func() error {
				es = slices.DeleteFunc(es, func(e setAdd) bool { return t.has(e.ip) })
				if len(es) == 0 {
					return ctx.Err()
				}
				d.sets.addBatch(es, true, errs[:len(es)])
				for i, err := range errs[:len(es)] {
					if err != nil {
						return fmt.Errorf("ipset %q: add %s: %w", index, es[i].ip, err)
					}
				}
				n += len(es)
				es = es[:0]
				return ctx.Err()
			}
			for _, r := range rs {
				var ferr error
				err := d.sets.list(r.b.set, func(m member) error {
					es = append(es, setAdd{set: index, ip: m.ip, cidr: r.s.cidr, mark: d.layout.mark(r.b.slot)})
					if len(es) == cap(es) {
						ferr = flush()
					}
					return ferr
				})
				if ferr != nil {
					return ferr
				}
				if err != nil && !errors.Is(err, errNoSet) {
					return fmt.Errorf("ipset %q: list: %w", r.b.set, err)
				}
			}
			return flush()
		}()
		if err != nil {
			return err
		}
	}
	d.log.WithFields(logrus.Fields{"backends": len(bes), "pins": n, "took": time.Since(start).Round(time.Millisecond)}).
		Info("indexed the pins of backends new to the dispatch index")
	return nil
}

// touched is the set of clients pinned while an index is being filled or
// collected.
type touched struct {
	mu  sync.Mutex
	ips map[netip.Addr]bool
}

func (t *touched) add(ip netip.Addr) {
	t.mu.Lock()
	t.ips[ip] = true
	t.mu.Unlock()
}

func (t *touched) has(ip netip.Addr) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.ips[ip]
}

// track starts noting the clients pinned into index.
func (d *Dataplane) track(index string) *touched {
	t := &touched{ips: map[netip.Addr]bool{}}
	d.mu.Lock()
	d.touched[index] = t
	d.mu.Unlock()
	return t
}

func (d *Dataplane) untrack(index string) {
	d.mu.Lock()
	delete(d.touched, index)
	d.mu.Unlock()
}

// Index collection. The kernel expires a pin in its set but not the
// client's index entry (index entries have no timeout, as the in-kernel
// refresh of a pin, SET --add-set --exist, would reset an entry's mark),
// so entries of pins that expired, or were unpinned or flushed, stay
// until collected. A stale entry is harmless, its backend's leaf rules
// miss and the connection reaches the listener, but it takes room;
// collectIndexes removes them once they are more than a few.
const (
	gcMinStale  = 4096 // stale entries tolerated whatever the pin count
	gcStaleFrac = 8    // and one per gcStaleFrac pins
)

// collectIndexes collects the index of every service whose index holds
// more than gcMinStale and 1/gcStaleFrac of its pins in stale entries,
// and indexes again the pins of a service whose index lost its entries.
func (d *Dataplane) collectIndexes(ctx context.Context) {
	d.mu.RLock()
	svcs := make([]*service, 0, len(d.svcs))
	for _, s := range d.svcs {
		svcs = append(svcs, s)
	}
	d.mu.RUnlock()
	hs, err := d.sets.headers() // one listing counts every set
	if err != nil {
		return
	}
	count := make(map[string]int, len(hs))
	for _, h := range hs {
		count[h.name] = h.entries
	}
	for _, s := range svcs {
		if ctx.Err() != nil {
			return
		}
		entries := count[s.index]
		pins := 0
		for _, b := range s.backends {
			pins += max(count[b.set], 0)
		}
		if entries >= 0 && entries*4 < pins {
			// Far fewer entries than pins: the index was flushed behind
			// handoff's back (a migration holds a client in two sets
			// for a while, but never a service's pins twice over).
			d.log.WithFields(logrus.Fields{"set": s.index, "entries": entries, "pins": pins}).
				Warn("the index set lost its entries; indexing the pins again")
			d.repairs.Add(1)
			bes := make([]ref, len(s.backends))
			for i := range s.backends {
				bes[i] = ref{s, &s.backends[i]}
			}
			if err := d.fillIndex(ctx, bes); err != nil {
				d.log.WithError(err).WithField("set", s.index).Warn("indexing the pins again failed; retried at the next check")
			}
			continue
		}
		if entries-pins <= max(gcMinStale, pins/gcStaleFrac) {
			continue
		}
		start := time.Now()
		n, err := d.gcIndex(ctx, s)
		l := d.log.WithFields(logrus.Fields{"set": s.index, "removed": n, "pins": pins, "took": time.Since(start).Round(time.Millisecond)})
		if err != nil {
			l.WithError(err).Warn("collecting stale index entries failed; retried at the next check")
			continue
		}
		l.Info("collected the index entries of expired pins")
	}
}

// indexEntry is one entry of an index as gcIndex lists it.
type indexEntry struct {
	ip   netip.Addr
	slot uint32
	live bool // its backend's set holds the client
}

// gcIndex removes the entries of s's index whose backend's set does not
// hold the client, and returns how many it removed. Entries written while
// it runs are left alone.
func (d *Dataplane) gcIndex(ctx context.Context, s *service) (int, error) {
	t := d.track(s.index)
	defer d.untrack(s.index)
	var es []indexEntry
	err := d.sets.list(s.index, func(m member) error {
		es = append(es, indexEntry{ip: m.ip, slot: (m.mark.value & d.layout.mask) >> d.layout.shift})
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("ipset %q: list: %w", s.index, err)
	}
	slices.SortFunc(es, func(a, b indexEntry) int { return a.ip.Compare(b.ip) })
	for _, b := range s.backends {
		err := d.sets.list(b.set, func(m member) error {
			i, ok := slices.BinarySearchFunc(es, m.ip, func(e indexEntry, ip netip.Addr) int { return e.ip.Compare(ip) })
			if ok && es[i].slot == b.slot {
				es[i].live = true
			}
			return ctx.Err()
		})
		if err != nil && !errors.Is(err, errNoSet) {
			return 0, fmt.Errorf("ipset %q: list: %w", b.set, err)
		}
	}
	n := 0
	for _, e := range es {
		if e.live || t.has(e.ip) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return n, err
		}
		if err := d.sets.del(s.index, e.ip, s.cidr); err != nil {
			return n, fmt.Errorf("ipset %q: del %s: %w", s.index, e.ip, err)
		}
		n++
	}
	return n, nil
}
