package kernel

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/handoff-lb/handoff/dataplane"
)

// Sync makes the kernel match st, in this order: (1) create missing sets,
// and rebuild sets whose timeout or maxelem changed without losing a pin;
// (2) rewrite, in one iptables-restore per table and family, only the
// chains whose content changed or went missing, deleting chains of removed
// services once nothing jumps to them; (3) insert missing jumps from the
// built-in chains; (4) destroy the sets of handoff's st no longer declares.
//
// A no-op Sync writes nothing, so rule counters survive. The first Sync of
// a new Dataplane adopts existing sets and their members. When Sync fails,
// the canary retries st until it succeeds or another Sync replaces it.
//
// Sets are checked against the kernel's headers on every Sync. Tables are
// read back (iptables-save, slow with many sets) by the first Sync, by
// one after a failure and by every canary check; other Syncs trust a
// table to hold what they last wrote there, so rules changed outside
// handoff are repaired by the next canary check rather than by Sync.
func (d *Dataplane) Sync(ctx context.Context, st dataplane.State) error {
	svcs, err := compile(st)
	if err != nil {
		return fmt.Errorf("kernel: sync: %w", err)
	}
	d.syncMu.Lock()
	defer d.syncMu.Unlock()
	d.transparent = st.Transparent
	start := time.Now()
	_, err = d.syncLocked(ctx, svcs, false)
	d.syncs.Record(time.Since(start), err)
	d.counts.reset() // rules may have come or gone
	return err
}

// syncLocked applies svcs and returns what it had to repair or change in
// the tables. With verify set it reads every table back; else it trusts
// the tables it wrote last to hold what it wrote (see syncRules). The
// caller holds d.syncMu.
func (d *Dataplane) syncLocked(ctx context.Context, svcs []*service, verify bool) (changes []string, err error) {
	d.mu.RLock()
	closed := d.closed
	d.mu.RUnlock()
	if closed {
		return nil, errClosed
	}
	d.last, d.dirty = svcs, true
	d.pass = [2]map[table]saved{} // read afresh
	defer func() {
		d.pass = [2]map[table]saved{}
		if err == nil {
			d.dirty, d.errMsg = false, ""
		}
	}()

	existing, err := d.prefetch(ctx, svcs, verify)
	if err != nil {
		return nil, err
	}

	// Slots: learnt from the dispatch rules by the first Sync, so that the
	// index entries a previous run made still mean the same backends.
	fams := d.families(ctx, svcs)
	if d.slots == nil {
		t, err := d.learnSlots(ctx, fams)
		if err != nil {
			return nil, err
		}
		d.slots = t
	}
	// Under d.mu: assign writes the backends' slots, and the canary's sync
	// passes d.last, the services Pin and Count read meanwhile.
	d.mu.Lock()
	fill, err := d.slots.assign(svcs, d.layout)
	d.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("kernel: %w", err)
	}

	// (1) Sets, before any rule refers to them. One listing of the
	// headers says which sets exist as wanted; only the others are
	// created or rebuilt.
	have := make(map[string]setHeader, len(existing))
	for _, h := range existing {
		have[h.name] = h
	}
	wanted := map[string]bool{}
	var rebuild []func() error
	for _, s := range svcs {
		for _, b := range s.backends {
			wanted[b.set] = true
			h, ok := have[b.set]
			if ok && h.is(s.spec()) {
				continue
			}
			changes = append(changes, setChange(b.set, ok))
			if err := d.sets.create(b.set, s.spec()); err == nil {
				continue
			} else if !errors.Is(err, errSetDiffers) {
				return changes, fmt.Errorf("ipset %q: create: %w", b.set, err)
			}
			rebuild = append(rebuild, func() error { return d.rebuildSet(ctx, b.set, s.spec(), s.cidr) })
		}
	}
	if err := rebuildAll(rebuild); err != nil {
		return changes, err
	}
	for _, s := range svcs {
		wanted[s.index] = true
		h, ok := have[s.index]
		if ok && h.is(s.indexSpec()) {
			continue
		}
		changes = append(changes, setChange(s.index, ok))
		if err := d.ensureEmpty(s.index, s.indexSpec(), have); err != nil {
			return changes, err
		}
		fill = slices.DeleteFunc(fill, func(r ref) bool { return r.s == s })
		for i := range s.backends {
			fill = append(fill, ref{s, &s.backends[i]})
		}
	}
	for _, s := range svcs {
		wanted[s.count] = true
		c, err := d.syncCount(s, have)
		changes = append(changes, c...)
		if err != nil {
			return changes, err
		}
	}
	byName := make(map[string]*service, len(svcs))
	for _, s := range svcs {
		byName[s.name] = s
	}
	d.mu.Lock()
	d.svcs = byName
	d.mu.Unlock()

	// The pins of backends new to their index, before any rule sends a
	// new connection by the index.
	if err := d.fillIndex(ctx, fill); err != nil {
		for _, r := range fill {
			delete(d.slots[r.s.name], r.b.name) // filled again next time
		}
		return nil, err
	}

	// The sets the registry lists before the rules rewrite it: those of
	// removed services and backends are destroyed below.
	registered, err := d.registeredSets(ctx)
	if err != nil {
		return changes, err
	}

	// (2) and (3) Rules and jumps, family by family.
	for _, fam := range fams {
		c, err := d.syncRules(ctx, fam, svcs, verify)
		changes = append(changes, c...)
		if err != nil {
			return changes, err
		}
	}
	c, err := d.syncRouting(fams, d.transparent)
	changes = append(changes, c...)
	if err != nil {
		return changes, err
	}

	// (4) Sets of handoff's that nobody refers to any more. Sets that
	// merely share handoff's prefixes are left alone.
	for _, h := range existing {
		name := h.name
		if !isHandoffSet(name) || wanted[name] || isProbeSet(name) {
			continue
		}
		if !registered[name] && !isTempSet(name) {
			d.warnForeign("set", name)
			continue
		}
		if err := d.sets.destroy(name); err != nil {
			// Perhaps a foreign rule uses it; say so once, retry quietly.
			l := d.log.WithFields(logrus.Fields{"set": name, "err": err})
			if !d.staleWarned[name] {
				l.Warn("cannot destroy the ipset of a removed backend; will retry")
			} else {
				l.Debug("cannot destroy the ipset of a removed backend")
			}
			if d.staleWarned == nil {
				d.staleWarned = map[string]bool{}
			}
			d.staleWarned[name] = true
			continue
		}
		delete(d.staleWarned, name)
		d.log.WithField("set", name).Info("destroyed the ipset of a removed backend")
	}
	return changes, nil
}

