package fallback

import "fmt"

// CheckCounts verifies that every backend's pin count matches the entries
// pointing at it.
func CheckCounts(d *Dataplane) error {
	counts := map[*backend]int64{}
	for i := range d.shards {
		sh := &d.shards[i]
		sh.mu.RLock()
		for _, e := range sh.pins {
			counts[e.backend]++
		}
		sh.mu.RUnlock()
	}
	for _, svc := range d.cfg.Load().services {
		for _, b := range svc.backends {
			if got := b.pins.Load(); got != counts[b] {
				return fmt.Errorf("service %q backend %q: count %d, entries %d", svc.name, b.name, got, counts[b])
			}
		}
	}
	return nil
}

// Save saves the table now.
func Save(d *Dataplane) error { return d.save() }