// prefetch reads at once what a pass of syncLocked reads: the set headers
// and the tables of each family it needs to read, into d.pass. Each read
// waits on the kernel or a tool, so they overlap: the kernel walks every
// member of a set with comments to size it for the header listing (75 ms
// for a million pins, measured), and each run of iptables-save takes
// milliseconds to start.
func (d *Dataplane) prefetch(ctx context.Context, svcs []*service, verify bool) ([]setHeader, error) {
	d.wantV6(svcs)
	unknown := func(fam family) bool {
		return verify || d.slots == nil || slices.ContainsFunc(tables, func(t table) bool { return d.cache[fam][t] == nil })
	}
	need := [2]bool{unknown(ipv4), d.v6 && unknown(ipv6) || !d.v6 && !d.v6seen}
	var (
		wg   sync.WaitGroup
		hs   []setHeader
		herr error
		read [2]map[table]saved
		rerr [2]error
	)
	wg.Go(func() { hs, herr = d.sets.headers() })
	for _, fam := range []family{ipv4, ipv6} {
		if need[fam] {
			wg.Go(func() { read[fam], rerr[fam] = d.readTables(ctx, fam, false) })
		}
	}
	wg.Wait()
	for _, fam := range []family{ipv4, ipv6} {
		switch {
		case !need[fam]:
		case rerr[fam] == nil:
			d.pass[fam] = read[fam]
		case fam == ipv4 || d.v6:
			return nil, rerr[fam]
		}
		// An unmanaged IPv6 only looked for leftovers: without
		// ip6tables there are none.
	}
	if herr != nil {
		return nil, fmt.Errorf("kernel: listing ipsets: %w", herr)
	}
	return hs, nil
}

// registeredSets returns the sets the registry (the IPv4 nat canary)
// lists, as handoff last wrote it or, unknown, as the kernel has it.
func (d *Dataplane) registeredSets(ctx context.Context) (map[string]bool, error) {
	if c := d.cache[ipv4][natTable]; c != nil {
		return cachedTable(natTable, c, nil).registered(ownsSet), nil
	}
	read, err := d.readTables(ctx, ipv4, true)
	if err != nil {
		return nil, err
	}
	return read[natTable].registered(ownsSet), nil
}

// warnForeign says once that an object shares handoff's prefix without
// being handoff's, and is left alone.
func (d *Dataplane) warnForeign(kind, name string) {
	key := kind + " " + name
	if d.foreignWarned[key] {
		return
	}
	if d.foreignWarned == nil {
		d.foreignWarned = map[string]bool{}
	}
	d.foreignWarned[key] = true
	d.log.WithField(kind, name).Warn("a " + kind + " named like handoff's is not in handoff's registry: left alone (handoff cleanup --prefixed removes it)")
}

// setChange describes a set made or remade by a Sync.
func setChange(name string, existed bool) string {
	if existed {
		return "ipset " + name + ": other parameters"
	}
	return "ipset " + name + " missing"
}

// ensureEmpty creates set name (an index or counting set), or empties it
// into spec when a set of its name exists with another one (a rule may
// use it, so it is swapped with a fresh set rather than destroyed). Either
// way the caller fills it.
func (d *Dataplane) ensureEmpty(name string, spec setSpec, have map[string]setHeader) error {
	if _, ok := have[name]; !ok {
		if err := d.sets.create(name, spec); err != nil {
			return fmt.Errorf("ipset %q: create: %w", name, err)
		}
		return nil
	}
	d.log.WithField("set", name).Warn("the set exists with other parameters; making it afresh (it is filled again)")
	tmp := tempSetName(name)
	if err := d.sets.destroy(tmp); err != nil {
		return fmt.Errorf("ipset %q: destroy leftover %q: %w", name, tmp, err)
	}
	if err := d.sets.create(tmp, spec); err != nil {
		return fmt.Errorf("ipset %q: create %q: %w", name, tmp, err)
	}
	if err := d.sets.swap(name, tmp); err != nil {
		_ = d.sets.destroy(tmp)
		return fmt.Errorf("ipset %q: swap with %q: %w", name, tmp, err)
	}
	if err := d.sets.destroy(tmp); err != nil {
		d.log.WithFields(logrus.Fields{"set": tmp, "err": err}).Warn("cannot destroy the old copy of a set made afresh")
	}
	return nil
}

// syncCount makes the counting set of s exist and hold exactly the
// addresses of its backends, and returns what it changed. Entries that
// stay keep their counters: a backend whose address is unchanged keeps
// its traffic across reloads; one whose address changed gets a new entry,
// counting from zero. It lists the set every time (an entry a backend,
// one dump), so a set flushed, edited or destroyed behind handoff's back
// is refilled by the next Sync or canary check.
func (d *Dataplane) syncCount(s *service, have map[string]setHeader) (changes []string, err error) {
	h, ok := have[s.count]
	if !ok || !h.is(s.countSpec()) {
		changes = append(changes, setChange(s.count, ok))
		if err := d.ensureEmpty(s.count, s.countSpec(), have); err != nil {
			return changes, err
		}
	}
	want := s.countEntries()
	var extra []netip.AddrPort
	err = d.sets.list(s.count, func(m member) error {
		ap := netip.AddrPortFrom(m.ip.Unmap(), m.port)
		if want[ap] {
			delete(want, ap)
		} else {
			extra = append(extra, ap)
		}
		return nil
	})
	if err != nil {
		return changes, fmt.Errorf("ipset %q: list: %w", s.count, err)
	}
	for _, ap := range extra {
		if err := d.sets.delPort(s.count, ap); err != nil {
			return changes, fmt.Errorf("ipset %q: del %s: %w", s.count, ap, err)
		}
	}
	for _, ap := range slices.SortedFunc(maps.Keys(want), netip.AddrPort.Compare) {
		if err := d.sets.addPort(s.count, ap); err != nil {
			return changes, fmt.Errorf("ipset %q: add %s: %w", s.count, ap, err)
		}
	}
	if n := len(extra) + len(want); n > 0 {
		changes = append(changes, fmt.Sprintf("ipset %s: %d entries added, %d removed", s.count, len(want), len(extra)))
	}
	return changes, nil
}

// rebuildAll runs the rebuilds one after the other and returns their
// errors joined. Each spends its time in the kernel (a reload that changes
// the client_ttl of a million pins rebuilds every pin set), where the adds
// of every set go through one mutex (nfnetlink's, for ipset), and each
// already overlaps its listing with its adds (rebuildSet). Two sets of
// 225,000 IPv6 pins, four alternating rounds: both at once 580-1010 ms,
// one after the other 600-690 ms, medians 670 ms either way; one at a
// time holds one set's chunks in memory, not two.
func rebuildAll(rebuild []func() error) error {
	var errs []error
	for _, fn := range rebuild {
		errs = append(errs, fn())
	}
	return errors.Join(errs...)
}

// rebuildSet gives set name a new spec without losing a pin: it fills a
// temporary set with the members (remaining timeouts and comments kept,
// timeouts cut to the new default), swaps the two and destroys the
// temporary one. Pins and unpins made meanwhile go to both sets.
func (d *Dataplane) rebuildSet(ctx context.Context, name string, spec setSpec, cidr uint8) error {
	if !spec.net {
		cidr = 0 // a network pin copied to a hash:ip set keeps its address
	}
	start := time.Now()
	tmp := tempSetName(name)
	if err := d.sets.destroy(tmp); err != nil {
		return fmt.Errorf("ipset %q: destroy leftover %q: %w", name, tmp, err)
	}
	if err := d.sets.create(tmp, spec); err != nil {
		return fmt.Errorf("ipset %q: create %q for rebuild: %w", name, tmp, err)
	}
	d.setShadow(name, tmp)
	done := false
	defer func() {
		if !done {
			d.setShadow(name, "")
			_ = d.sets.destroy(tmp)
		}
	}()

	// Copy the members as they are listed, a chunk at a time: the
	// listing runs on a goroutine of its own, a chunk or two ahead of the
	// adds, so that the kernel's dump and its adds overlap.
	copied, dropped := 0, 0
	errs := make([]error, pinChunk)
	copyChunk := func(es []setAdd) error {
		// Not replace: a pin made during the copy is newer than the list.
		d.sets.addBatch(es, false, errs[:len(es)])
		for i, err := range errs[:len(es)] {
			switch {
			case err == nil:
				copied++
			case errors.Is(err, errExists):
			case errors.Is(err, dataplane.ErrFull):
				dropped++
			default:
				return fmt.Errorf("ipset %q: copy %s to %q: %w", name, es[i].ip, tmp, err)
			}
		}
		return ctx.Err()
	}
	listed, lerr := d.listChunks(name, func(m member) setAdd {
		t := m.timeout
		if spec.timeout == 0 {
			t = 0
		} else if t > spec.timeout {
			t = spec.timeout
		}
		return setAdd{set: tmp, ip: m.ip, cidr: cidr, timeout: t, comment: m.comment}
	})
	var cerr error // copyChunk's error, returned as is
	for c := range listed {
		if cerr == nil {
			cerr = copyChunk(c.es)
		}
		c.done(cerr != nil)
	}
	if cerr != nil {
		return cerr
	}
	if err := lerr(); err != nil {
		return fmt.Errorf("ipset %q: list for rebuild: %w", name, err)
	}

	// Swap and end the shadowing under the write lock, so no pin is in
	// flight and none goes to the old contents afterwards.
	var err error
	d.mu.Lock()
	for ip := range d.shadow[name].unpinned {
		if err = d.sets.del(tmp, ip, cidr); err != nil {
			break
		}
	}
	if err == nil {
		err = d.sets.swap(name, tmp)
	}
	if err == nil {
		delete(d.shadow, name)
		done = true
	}
	d.mu.Unlock()
	if err != nil {
		return fmt.Errorf("ipset %q: swap with %q: %w", name, tmp, err)
	}
	if err := d.sets.destroy(tmp); err != nil {
		d.log.WithFields(logrus.Fields{"set": tmp, "err": err}).Warn("cannot destroy the old copy of a rebuilt ipset")
	}
	f := logrus.Fields{"set": name, "members": copied, "timeout": spec.timeout, "maxelem": spec.maxelem, "took": time.Since(start).Round(time.Millisecond)}
	if dropped > 0 {
		f["dropped"] = dropped
		d.log.WithFields(f).Warn("rebuilt ipset; the new maxelem dropped some pins")
	} else {
		d.log.WithFields(f).Info("rebuilt ipset with new parameters")
	}
	return nil
}

// listedChunk is a chunk of a set's members, converted, that
// listChunks hands over; done gives the buffer back (stop: list no
// further).
type listedChunk struct {
	es   []setAdd
	done func(stop bool)
}

// listChunks lists set name on a goroutine of its own and yields its
// members, converted by conv, a chunk (pinChunk) at a time; at most two
// chunks are ahead of the one the caller holds. The caller must range
// over the channel to its end, calling each chunk's done; after that,
// wait returns the listing's error.
func (d *Dataplane) listChunks(name string, conv func(member) setAdd) (<-chan listedChunk, func() error) {
	const buffers = 3
	free := make(chan []setAdd, buffers)
	for range buffers {
		free <- make([]setAdd, 0, pinChunk)
	}
	out := make(chan listedChunk, buffers-1)
	var stopped atomic.Bool
	done := func(es []setAdd) func(bool) {
		return func(stop bool) {
			if stop {
				stopped.Store(true)
			}
			free <- es[:0]
		}
	}
	var err error
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		defer close(out)
		es := <-free
		err = d.sets.list(name, func(m member) error {
			es = append(es, conv(m))
			if len(es) < cap(es) {
				return nil
			}
			out <- listedChunk{es, done(es)}
			es = <-free
			if stopped.Load() {
				return errStopped
			}
			return nil
		})
		if err == nil && len(es) > 0 {
			out <- listedChunk{es, done(es)}
		}
	}()
	return out, func() error {
		<-finished
		if errors.Is(err, errStopped) {
			return nil
		}
		return err
	}
}

// errStopped ends a listing whose consumer stopped.
var errStopped = errors.New("listing stopped")

// rebuild is a set being rebuilt: pins and unpins also go to tmp, and
// clients unpinned meanwhile are removed from tmp again just before the
// swap, in case the copy re-added them from its (older) listing.
type rebuild struct {
	tmp string

	mu       sync.Mutex
	unpinned map[netip.Addr]bool
}

// pinned notes that ip was pinned (again) during the rebuild.
func (r *rebuild) pinned(ip netip.Addr) {
	r.mu.Lock()
	delete(r.unpinned, ip)
	r.mu.Unlock()
}

// unpin notes that ip was unpinned during the rebuild.
func (r *rebuild) unpin(ip netip.Addr) {
	r.mu.Lock()
	r.unpinned[ip] = true
	r.mu.Unlock()
}

// setShadow makes pins to set also go to tmp ("" ends it).
func (d *Dataplane) setShadow(set, tmp string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if tmp == "" {
		delete(d.shadow, set)
		return
	}
	if d.shadow == nil {
		d.shadow = map[string]*rebuild{}
	}
	d.shadow[set] = &rebuild{tmp: tmp, unpinned: map[netip.Addr]bool{}}
}

// families returns the families whose tables handoff manages: IPv4
// always; IPv6 when asked for, when a service is IPv6, once it was managed,
// or when a previous run left chains there.
func (d *Dataplane) families(ctx context.Context, svcs []*service) []family {
	d.wantV6(svcs)
	if !d.v6 && !d.v6seen {
		d.v6seen = true
		if read, err := d.readTables(ctx, ipv6, true); err == nil {
			cur := read[natTable]
			own := cur.owner()
			for name := range cur.chains {
				if own.owns(name) && name != chainProbe {
					d.v6 = true
					break
				}
			}
		}
	}
	if d.v6 {
		return []family{ipv4, ipv6}
	}
	return []family{ipv4}
}

// wantV6 notes that ip6tables is to be managed when asked for or when a
// service is IPv6.
func (d *Dataplane) wantV6(svcs []*service) {
	if !d.v6 && (d.o.IPv6 || slices.ContainsFunc(svcs, func(s *service) bool { return s.fam == ipv6 })) {
		d.v6 = true
	}
}

// syncRules brings the tables of one family to the rendering of svcs and
// returns the changes it made.
//
// Every table's changes go to the kernel in one iptables-restore run, and
// the tables are read with one iptables-save run: each run of the tools
// costs milliseconds (a restart over a million pins spends most of its
// time starting them), whatever the size of its input.
//
// Reading the tables back is the costly part of a Sync besides: with
// 1,000 backends the nat table's rules name 3,000 sets, and iptables-save
// resolves each name with a few syscalls. So unless verify is set, tables
// whose last write succeeded are trusted to hold what was written, and are
// planned from the cache without reading them. Should the restore then
// fail (a table changed behind handoff's back), the tables are read and
// planned again. The canary verifies every table every CanaryInterval.
func (d *Dataplane) syncRules(ctx context.Context, fam family, svcs []*service, verify bool) ([]string, error) {
	changes, err := d.syncTables(ctx, fam, svcs, verify)
	if err != nil && !verify && errors.Is(err, errTrusted) && ctx.Err() == nil {
		d.log.WithFields(logrus.Fields{"family": fam.String(), "err": err}).
			Debug("applying rules to the tables as last written failed; reading them")
		return d.syncTables(ctx, fam, svcs, true)
	}
	return changes, err
}

// errTrusted marks the failure of a restore planned from the cache.
var errTrusted = errors.New("planned from the tables as last written")

// syncTables plans the tables of fam from the cache or, with verify set or
// a table unknown, from the tables as iptables-save shows them; writes
// what differs in one restore; and reads the tables back, so that the
// cache holds the kernel's form of every chain and jump for the canary to
// compare with.
func (d *Dataplane) syncTables(ctx context.Context, fam family, svcs []*service, verify bool) ([]string, error) {
	want := render(fam, svcs, d.layout, d.o.queue())
	jumps := baseJumps(d.layout)
	trusted := !verify && !slices.ContainsFunc(tables, func(t table) bool { return d.cache[fam][t] == nil })
	var read map[table]saved
	if !trusted {
		var err error
		if read, err = d.readTables(ctx, fam, true); err != nil {
			return nil, err
		}
	}
	var (
		input   bytes.Buffer
		written []table
		starts  []int // the first input line of each written table
		lines   int
		changes []string
	)
	for _, t := range tables {
		cache := d.cache[fam][t]
		cur := read[t]
		if trusted {
			cur = cachedTable(t, cache, jumps)
		}
		p := planTable(t, want[t], cache, cur, jumps, func(c string) bool { return c == chainProbe })
		for _, name := range p.foreign {
			d.warnForeign("chain", fam.String()+" "+string(t)+" "+name)
		}
		if p.empty() {
			if cache == nil {
				// Nothing to write, nothing known: what is there is right.
				cache = &tableCache{}
				cache.readBack(t, want[t], cur, jumps)
				d.cache[fam][t] = cache
			}
			continue
		}
		text := p.text()
		written, starts = append(written, t), append(starts, lines+1)
		lines += bytes.Count(text, []byte("\n"))
		input.Write(text)
		for _, r := range p.reasons {
			changes = append(changes, fmt.Sprintf("%s %s: %s", fam, t, r))
		}
		for _, r := range p.remove {
			changes = append(changes, fmt.Sprintf("%s %s: %s removed", fam, t, r))
		}
	}
	d.pass[fam] = nil // what was read no longer holds
	if len(written) == 0 {
		return nil, nil
	}
	data := input.Bytes()
	if err := d.ipt[fam].restore(ctx, data); err != nil {
		// The tool commits table by table: those before the failing
		// line may have been written, and their cache no longer says
		// what the kernel holds; the failing table's was not, nor any
		// after it. Without a line, anything may have been written.
		var re *restoreError
		failed := -1
		if errors.As(err, &re) && re.line > 0 {
			for i, st := range starts {
				if re.line >= st {
					failed = i
				}
			}
		}
		for i, t := range written {
			if failed < 0 || i < failed {
				d.cache[fam][t] = nil
			}
		}
		where := fam.String() + " tables"
		if failed >= 0 {
			where = fmt.Sprintf("%s %s table", fam, written[failed])
		}
		werr := fmt.Errorf("kernel: %s: %w", where, err)
		if trusted {
			return nil, fmt.Errorf("%w (%w)", werr, errTrusted)
		}
		f := logrus.Fields{"family": fam.String(), "err": err}
		if re != nil && re.line > 0 {
			f["input"] = "\n" + linesAround(data, re.line, 2)
		}
		if msg := werr.Error(); msg != d.errMsg {
			d.errMsg = msg // log the restore input once per distinct failure
			d.log.WithFields(f).Error("applying rules failed")
		}
		return nil, werr
	}
	d.log.WithFields(logrus.Fields{"family": fam.String(), "changes": strings.Join(changes, "; ")}).Debug("applied rules")
	back, err := d.readTables(ctx, fam, false)
	d.pass[fam] = nil
	if err != nil {
		for _, t := range written {
			d.cache[fam][t] = nil // written, but not known: read next time
		}
		return nil, fmt.Errorf("%w (reading back)", err)
	}
	for _, t := range written {
		cache := &tableCache{}
		cache.readBack(t, want[t], back[t], jumps)
		d.cache[fam][t] = cache
	}
	return changes, nil
}

// readTables returns every table of fam as one iptables-save run shows
// it. With keep set it reuses and records the run in d.pass, which holds
// for one pass of syncLocked until rules are written: the slots, the
// registry and the plans all read the same run.
func (d *Dataplane) readTables(ctx context.Context, fam family, keep bool) (map[table]saved, error) {
	if r := d.pass[fam]; keep && r != nil {
		return r, nil
	}
	out, err := d.ipt[fam].save(ctx, allTables, false)
	if err != nil {
		return nil, fmt.Errorf("kernel: %s tables: %w", fam, err)
	}
	r := parseTables(out)
	if keep {
		d.pass[fam] = r
	}
	return r, nil
}

// cachedTable is table t as handoff last wrote it: its chains and the
// jumps into them from the built-in chains, as the kernel showed them.
func cachedTable(t table, cache *tableCache, jumps []baseJump) saved {
	s := saved{exists: true, chains: make(map[string][]string, len(cache.kernel))}
	for name, rules := range cache.kernel {
		s.chains[name] = rules
	}
	for _, j := range jumps {
		if j.table != t {
			continue
		}
		if r, ok := cache.jumps[j.key()]; ok {
			s.chains[j.builtin] = append(s.chains[j.builtin], r)
		}
	}
	return s
}

// canaryLoop re-applies the last State every interval when the kernel
// drifted from it (chains flushed or deleted, the canary chain gone, jumps
// removed) or when the last attempt failed.
func (d *Dataplane) canaryLoop(ctx context.Context, every time.Duration) {
	defer close(d.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			d.checkCanary(ctx)
			d.collectIndexes(ctx)
		}
	}
}

// checkCanary runs one canary check.
func (d *Dataplane) checkCanary(ctx context.Context) {
	d.syncMu.Lock()
	defer d.syncMu.Unlock()
	if d.last == nil {
		return
	}
	wasDirty := d.dirty
	start := time.Now()
	changes, err := d.syncLocked(ctx, d.last, true)
	d.syncs.Record(time.Since(start), err)
	if err != nil {
		if ctx.Err() == nil && err.Error() != d.errMsg {
			d.errMsg = err.Error()
			d.log.WithField("err", err).Error("re-applying the last state failed; will retry")
		}
		return
	}
	d.repairs.Add(uint64(len(changes)))
	d.syncs.Repaired(len(changes))
	switch {
	case len(changes) > 0:
		d.log.WithFields(logrus.Fields{"changes": strings.Join(changes, "; ")}).
			Warn("handoff's iptables rules were changed outside handoff; re-applied them")
	case wasDirty:
		d.log.Info("applied the last state after earlier failures")
	}
}
